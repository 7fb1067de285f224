"""`python -m sweep <command>`: thin wiring over the command modules in sweep.commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import sweep.commands
from core.errors import UserError

# Order in `--help`; commands not listed here follow alphabetically.
_ORDER = ["run", "validate", "report", "export", "calibrate", "compare", "nightly", "merge", "eval", "probe", "demo"]


def _command_modules() -> dict[str, str]:
    names = [m.name for m in pkgutil.iter_modules(sweep.commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return {n: f"sweep.commands.{n}" for n in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Sweep Balanced Actor Initialization merge ratios (alpha, beta) "
        "against capability (lm-eval) and RL stability (a short RLHF probe).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name, modname in _command_modules().items():
        module = importlib.import_module(modname)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("sweep: error: a command is required (see `python -m sweep --help`)", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("sweep: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        if args.debug:
            raise
        print(f"sweep {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
