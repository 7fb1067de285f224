"""An experiment: the long RL run with its KL term against another member than the candidate.

    python bench/probe_reference.py run --out DIR [--reference instruct] [--points 0,1 0.25,0.5]
        [--null-points] [--seeds 0] [--long-steps 64] [--set kl_coef=0.2 ...]
    python bench/probe_reference.py curves DIR [--every 8]

Why: under gradient flow the expected reward cannot end below its start when the KL
term's reference is the starting model (docs/probe.md, "Why no hockey stick"): KL is 0
there. Some RLHF pipelines keep the reference they were built with, the SFT (instruct)
model, whatever the actor starts from. Then KL is not 0 at the start, the bound loosens
to E[reward](t) >= E[reward](0) - kl_coef x (KL(0) - KL(t)), and a reasoning-heavy
actor, far from the instruct reference, is pulled toward it first: its reward may fall
before the reward's own gradient wins, and fall less for a merge nearer the reference.

This runs bench/probe_validity.py's long runs with `evals.probe.reference` set to the
family member `--reference` names (the product setting; until it existed this script
swapped the built-in backend's reference by hand, and the two give bit-identical runs:
16 steps of (0.25, 0.5) at kl_coef 0.5, seed 0, curves and held-out scores equal).
`--set reference=DIR` on probe_validity.py does the same with any checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe_validity  # noqa: E402

MEMBERS = ("instruct", "reasoning", "pretrained")


def run(args) -> None:
    from sweep.demo.build import active_family

    reference = str(getattr(active_family(), args.reference))
    overrides = probe_validity._overrides(args.set) | {"reference": reference}
    points, nulls = probe_validity.parse_points(args.points), probe_validity.parse_points(args.null_points)
    out, jobs = probe_validity.pending(args.out, points, args.seeds, nulls)
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers, KL against {reference}", flush=True)
    probe_validity.spawn(
        jobs,
        args.workers,
        lambda i, share: (probe_validity._worker, (share, str(out), args.long_steps, 50, False, overrides)),
    )


def curves(args) -> None:
    for path in sorted(Path(args.dir).glob("a*-b*-s*.json")):
        record = json.loads(path.read_text())
        scores = [[x for p in step for x in p["scores"]] for step in record["samples"]]
        base = mean(x for p in record["baseline"] for x in p["scores"])

        def every(values: list[float]) -> str:
            return probe_validity.window_means(values, args.every)

        print(f"{path.stem}: start reward {base:.2f}")
        print(f"  reward {every([mean(s) for s in scores])}")
        print(f"  length {every(record['raw_length'])}")
        print(f"  kl     {every(record['kl'])}")
        print(f"  held-out after: {json.dumps(record.get('after', {}))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--reference", choices=MEMBERS, default="instruct")
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"])
    r.add_argument("--null-points", nargs="*", default=[])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--long-steps", type=int, default=64)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--set", nargs="*", default=[], help="KEY=VALUE probe settings over the demo spec's")
    c = sub.add_parser("curves")
    c.add_argument("dir")
    c.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    {"run": run, "curves": curves}[args.command](args)


if __name__ == "__main__":
    main()
