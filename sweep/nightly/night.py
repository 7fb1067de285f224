"""One night of `sweep nightly`: run, report, re-measure last night's points, compare, trend, alert.

A nightly spec's name holds `{date}` (`nightly-{date}`): each night is its own study,
`<results_dir>/nightly-YYYY-MM-DD`. For the night's date (today, or `--date`):

1. the spec is checked as `sweep run` checks it (exit 2 before any work);
2. the previous night is the latest earlier date of the same name with a study folder;
   tonight's study is warm-started from its front (whatever `warm_start_from` says), so
   last night's points, its balanced point first, are measured again tonight;
3. the study is run (topped up: a night that already ran is resumed, not repeated) and
   its report written;
4. each of last night's front points is probed `repeats` more times with other seeds
   (sweep.run.repeats), so its probe metrics carry the seed-to-seed noise;
5. the comparison with the previous night (sweep.report.regression) and the night record go to
   `<study>/nightly.json`; the trend over all nights to `<results_dir>/<series>-trend.*`.

Exit codes: 0 no regression, 1 regression (each named with its numbers and noise),
2 bad input or an incomplete night (trials failed, Ray or the storage unreachable),
130 a signal (the run's trials in flight are queued again).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.config import SweepSpec
from sweep.errors import ConfigError, SweepError
from sweep.nightly.series import DATE_TOKEN, NIGHT_FILE, find_nights, previous_night


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError([f"--date {text!r}: give a date as YYYY-MM-DD"]) from None


def name_template(spec_path: str | Path) -> str:
    """The spec's raw `name`, which must hold {date} (one study per night)."""
    import yaml

    try:
        name = (yaml.safe_load(Path(spec_path).read_text(encoding="utf-8")) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""  # load_spec reports the file's own problem
    if not isinstance(name, str) or DATE_TOKEN not in name:
        raise ConfigError(
            [
                f"name: {name!r}: a nightly spec's name must hold {DATE_TOKEN} (e.g. nightly-{DATE_TOKEN}), one study per night"
            ],
            source=str(spec_path),
        )
    return name


@dataclass
class NightOptions:
    date: dt.date
    results_dir: str | None = None
    trials: int | None = None
    tolerance: float = 0.02
    repeats: int = 2
    quiet: bool = False
    address: str | None = None
    notify: str | None = None
    trial_fn: Callable | None = None  # tests: a stand-in trial (sweep.run.runner.run_sweep)
    probe_fn: Callable | None = None  # tests: a stand-in probe (sweep.run.repeats)
    say: Callable[[str], None] = print
    information: list[str] = field(default_factory=list)


def load_night_spec(spec_path: str | Path, options: NightOptions) -> tuple[SweepSpec, str]:
    """The night's spec, checked as `sweep run` checks it; raises ConfigError (exit 2)."""
    from sweep.config import load_spec
    from sweep.config.checks import spec_problems
    from sweep.study.storage import storage_problems

    problems = []
    if options.trials is not None and options.trials < 1:
        problems.append("--trials: must be at least 1")
    if options.repeats < 0:
        problems.append("--repeats: must be 0 or more")
    if options.tolerance < 0:
        problems.append("--tolerance: must be >= 0")
    if options.notify:
        from sweep.nightly.notify import url_problem

        problems += [p for p in [url_problem(options.notify)] if p]
    if problems:
        raise ConfigError(problems)
    template = name_template(spec_path)
    spec = load_spec(spec_path, today=options.date)
    if options.results_dir:
        spec = spec.model_copy(update={"results_dir": str(Path(options.results_dir).resolve())})
    _, problems = spec_problems(spec)
    problems += storage_problems(spec)
    if problems:
        raise ConfigError(problems, source=str(spec_path))
    return spec, template


def run_night(spec: SweepSpec, template: str, options: NightOptions) -> dict[str, Any]:
    """Everything after the checks; returns the night record (also in <study>/nightly.json)."""
    from sweep.nightly.trend import write_trend
    from sweep.report.compare import compare_dirs
    from sweep.report.document import report_study
    from sweep.run.runner import run_sweep
    from sweep.study.durable import load_study_dir

    results_dir = Path(spec.results_dir)
    previous = previous_night(find_nights(results_dir, template), options.date)
    spec = spec.model_copy(update={"warm_start_from": [str(previous.study_dir)] if previous else []})
    summary = run_sweep(
        spec, address=options.address, trials=options.trials, quiet=options.quiet, trial_fn=options.trial_fn
    )
    night: dict[str, Any] = {
        "date": options.date.isoformat(),
        "study": spec.name,
        "study_dir": str(spec.study_dir),
        "previous": None
        if previous is None
        else {"date": previous.date.isoformat(), "study_dir": str(previous.study_dir)},
        "run": {
            "complete": summary.complete,
            "budget": summary.budget,
            "failed_this_run": summary.failed_this_run,
            "interrupted": summary.interrupted,
        },
        "regressions": [],
        "information": options.information,
    }
    if summary.signalled:
        night |= {"verdict": "error", "exit_code": 130, "error": "interrupted: run the same command to resume"}
        return night
    spec_snapshot, trials = load_study_dir(spec.study_dir)
    html, _ = report_study(spec.study_dir, spec=spec_snapshot)
    night["report"] = str(html)
    comparison = None
    if previous is not None:
        prev_spec, prev_trials = load_study_dir(previous.study_dir)
        if prev_spec.objective_names != spec.objective_names:
            options.information.append(
                f"the previous night ({previous.date}) has other objectives: nothing compared tonight"
            )
        else:
            points = _front_points(prev_trials, spec, trials)
            if options.repeats and points:
                _repeat(spec, points, options)
            # No fallback: a balanced point not measured tonight is information, never compared with another point.
            comparison = compare_dirs(previous.study_dir, spec.study_dir, tolerance=options.tolerance, fallback=False)
    else:
        options.information.append("no earlier night of this series: nothing to compare with (the first night)")
    night["comparison"] = comparison
    if comparison is not None:
        night["regressions"] = [_named(r) for r in comparison["regressions"]]
        night["information"] += _information(comparison)
    short = summary.complete < summary.budget and not summary.grid_exhausted
    if night["regressions"]:
        night |= {"verdict": "regression", "exit_code": 1}
    elif short:
        night |= {
            "verdict": "error",
            "exit_code": 2,
            "error": f"the night is incomplete: {summary.complete} of {summary.budget} trials complete "
            f"({summary.failed_this_run} failed this run); run the same command again to resume",
        }
    else:
        night |= {"verdict": "ok", "exit_code": 0}
    _write_json(spec.study_dir / NIGHT_FILE, night)
    night["trend"] = str(write_trend(results_dir, template, spec))
    _write_json(spec.study_dir / NIGHT_FILE, night)
    return night


def _front_points(prev_trials, spec: SweepSpec, trials) -> list[dict[str, float]]:
    """Last night's front points (in tonight's space) that tonight's study measured."""
    from sweep.report.front import pareto_front
    from sweep.report.regression import find_trial
    from sweep.study.table import trial_params

    front = pareto_front(prev_trials, spec.objectives, spec.constraints)
    points = [{k: float(v) for k, v in trial_params(row).items()} for _, row in front.iterrows()]
    return [p for p in points if find_trial(trials, p) is not None]


def _repeat(spec: SweepSpec, points: list[dict[str, float]], options: NightOptions) -> None:
    from sweep.run.raysetup import init_ray, quiet_console
    from sweep.run.repeats import run_repeats

    with quiet_console(options.quiet) as (out, _err):
        started, _ = init_ray(spec, options.address)
        try:
            run_repeats(
                spec,
                points,
                repeats=options.repeats,
                probe_fn=options.probe_fn,
                say=options.say if not options.quiet else (lambda line: None),
            )
        finally:
            if started:
                import ray

                ray.shutdown()
    from sweep.run.raysetup import move_console_log

    move_console_log(spec.study_dir / "sweep.log")


def _named(regression: dict[str, Any]) -> dict[str, Any]:
    """A regression as the night record keeps it: the numbers and one line of text."""
    if "problem" in regression:
        return regression | {"text": regression["problem"]}
    where = ", ".join(f"{k} {v:.3f}" for k, v in regression["params"].items())
    text = (
        f"{regression['metric']} at ({where}){' (balanced point)' if regression['balanced'] else ''}: "
        f"{regression['before']:.4g} -> {regression['after']:.4g} ({regression['change']:+.4g}; "
        f"noise ±{regression['noise']:.3g} at 99%, {regression['basis']})"
    )
    return regression | {"text": text}


def _information(comparison: dict[str, Any]) -> list[str]:
    info = list(comparison["notes"])
    balanced = comparison["balanced"]
    if balanced["after"] is not None and not balanced["same_point"]:
        params = ", ".join(f"{k} {v:.3f}" for k, v in balanced["after"]["params"].items())
        info.append(
            f"the sampler found a different balanced point tonight: trial {balanced['after']['number']} ({params}) "
            "(information, not a regression)"
        )
    missing = [p for p in comparison["points"] if p["number_after"] is None]
    if missing:
        info.append(
            f"{len(missing)} of last night's {len(comparison['points'])} front point(s) were not measured tonight"
        )
    return info


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def render(night: dict[str, Any]) -> str:
    """What the nightly prints: the verdict first, then what it rests on."""
    from sweep.report.compare import render_points

    head = {"ok": "no regression", "regression": "REGRESSION", "error": "could not complete"}[night["verdict"]]
    lines = [f"nightly {night['study']}: {head}"]
    if night.get("previous"):
        lines.append(
            f"  compared with {night['previous']['date']} at the same points ({night['previous']['study_dir']})"
        )
    if night.get("comparison"):
        lines += render_points(night["comparison"], indent="  ")
    lines += [f"  regression: {r['text']}" for r in night["regressions"]]
    lines += [f"  {line}" for line in night["information"]]
    if night.get("error"):
        lines.append(f"  {night['error']}")
    for key in ("report", "trend"):
        if night.get(key):
            lines.append(f"  {key}: {night[key]}")
    return "\n".join(lines)


def notify(night: dict[str, Any], url: str) -> tuple[bool, str]:
    """POST the night's summary; record the outcome in nightly.json (never raises)."""
    from sweep.nightly.notify import payload, post_json

    delivered, detail = post_json(url, payload(night))
    night["notified"] = {"url": url, "delivered": delivered, "detail": detail}
    study_dir = Path(night.get("study_dir", ""))
    if (study_dir / NIGHT_FILE).exists():
        _write_json(study_dir / NIGHT_FILE, night)
    return delivered, detail


def error_night(spec_name: str, date: dt.date, error: SweepError | str) -> dict[str, Any]:
    """The record of a night that stopped on bad input or infrastructure (exit 2)."""
    return {
        "date": date.isoformat(),
        "study": spec_name,
        "verdict": "error",
        "exit_code": 2,
        "error": str(error),
        "regressions": [],
        "information": [],
    }
