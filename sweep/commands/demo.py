"""`python -m sweep demo build|table`: the demo model family (three tiny checkpoints)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "build (or reuse) the demo family of tiny models, or print its merge trade-off table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    build = actions.add_parser("build", help="build the family, or reuse the cached copy, and print its paths")
    table = actions.add_parser("table", help="lengths and accuracies of linear merges over alpha and beta")
    for sub in (build, table):
        sub.add_argument(
            "--root", type=Path, help="the family's folder (default: the cache, $SWEEP_DEMO_DIR or ~/.cache/sweep/demo)"
        )
        sub.add_argument("--seed", type=int, default=0, help="seed of data and weights (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even when a family is already there")
    build.add_argument(
        "--threads", type=int, default=2, help="torch threads for a build (default 2; 1 is faster on a busy machine)"
    )
    table.add_argument("-n", type=int, default=50, help="problems per task (default 50)")
    table.add_argument(
        "--split", choices=["heldout", "search"], default="heldout", help="which split's problems (default heldout)"
    )
    table.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from sweep.demo.build import ensure_family
    from sweep.errors import SweepError

    start = time.monotonic()
    if getattr(args, "threads", 2) < 1:
        raise SweepError(f"--threads must be at least 1, got {args.threads}")
    family = ensure_family(
        root=args.root, seed=args.seed, force=getattr(args, "force", False), threads=getattr(args, "threads", 2)
    )
    if args.action == "build":
        manifest = family.manifest()
        print(
            f"demo family {manifest['key']} ({time.monotonic() - start:.1f} s; built in {manifest['build_wall_s']} s)"
        )
        print(f"  folder         {family.root}")
        for member in ("pretrained", "instruct", "reasoning", "tasks", "probe_prompts"):
            print(f"  {member:<14} {getattr(family, member)}")
        return 0

    from sweep.demo.tasks import MAX_GEN_TOKS
    from sweep.demo.tradeoff import markdown_table, measure_tradeoff

    if args.n < 1:
        raise SweepError(f"-n must be at least 1, got {args.n}")
    rows = measure_tradeoff(family, n=args.n, split=args.split)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print(
            f"greedy, {args.n} {args.split} problems per task, max {MAX_GEN_TOKS} new tokens; merge weights "
            "[alpha*beta, (1-alpha)*beta, 1-beta] for (instruct, reasoning, pretrained)"
        )
        print(markdown_table(rows))
    return 0
