"""`python -m sweep demo build|check|table`: the demo model family (three tiny checkpoints)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "show the demo family of tiny models, check it against its quality gate, print its trade-off, or rebuild it"
BUILD_ONLY = ("root", "seed", "threads", "force")  # flags that only mean something with --rebuild


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    build = actions.add_parser(
        "build",
        help="print the family `demo:` names use (shipped, or $SWEEP_DEMO_DIR); --rebuild trains one from the recipe",
    )
    check = actions.add_parser(
        "check", help="measure the trade-off table and the gate's criteria; exit 1 when the family misses any"
    )
    table = actions.add_parser("table", help="lengths and accuracies of linear merges over alpha and beta")
    build.add_argument(
        "--rebuild", action="store_true", help="train a family from the recipe (minutes), then run its gate"
    )
    build.add_argument(
        "--root", type=Path, help="with --rebuild: the new family's folder (default ~/.cache/sweep/demo/<key>)"
    )
    build.add_argument("--seed", type=int, default=None, help="with --rebuild: seed of data and weights (default 0)")
    build.add_argument("--force", action="store_true", help="with --rebuild: rebuild even when a family is there")
    build.add_argument(
        "--threads", type=int, default=None, help="with --rebuild: torch threads (default 2; 1 on a busy machine)"
    )
    for sub in (check, table):
        sub.add_argument(
            "--root", type=Path, help="a rebuilt family's folder (default: $SWEEP_DEMO_DIR, else the shipped family)"
        )
        sub.add_argument("-n", type=int, default=50, help="problems per task (default 50)")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    table.add_argument(
        "--split", choices=["heldout", "search"], default="heldout", help="which split's problems (default heldout)"
    )


def run(args: argparse.Namespace) -> int:
    from sweep.demo.build import active_family, open_family
    from sweep.errors import SweepError

    if args.action == "build":
        return _build(args)
    if args.n < 1:
        raise SweepError(f"-n must be at least 1, got {args.n}")
    family = open_family(args.root) if args.root is not None else active_family()
    if args.action == "check":
        from sweep.demo.gate import measure_gate

        result = measure_gate(family, n=args.n)
        if args.json:
            print(json.dumps({"label": family.label, "root": str(family.root), **result.to_json()}, indent=2))
        else:
            print(f"demo family {family.label} at {family.root}")
            print(_table_head(args.n, "heldout"))
            print(result.report())
        return 0 if result.passed else 1

    from sweep.demo.tradeoff import markdown_table, measure_tradeoff

    rows = measure_tradeoff(family, n=args.n, split=args.split)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print(f"demo family {family.label}")
        print(_table_head(args.n, args.split))
        print(markdown_table(rows))
    return 0


def _table_head(n: int, split: str) -> str:
    from sweep.demo.tasks import MAX_GEN_TOKS

    return (
        f"greedy, {n} {split} problems per task, max {MAX_GEN_TOKS} new tokens; merge weights "
        "[alpha*beta, (1-alpha)*beta, 1-beta] for (instruct, reasoning, pretrained)"
    )


def _build(args: argparse.Namespace) -> int:
    from sweep.demo import MEMBERS
    from sweep.demo.build import active_family, build_family
    from sweep.demo.gate import GateResult
    from sweep.errors import SweepError

    start = time.monotonic()
    if not args.rebuild:
        given = [f"--{name}" for name in BUILD_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise SweepError(f"{', '.join(given)} only apply with --rebuild (training a family from the recipe)")
        family = active_family()
        origin = "shipped with sweep" if family.shipped else "selected by $SWEEP_DEMO_DIR"
        print(f"demo family {family.label} ({origin}; checksums OK, {time.monotonic() - start:.1f} s)")
    else:
        threads = 2 if args.threads is None else args.threads
        if threads < 1:
            raise SweepError(f"--threads must be at least 1, got {threads}")
        family = build_family(root=args.root, seed=args.seed or 0, force=args.force, threads=threads)
        manifest = family.manifest()
        print(f"demo family {manifest['label']} (built in {manifest['build_wall_s']} s, {manifest['threads']} threads)")
    print(f"  folder         {family.root}")
    for member in MEMBERS:
        print(f"  {member:<14} {getattr(family, member)}")
    if not args.rebuild:
        return 0
    gate = family.manifest().get("gate")
    if gate is None:
        return 0
    result = GateResult.from_json(gate)
    print(result.report())
    if not family.shipped:
        print(f"to use it: export SWEEP_DEMO_DIR={family.root}")
    return 0 if result.passed else 1
