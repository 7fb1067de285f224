"""An experiment: is a long run's late decay the optimizer's, on batches with no reward signal?

    python bench/probe_flat_batches.py run [--points 0,1 0.25,0.5] [--seeds 0 1 2] [--long-steps 128] [--skip-flat] [--set KEY=VALUE ...] [--out DIR]
    python bench/probe_flat_batches.py steps DIR    # per 8 steps: groups with reward variance, gradient and update norms, reward

Why: a candidate whose reward starts near its ceiling gives GRPO groups that are all
right, whose advantages are all 0. A batch of such groups has a gradient that is the
KL term's alone, or one group's, yet Adam's step does not shrink with it: its moments
normalize the gradient, and they start at 0. This script runs bench/probe_validity.py's
worker (the demo spec's probe settings, the built-in backend) with every Adam step
logged: the gradient norm before clipping, the norm and the largest entry of the update
(DIR/updates-<run>.json, one row per update taken; the name keeps it out of
`probe_validity.py table`'s `a*-b*-s*.json`). Without `--skip-flat` it runs with
`skip_flat_batches: false` (every flat batch takes its Adam step, as the probe did before
the setting existed); with it, `skip_flat_batches: true`, the probe's default (no update
on a step whose advantages are all 0; the KL and entropy are still measured).

Each run is one JSON file in probe_validity.py's format, so `probe_validity.py table`
and `probe_critic.py shapes` read them too. docs/probe.md ("Why no hockey stick") has
the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

import probe_validity as pv

DEFAULT_OUT = pv.ROOT / "results" / "probe-flat-batches"


def _worker(jobs, out: str, long_steps: int, overrides: dict) -> None:
    import evals.probe.update as update

    log: list[dict] = []
    step = update.MasterAdam.step

    def logged_step(self, max_norm):
        before = [t.detach().clone() for t in self.targets]
        grad_norm = step(self, max_norm)
        delta = [(t.detach() - b) for t, b in zip(self.targets, before, strict=True)]
        log.append(
            {
                "grad_norm": grad_norm,
                "update_norm": sum(float((d**2).sum()) for d in delta) ** 0.5,
                "update_max": max(float(d.abs().max()) for d in delta),
            }
        )
        return grad_norm

    update.MasterAdam.step = logged_step
    for job in jobs:
        log.clear()
        pv._worker([job], out, long_steps, 50, False, overrides)
        (Path(out) / f"updates-{pv._name(*job)}").write_text(json.dumps(log))


def run(args) -> None:
    out, jobs = pv.pending(args.out, pv.parse_points(args.points), args.seeds, [])
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers", flush=True)
    overrides = pv._overrides(args.set) | {"skip_flat_batches": args.skip_flat}
    pv.spawn(jobs, args.workers, lambda i, share: (_worker, (share, str(out), args.long_steps, overrides)))


def steps(args) -> None:
    for path in sorted(Path(args.dir).glob("a*-b*-s*.json")):
        record, log = json.loads(path.read_text()), json.loads((path.parent / f"updates-{path.name}").read_text())
        varied = [sum(len(set(group["scores"])) > 1 for group in step) for step in record["samples"]]
        print(
            f"{path.stem}: {len(log)} updates in {len(varied)} steps; held-out addition {record['after']['reasoning']['accuracy']}"
        )
        if len(log) != len(varied):  # --skip-flat: the log has one row per update taken
            continue
        for i in range(0, len(varied), 8):
            rows = log[i : i + 8]
            print(
                f"  steps {i:3d}-{i + 7:3d}: groups with variance {varied[i : i + 8]}, "
                f"gradient norm {mean(r['grad_norm'] for r in rows):.3g}, "
                f"update norm {mean(r['update_norm'] for r in rows):.3g}, "
                f"reward {mean(record['raw_score'][i : i + 8]):.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"], help="alpha,beta pairs")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--long-steps", type=int, default=128)
    r.add_argument(
        "--skip-flat",
        action="store_true",
        help="skip_flat_batches: true (no update on a step whose advantages are all 0); default: false",
    )
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--out", default=str(DEFAULT_OUT))
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="probe settings over the demo spec's")
    s = sub.add_parser("steps")
    s.add_argument("dir")
    args = parser.parse_args()
    {"run": run, "steps": steps}[args.command](args)


if __name__ == "__main__":
    main()
