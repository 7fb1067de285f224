"""Full vs LoRA probe updates on the demo family, candidate by candidate, with noise bands.

    python bench/probe_update_demo.py [--seeds 0 1] [--lora-rank 16] [--lora-lr 5e-4 2e-3]

For the demo members (instruct, reasoning) and the balanced merge (alpha 0.5, beta 0.75),
the demo spec's probe runs with `update: full` (its learning rate) and `update: lora`
(each --lora-lr), same seeds, same prompts, fp32. Prints one row per (point, update,
learning rate): each stability metric as mean over seeds, with the mean noise band
(90% bootstrap half-width over prompts) beside it, and the probe's wall seconds. The
decision it informs (which update is the default at which size) is in docs/probe.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("length_retention", "length_growth", "reward_dip", "entropy_drop", "kl_final")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, nargs="+", default=[5e-4, 2e-3])
    args = parser.parse_args()

    import torch

    from sweep.demo.build import active_family
    from sweep.run.demo_stability import NAMED_POINTS, demo_probe_settings, probe_runs

    torch.set_num_threads(1)
    family = active_family()
    print(f"family {family.manifest()['key']} at {family.root}", flush=True)
    base = demo_probe_settings()
    variants = [("full", base["learning_rate"], {})]
    variants += [("lora", lr, {"update": "lora", "lora_rank": args.lora_rank}) for lr in args.lora_lr]
    header = ["point", "update", "lr", "wall s"] + [f"{m} (± band)" for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    raw = []
    for name, (alpha, beta) in NAMED_POINTS.items():
        for update, lr, changes in variants:
            start = time.monotonic()
            runs = probe_runs(
                family,
                points=[(alpha, beta)],
                seeds=args.seeds,
                settings=base | changes | {"learning_rate": lr},
                null=False,
            )
            wall = (time.monotonic() - start) / len(runs)
            cells = [f"{name} ({alpha:g}, {beta:g})", update, f"{lr:g}", f"{wall:.0f}"]
            for m in METRICS:
                values = [r.metrics[f"probe/{m}"] for r in runs if r.metrics.get(f"probe/{m}") is not None]
                bands = [r.metrics[f"probe/{m}_noise"] for r in runs if r.metrics.get(f"probe/{m}_noise") is not None]
                text = f"{mean(values):.3f}" if values else "n/a"
                if bands:
                    text += f" ± {mean(bands):.3f}"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
            raw += [{"point": name, "update": update, "lr": lr, "seed": r.seed, "metrics": r.metrics} for r in runs]
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print(json.dumps(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
