"""`python -m sweep nightly SPEC [--date YYYY-MM-DD] [--notify URL]`: one command per night.

Runs the night's date-stamped study warm-started from the previous night, writes its
report, re-measures last night's front (probe repeats at other seeds), compares it with
the previous night at the same points, updates the trend page, and posts a summary to
a webhook (sweep.nightly.night has the steps).

Exit codes: 0 no regression; 1 a regression beyond tolerance and the noise (each named
with its numbers); 2 bad input (before any work) or an incomplete night (trials failed,
Ray or the storage unreachable): rerun the same command to resume; 130 a signal.
A notification that fails is reported on stderr and never changes the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "nightly: run the date-stamped study, compare with last night at the same points, trend, alert"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a spec whose name holds {date}, e.g. search_spaces/nightly.yaml")
    parser.add_argument("--date", help="the night's date, YYYY-MM-DD (default: today); reruns resume that night")
    parser.add_argument(
        "--notify",
        metavar="URL",
        default=os.environ.get("SWEEP_NOTIFY_URL") or None,
        help="POST a JSON summary (Slack-compatible `text`) to this webhook (default: $SWEEP_NOTIFY_URL)",
    )
    parser.add_argument("--results-dir", help="override results_dir (each night is <results-dir>/<name>)")
    parser.add_argument("--trials", type=int, help="override budget.trials for this night")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="allowed worsening per objective on top of the noise (metric units; default 0.02)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="extra probe seeds for each of last night's front points, for the probe's seed noise (default 2; 0: none)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--quiet", action="store_true", help="for cron: print nothing on a clean night; problems on stderr"
    )


def run(args: argparse.Namespace, *, trial_fn=None, probe_fn=None) -> int:
    import datetime as dt

    from sweep.errors import SweepError
    from sweep.nightly.night import NightOptions, load_night_spec, parse_date, render, run_night

    try:
        date = parse_date(args.date) if args.date else dt.date.today()
    except SweepError:
        if args.notify:
            _notify_error(args, str(sys.exc_info()[1]), dt.date.today())
        raise
    options = NightOptions(
        date=date,
        results_dir=args.results_dir,
        trials=args.trials,
        tolerance=args.tolerance,
        repeats=args.repeats,
        quiet=args.quiet,
        address=args.address,
        notify=args.notify,
        trial_fn=trial_fn,
        probe_fn=probe_fn,
    )
    try:
        spec, template = load_night_spec(args.spec, options)
        from sweep.run.raysetup import choose_local_auth_mode

        choose_local_auth_mode(spec, args.address)  # before the runner imports Ray
        night = run_night(spec, template, options)
    except SweepError as exc:
        if args.notify:
            _notify_error(args, str(exc), date)
        raise
    code = night["exit_code"]
    quiet_and_clean = args.quiet and code == 0
    if not quiet_and_clean:
        print(render(night), file=sys.stderr if args.quiet else sys.stdout)
    if args.notify:
        _notify(night, args.notify, quiet=args.quiet)
    return code


def _notify(night: dict, url: str, *, quiet: bool) -> None:
    from sweep.nightly.night import notify

    delivered, detail = notify(night, url)
    if not delivered:
        print(f"sweep nightly: warning: could not notify {url}: {detail}", file=sys.stderr)
    elif not quiet:
        print(f"  notified {url} ({detail})")


def _notify_error(args: argparse.Namespace, message: str, date) -> None:
    from pathlib import Path

    from sweep.nightly.night import error_night
    from sweep.nightly.notify import url_problem

    if url_problem(args.notify) is None:  # a bad URL is itself the error being reported
        _notify(error_night(Path(args.spec).stem, date, message), args.notify, quiet=True)
