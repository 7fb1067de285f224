"""The study report: `report.html` (self-contained, interactive) and `report.md` (for a PR).

`write_report` is the one entry point; `sweep report` (and later `--rescore`) is thin
wiring around it. The maths comes from sweep.report.front, .balanced and .summary; the
pages from sweep.report.html_report and .markdown_report, the plots from sweep.report.figures.

report.html embeds plotly.js inline (about 4.8 MB) so it opens with no network.
Every user-provided string (study, metric, param names, error messages) is escaped:
HTML-escaped in report.html, Markdown-escaped (pipes, emphasis, brackets, angle
brackets, ...) in report.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.errors import SweepError
from sweep.report.front import as_objectives, eligible_mask, hypervolume_history, pareto_mask
from sweep.report.html_report import render_html
from sweep.report.markdown_report import render_markdown
from sweep.report.summary import ParetoSummary, summarize
from sweep.study import table

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"


def write_report(
    study_dir: Path,
    *,
    trials: pd.DataFrame,
    objectives: Sequence[Any],
    constraints: Sequence[Any] = (),
    spec_name: str,
    balanced_rule: str = "maximin",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    heldout: pd.DataFrame | None = None,
    reference: Sequence[float] | None = None,
    summary: ParetoSummary | None = None,
    calibration: Any = None,
    probe: str | None = None,
) -> tuple[Path, Path]:
    """Write report.html and report.md into `study_dir` (created if missing); return their paths.

    trials:      the runner's trials table (see docs/report.md for its columns)
    objectives:  (metric, direction) pairs, `ObjectiveSpec`s or `sweep.report.front.Objective`s
    constraints: objects with `.metric`, `.op`, `.value`, `.violation(value)` (shown, and
                 used for feasibility only where the table has no `feasible` value)
    balanced_rule, weights: see `sweep.report.balanced.balanced_point`
    heldout:     optional held-out scores of some trials: a `number` column plus one
                 column per held-out metric, shown beside the search scores
    reference:   hypervolume reference point in metric units; default `sweep.report.front.default_reference`
    summary:     the study's `sweep.report.summary.summarize` result when the caller already has it (with
                 the same trials and options), so it is computed once
    calibration: the study's `sweep calibrate` result (sweep.report.calibration.load_calibration), shown
                 as its own section
    probe:       how the probe ran (sweep.report.facts.probe_text of the spec's evals.probe), shown
                 in the summary

    Raises SweepError (before writing anything) for a table without `number`, an unknown
    rule, bad weights or reference, or a `heldout` table without `number`.
    """
    objectives = as_objectives(objectives)
    _check_inputs(trials, heldout)
    if summary is None:
        summary = summarize(trials, objectives, constraints, rule=balanced_rule, weights=weights, reference=reference)
    trials = trials.sort_values("number").reset_index(drop=True)
    front = pareto_mask(trials, objectives, constraints)
    eligible = eligible_mask(trials, objectives, constraints)
    history = (
        hypervolume_history(trials, objectives, constraints, reference=summary.reference)
        if summary.reference is not None
        else None
    )

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    html_text = render_html(
        trials,
        objectives=objectives,
        constraints=constraints,
        spec_name=spec_name,
        summary=summary,
        front=front,
        eligible=eligible,
        history=history,
        heldout=heldout,
        calibration=calibration,
        probe=probe,
    )
    md_text = render_markdown(
        trials,
        objectives=objectives,
        constraints=constraints,
        spec_name=spec_name,
        summary=summary,
        front=front,
        heldout=heldout,
        calibration=calibration,
        probe=probe,
    )
    html_path, md_path = study_dir / HTML_NAME, study_dir / MARKDOWN_NAME
    _write_atomic(html_path, html_text)
    _write_atomic(md_path, md_text)
    return html_path, md_path


def report_options(spec: Any) -> dict[str, Any]:
    """balanced_rule, weights and reference for `write_report` from the spec's `report`
    section (`balanced_rule`, `weights` by metric, `reference` one value per objective);
    the defaults when the spec has none."""
    section = getattr(spec, "report", None)
    reference = getattr(section, "reference", None)
    if reference is not None and len(reference) != len(spec.objectives):
        raise SweepError(
            f"report.reference needs one value per objective ({len(spec.objectives)}), got {list(reference)}"
        )
    return {
        "balanced_rule": getattr(section, "balanced_rule", "maximin"),
        "weights": getattr(section, "weights", None),
        "reference": list(reference) if reference is not None else None,
    }


def report_study(study_dir: Path, *, spec: Any, heldout: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """`sweep report` in one call: read the study's trials table, write both reports with
    the spec's objectives, constraints and report options. Returns (report.html, report.md)."""
    from sweep.report.calibration import load_calibration
    from sweep.report.facts import probe_text

    trials = table.read(study_dir)
    return write_report(
        Path(study_dir),
        trials=trials,
        objectives=spec.objectives,
        constraints=spec.constraints,
        spec_name=spec.name,
        heldout=heldout,
        calibration=load_calibration(Path(study_dir)),
        probe=probe_text(spec.evals.probe),
        **report_options(spec),
    )


def _check_inputs(trials: pd.DataFrame, heldout: pd.DataFrame | None) -> None:
    if not isinstance(trials, pd.DataFrame):
        raise SweepError(f"the trials table must be a pandas DataFrame, got {type(trials).__name__}")
    if "number" not in trials.columns:
        raise SweepError("the trials table has no 'number' column: is it a sweep trials table?")
    if heldout is not None and (not isinstance(heldout, pd.DataFrame) or "number" not in heldout.columns):
        raise SweepError("the held-out table needs a 'number' column naming the trial of each row")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
