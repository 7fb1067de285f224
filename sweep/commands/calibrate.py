"""`python -m sweep calibrate (SPEC | RESULTS_DIR/NAME) [--trials N ...] [--long-steps K] [--seeds S ...] [--long-run-timeout SECONDS] [--checkpoint-every SECONDS] [--address A]`.

Runs the long RL on a handful of a finished study's candidates and the probe's verdicts
beside it: does the probe rank them as the long runs do? The long runs go to Ray workers
with a trial's resources, `budget.concurrent` at a time; each finished one is kept in
<study_dir>/calibration-runs.jsonl, so a rerun after a stop runs only the rest, and each one in
flight saves its state every --checkpoint-every seconds, so a long run lost with its node or
stopped with the driver goes on from there when it runs again. Prints one
line per long run, then the verdict; writes <study_dir>/calibration.json, which `sweep
report` shows.
Exit 0 when the probe can be trusted (Spearman >= 0.8 for every steering probe metric,
feasibility agreement >= 90%), 1 when it cannot (or too few candidates to say), 2 on
bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "check on a finished study that the short probe ranks its candidates as long RL runs do"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the sweep spec (YAML) or its study folder, e.g. results/demo")
    parser.add_argument(
        "--trials",
        type=int,
        nargs="+",
        help="COMPLETE trials to calibrate on (default: the front's extremes, the balanced point, "
        "the lowest and highest steering probe metric, spread up to --max-trials)",
    )
    parser.add_argument("--max-trials", type=int, default=6, help="candidates chosen by default (default 6)")
    parser.add_argument(
        "--long-steps", type=int, help="RL steps of each long run (default: 8x the probe's evals.probe.steps)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="seeds of the long runs (default: the probe's seed + 1: another run)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (default: the spec's resources.torch_threads)"
    )
    parser.add_argument(
        "--long-run-timeout",
        type=float,
        metavar="SECONDS",
        help="stop a long run (and its worker) after this long, timed from its start on a loaded worker "
        "(default: budget.trial_timeout_s x long steps / probe steps; none when the spec sets no trial timeout)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        metavar="SECONDS",
        help="save each long run's state this often, to <study_dir>/calibration-checkpoints/, so that a run "
        "lost with its node or stopped with the driver goes on from there (0: after every step; default: the "
        "spec's budget.checkpoint_every_s, 600)",
    )
    parser.add_argument(
        "--address", help="Ray cluster address (default: the spec's, else $RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument("--json", action="store_true", help="print the calibration as one JSON object")


def run(args: argparse.Namespace, *, run_fn=None) -> int:
    import json

    from sweep.errors import SweepError
    from sweep.report.calibration import markdown, save_calibration
    from sweep.run.calibrate import calibrate, choose_trials
    from sweep.run.longrun import long_run_timeout
    from sweep.run.progress import duration
    from sweep.study.durable import load_study_dir

    study_dir = _study_dir(args.study)
    spec, trials = load_study_dir(study_dir)
    probe = spec.evals.probe
    if probe is None:
        raise SweepError(f"{study_dir}: the study's spec has no evals.probe section: there is no probe to calibrate")
    if args.long_steps is not None and args.long_steps < probe.steps:
        raise SweepError(f"--long-steps {args.long_steps} is shorter than the probe's {probe.steps} steps")
    if args.long_run_timeout is not None and args.long_run_timeout <= 0:
        raise SweepError(f"--long-run-timeout must be more than 0 seconds, got {args.long_run_timeout:g}")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise SweepError(f"--checkpoint-every must be 0 (every step) or more seconds, got {args.checkpoint_every:g}")
    if args.max_trials < 2:
        raise SweepError(f"--max-trials must be at least 2, got {args.max_trials}")
    chosen = choose_trials(spec, trials, numbers=args.trials, limit=args.max_trials)
    if args.threads:
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"torch_threads": args.threads})})
    long_steps = args.long_steps or 8 * probe.steps
    timeout_s = args.long_run_timeout or long_run_timeout(spec, long_steps)
    limit = f", each stopped after {duration(timeout_s)}" if timeout_s else ""
    print(
        f"calibrating {len(chosen)} candidates of {spec.name} ({', '.join(str(n) for n, _ in chosen)}): "
        f"{long_steps}-step RL runs against the {probe.steps}-step probe, {spec.budget.concurrent} at a time{limit}",
        file=sys.stderr,
    )
    result = calibrate(
        spec,
        trials,
        chosen,
        long_steps=long_steps,
        seeds=args.seeds,
        say=lambda line: print(line, file=sys.stderr),
        address=args.address,
        run_fn=run_fn,
        timeout_s=timeout_s,
        checkpoint_every_s=args.checkpoint_every
        if args.checkpoint_every is not None
        else spec.budget.checkpoint_every_s,
    )
    path = save_calibration(study_dir, result)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print("\n".join(markdown(result)))
        print(f"\nwrote {path}; `python -m sweep report {study_dir}` shows it")
    print(("ok: " if result.trusted else "warning: ") + result.verdict, file=sys.stderr)
    if result.reward_shapes:
        print(f"long-run reward: {result.reward_shapes}", file=sys.stderr)
    return 0 if result.trusted else 1


def _study_dir(value: str) -> Path:
    """A study folder as given, or the study folder of a spec file."""
    path = Path(value)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from sweep.config import load_spec

        return load_spec(path).study_dir
    return path
