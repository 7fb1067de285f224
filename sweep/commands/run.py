"""`python -m sweep run SPEC`: top the study up to its budget of complete trials."""

from __future__ import annotations

import argparse

HELP = "run the sweep: Optuna proposes, Ray workers merge, evaluate and probe; resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="path to the sweep spec (YAML)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--trials", type=int, help="override budget.trials (complete trials wanted in the study)")
    parser.add_argument("--results-dir", help="override results_dir (study folder is <results-dir>/<name>)")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="for cron: print nothing on a clean run; only problems (failed trials, a short or interrupted run), on stderr",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sweep.config import load_spec
    from sweep.config.checks import spec_problems
    from sweep.errors import ConfigError
    from sweep.run.raysetup import choose_local_auth_mode

    if args.trials is not None and args.trials < 1:
        raise ConfigError(["--trials: must be at least 1"])
    spec = load_spec(args.spec)
    if args.results_dir:
        spec = spec.model_copy(update={"results_dir": str(Path(args.results_dir).resolve())})
    from sweep.study.storage import storage_problems

    _, problems = spec_problems(spec)  # everything `sweep validate` checks, before any worker starts
    problems += storage_problems(spec)  # the storage answers, its driver is installed (nothing created)
    if problems:
        raise ConfigError(problems, source=args.spec)
    choose_local_auth_mode(spec, args.address)  # before the runner imports Ray
    from sweep.run.runner import run_sweep

    summary = run_sweep(spec, address=args.address, trials=args.trials, quiet=args.quiet)
    return summary.exit_code
