"""The demo family's BAI trade-off table and its quality gate (what `sweep demo check` prints).

    python bench/demo_tradeoff.py [--n 50] [--split heldout] [--root DIR]
    python bench/demo_tradeoff.py --rebuild [--seed 0] [--threads 2] [--root DIR]

Without --root it measures the family `demo:` names use: the shipped one (or the one
$SWEEP_DEMO_DIR names). Merges are a plain fp32 weighted sum with weights
[alpha*beta, (1-alpha)*beta, 1-beta] for (instruct, reasoning, pretrained); decoding is
greedy, at most 160 new tokens. Lengths are generated tokens per response (eos
included). `--rebuild` trains a family from the recipe (into a temporary folder unless
--root is given) and reports its build time. Exit 1 when the gate fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="problems per task (default 50)")
    parser.add_argument("--split", choices=["heldout", "search"], default="heldout")
    parser.add_argument("--root", type=Path, help="a rebuilt family's folder (with --rebuild: where to build)")
    parser.add_argument("--rebuild", action="store_true", help="train a family from the recipe first")
    parser.add_argument("--seed", type=int, default=0, help="with --rebuild (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="with --rebuild: torch threads (default 2)")
    args = parser.parse_args()

    from sweep.demo.build import active_family, build_family, open_family
    from sweep.demo.gate import GateResult, gate_criteria
    from sweep.demo.tradeoff import DEFAULT_POINTS, measure_tradeoff

    if args.rebuild:
        root = args.root or Path(tempfile.mkdtemp(prefix="demo-bench-")) / "family"
        family = build_family(root=root, seed=args.seed, force=True, threads=args.threads, gate=False)
        manifest = family.manifest()
        print(
            f"build: {manifest['build_wall_s']} s wall, {manifest['build_cpu_s']} CPU s, {manifest['threads']} threads "
            f"(stages, wall s: {manifest['stage_wall_s']}) on {manifest['machine']}"
        )
    else:
        family = open_family(args.root) if args.root else active_family()
    origin = "shipped" if family.shipped else "rebuilt"
    print(f"family {family.label} ({origin}) at {family.root}")

    import torch

    torch.set_num_threads(1)
    start = time.monotonic()
    rows = measure_tradeoff(family, points=DEFAULT_POINTS, n=args.n, split=args.split)
    print(f"\ngreedy, {args.n} {args.split} problems per task ({time.monotonic() - start:.0f} s)\n")
    result = GateResult(rows=rows, criteria=gate_criteria(rows), n=args.n)
    print(result.report())
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
