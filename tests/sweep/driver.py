"""A `sweep run` driver process for tests: the CLI's run command with the stand-in trial.

    python -m tests.sweep.driver SPEC [--quiet] [--trials N] [--address A]
    python -m tests.sweep.driver --calibrate STUDY_DIR [--address A] [--seeds S ...]   # sweep calibrate, stand-in long runs

Exit codes as `sweep run`: 0 budget complete, 1 short, 2 a user error, 130 a signal.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    from sweep.config import load_spec
    from sweep.errors import SweepError
    from sweep.run.raysetup import choose_local_auth_mode

    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--address")
    parser.add_argument("--calibrate", action="store_true", help="SPEC is a study folder: calibrate it")
    parser.add_argument("--seeds", nargs="+", default=["1"], help="with --calibrate: the long runs' seeds")
    args = parser.parse_args()
    if args.calibrate:
        return _calibrate(args)
    try:
        spec = load_spec(args.spec, resolve_demo=False)
    except SweepError as exc:
        print(f"sweep run: error: {exc}", file=sys.stderr)
        return 2
    choose_local_auth_mode(spec, args.address)  # as the run command does, before Ray is imported
    import ray.cloudpickle

    from sweep.run.runner import run_sweep
    from tests.sweep import sweeps

    ray.cloudpickle.register_pickle_by_value(sweeps)
    try:
        summary = run_sweep(
            spec,
            quiet=args.quiet,
            trials=args.trials,
            address=args.address,
            trial_fn=sweeps.stand_in_trial,
        )
    except SweepError as exc:
        print(f"sweep run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return summary.exit_code


def _calibrate(args) -> int:
    """`sweep calibrate STUDY --max-trials 4`, its long runs the stand-in's (tests.sweep.sweeps)."""
    from sweep.cli import build_parser
    from sweep.commands.calibrate import run
    from sweep.errors import SweepError

    cli = build_parser().parse_args(
        ["calibrate", args.spec, "--max-trials", "4", "--long-steps", "32", "--seeds", *args.seeds]
    )
    cli.address = args.address
    import ray.cloudpickle

    from tests.sweep import sweeps

    ray.cloudpickle.register_pickle_by_value(sweeps)
    try:
        return run(cli, run_fn=sweeps.stand_in_long_run)
    except SweepError as exc:
        print(f"sweep calibrate: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
