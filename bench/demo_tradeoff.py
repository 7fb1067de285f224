"""The demo family's BAI trade-off table, the issue's criteria, and its build cost.

    python bench/demo_tradeoff.py [--n 50] [--split heldout] [--root DIR] [--seed 0] [--rebuild]

Merges are a plain fp32 weighted sum with weights [alpha*beta, (1-alpha)*beta, 1-beta]
for (instruct, reasoning, pretrained); decoding is greedy, at most 64 new tokens.
Lengths are generated tokens per response (eos included). `--rebuild` builds the family
afresh (into a temporary folder unless --root is given) to measure the build time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="problems per task (default 50)")
    parser.add_argument("--split", choices=["heldout", "search"], default="heldout")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="build afresh and report the build time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for a rebuild (default 2)")
    args = parser.parse_args()

    import torch

    from sweep.demo.build import ensure_family
    from sweep.demo.tradeoff import criteria, markdown_table, measure_tradeoff

    root = args.root
    if args.rebuild and root is None:
        root = Path(tempfile.mkdtemp(prefix="demo-bench-")) / "family"
    family = ensure_family(root=root, seed=args.seed, force=args.rebuild, threads=args.threads)
    manifest = family.manifest()
    print(f"family {manifest['key']} at {family.root}")
    print(
        f"build: {manifest['build_wall_s']} s wall, {manifest['build_cpu_s']} CPU s, {manifest['threads']} threads "
        f"(stages, wall s: {manifest['stage_wall_s']}); target <= 180 s wall on 2 cores"
    )

    torch.set_num_threads(1)
    start = time.monotonic()
    rows = measure_tradeoff(family, n=args.n, split=args.split)
    print(f"\ngreedy, {args.n} {args.split} problems per task ({time.monotonic() - start:.0f} s)\n")
    print(markdown_table(rows))
    at = {(r.alpha, r.beta): r for r in rows}
    ratio = at[(0.0, 1.0)].reasoning.mean_length / at[(1.0, 1.0)].reasoning.mean_length
    print(f"\nreasoning / instruct length on reasoning prompts: {ratio:.1f}x (criterion >= 3x)")
    checks = criteria(rows)
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps([r.to_json() for r in rows]))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
