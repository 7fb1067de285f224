"""A `sweep run` driver process for tests: the CLI's run command with the stand-in trial.

    python -m tests.sweep.driver SPEC [--quiet] [--trials N]

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
