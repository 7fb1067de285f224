"""The study report: `report.html` (self-contained, interactive) and `report.md` (for a PR).

`write_report` is the one entry point; `sweep report` (and later `--rescore`) is thin
wiring around it. The maths comes from sweep.report.pareto, the plots from sweep.report.figures.

report.html embeds plotly.js inline (about 4.8 MB) so it opens with no network.
Every user-provided string (study, metric, param names, error messages) is escaped:
HTML-escaped in report.html, Markdown-escaped (pipes, emphasis, brackets, angle
brackets, ...) in report.md.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep.errors import SweepError
from sweep.report.figures import (
    LENGTH_CURVE,
    REWARD_CURVE,
    curve_figure,
    esc,
    fmt,
    hypervolume_figure,
    objective_map_figure,
    pareto_figure,
)
from sweep.report.pareto import (
    RULE_DOCS,
    Objective,
    ParetoSummary,
    as_objectives,
    eligible_mask,
    hypervolume_history,
    objective_values,
    pareto_mask,
    summarize,
)
from sweep.study import table

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


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
) -> tuple[Path, Path]:
    """Write report.html and report.md into `study_dir` (created if missing); return their paths.

    trials:      the runner's trials table (see docs/report.md for its columns)
    objectives:  (metric, direction) pairs, `ObjectiveSpec`s or `pareto.Objective`s
    constraints: objects with `.metric`, `.op`, `.value`, `.violation(value)` (shown, and
                 used for feasibility only where the table has no `feasible` value)
    balanced_rule, weights: see `sweep.report.pareto.balanced_point`
    heldout:     optional held-out scores of some trials: a `number` column plus one
                 column per held-out metric, shown beside the search scores
    reference:   hypervolume reference point in metric units; default `pareto.default_reference`
    summary:     the study's `pareto.summarize` result when the caller already has it (with
                 the same trials and options), so it is computed once
    calibration: the study's `sweep calibrate` result (sweep.run.calibrate.load_calibration), shown
                 as its own section

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
    from sweep.run.calibrate import load_calibration

    trials = table.read(study_dir)
    return write_report(
        Path(study_dir),
        trials=trials,
        objectives=spec.objectives,
        constraints=spec.constraints,
        spec_name=spec.name,
        heldout=heldout,
        calibration=load_calibration(Path(study_dir)),
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


# ---------------------------------------------------------------- shared facts


def _interrupted_mask(trials: pd.DataFrame) -> pd.Series:
    """FAIL rows that a signal stopped (failure_kind interrupted): queued again, not failures."""
    if "state" not in trials or "failure_kind" not in trials:
        return pd.Series(False, index=trials.index)
    return (trials["state"].astype(str).str.upper() == "FAIL") & (trials["failure_kind"] == "interrupted")


def _counts(trials: pd.DataFrame) -> dict[str, int]:
    states = trials["state"].astype(str).str.upper() if "state" in trials else pd.Series(["COMPLETE"] * len(trials))
    interrupted = _interrupted_mask(trials)
    states = states.where(~interrupted, "INTERRUPTED")
    return {s: int((states == s).sum()) for s in ("COMPLETE", "FAIL", "INTERRUPTED", "RUNNING", "PRUNED")} | {
        "total": len(trials)
    }


def _trial_counts_text(counts: dict[str, int]) -> str:
    """'12 (10 complete, 0 failed, 2 interrupted and queued again)': interrupted trials are not failures."""
    parts = [f"{counts['COMPLETE']} complete", f"{counts['FAIL']} failed"]
    if counts["INTERRUPTED"]:
        parts.append(f"{counts['INTERRUPTED']} interrupted and queued again")
    if counts["RUNNING"] + counts["PRUNED"]:
        parts += [f"{counts['RUNNING']} running", f"{counts['PRUNED']} pruned"]
    return f"{counts['total']} ({', '.join(parts)})"


def _rule_text(summary: ParetoSummary, escape) -> str:
    """The balanced point's rule, what it does, and its weights (metric names escaped by `escape`)."""
    point = summary.balanced
    if point is None:
        return ""
    text = f"{escape(point.rule)}: {escape(RULE_DOCS.get(point.rule, ''))}"
    if point.weights:
        text += " (weights " + ", ".join(f"{escape(k)} = {fmt(v)}" for k, v in point.weights.items()) + ")"
    return text


def _missing_objectives(trials: pd.DataFrame, objectives: Sequence[Objective]) -> list[str]:
    values = objective_values(trials, objectives)
    return [o.metric for k, o in enumerate(objectives) if not np.isfinite(values[:, k]).any()]


def _ordered_metrics(trials: pd.DataFrame, objectives: Sequence[Objective]) -> list[str]:
    """Objective columns first (in objective order), then every other numeric metric column."""
    names = [o.metric for o in objectives if o.metric in trials]
    others = [
        c for c in table.metric_columns(trials.columns) if c not in names and pd.api.types.is_numeric_dtype(trials[c])
    ]
    return names + others


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#222}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666} .box{background:#fff8e1;border:1px solid #f0d58c;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0} td.text,th.text{text-align:left} tr.front td{background:#fdecea} tr.balanced td{background:#fff3c4;font-weight:600}
.scroll{overflow:auto;max-height:640px} .maps{display:flex;flex-wrap:wrap;gap:8px} .maps>div{flex:0 0 600px}
.error{color:#a00;max-width:420px;white-space:pre-wrap;word-break:break-word}
"""


def render_html(
    trials: pd.DataFrame,
    *,
    objectives: Sequence[Objective],
    constraints: Sequence[Any],
    spec_name: str,
    summary: ParetoSummary,
    front: np.ndarray,
    eligible: np.ndarray,
    history: pd.DataFrame | None,
    heldout: pd.DataFrame | None,
    calibration: Any = None,
) -> str:
    """The whole report.html as a string (plotly.js inlined once, in <head>)."""
    from plotly.offline import get_plotlyjs

    balanced_number = summary.balanced.number if summary.balanced else None
    parts: list[str] = []
    parts.append(f"<h1>Sweep report: {esc(spec_name)}</h1>")
    parts.append(
        f'<p class="muted">Generated {esc(_dt.datetime.now().isoformat(timespec="seconds"))} by sweep report.</p>'
    )
    parts.append(_html_summary(trials, objectives, constraints, summary))
    if heldout is not None:
        parts.append("<h2>Held-out scores</h2>")
        parts.append(
            '<p class="muted">Search scores steered the search; held-out scores come from the report tasks, never seen by it.</p>'
        )
        parts.append(_html_heldout(trials, objectives, heldout, front, balanced_number))
    if calibration is not None:
        from sweep.run.calibrate import html

        parts.append(html(calibration, esc))

    figures: list[tuple[str, str, Any]] = []  # (section title, div id, figure or None)
    if len(trials):
        figures.append(
            (
                "Pareto front",
                "fig-pareto",
                pareto_figure(trials, objectives, eligible=eligible, front=front, balanced=balanced_number),
            )
        )
    parts.append("<h2>Pareto front</h2>")
    parts.append(_fig_html(figures[0][2], "fig-pareto") if figures else '<p class="muted">No trials yet.</p>')
    parts.append(
        '<p class="muted">Hover a point for its alpha, beta and every metric. Red: Pareto front; star: balanced point; blue: dominated; grey x: infeasible.</p>'
    )

    parts.append("<h2>Objectives over alpha and beta</h2>")
    parts.append(
        '<p class="muted">Each trial at its (alpha, beta), coloured by one objective; yellow is better, Pareto-front points are ringed red.</p>'
    )
    maps = (
        [
            _fig_html(objective_map_figure(trials, o, front=front), f"fig-map-{k}", responsive=False)
            for k, o in enumerate(objectives)
        ]
        if len(trials)
        else []
    )
    parts.append(
        '<div class="maps">' + "".join(f"<div>{m}</div>" for m in maps) + "</div>"
        if maps
        else '<p class="muted">No trials yet.</p>'
    )

    parts.append("<h2>Probe curves: front against the extremes</h2>")
    parts.append(
        '<p class="muted">Solid: Pareto-front trials. Dashed grey: the completed trials with the smallest and largest alpha.</p>'
    )
    any_curve = False
    for key, title, y_title, div in (
        (LENGTH_CURVE, "Mean response length per probe step", "tokens", "fig-length"),
        (REWARD_CURVE, "Mean reward per probe step", "reward", "fig-reward"),
    ):
        fig = curve_figure(trials, key=key, title=title, y_title=y_title, front=front) if len(trials) else None
        if fig is not None:
            parts.append(_fig_html(fig, div))
            any_curve = True
    if not any_curve:
        parts.append(f'<p class="muted">No probe curves recorded ({esc(LENGTH_CURVE)}, {esc(REWARD_CURVE)}).</p>')

    parts.append("<h2>Hypervolume history</h2>")
    if history is not None and len(history):
        parts.append(_fig_html(hypervolume_figure(history, reference=summary.reference), "fig-hypervolume"))
    else:
        parts.append('<p class="muted">No completed trial with every objective: no hypervolume yet.</p>')

    parts.append(f"<h2>Trials ({len(trials)})</h2>")
    parts.append(_html_trials_table(trials, objectives, front, balanced_number))

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Sweep report: {esc(spec_name)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def _fig_html(fig, div_id: str, *, responsive: bool = True) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG | {"responsive": responsive}
    )


def _html_summary(
    trials: pd.DataFrame, objectives: Sequence[Objective], constraints: Sequence[Any], summary: ParetoSummary
) -> str:
    counts = _counts(trials)
    lines = [
        '<div class="box" id="summary">',
        f"<p><b>Trials:</b> {_trial_counts_text(counts)}; {summary.n_feasible} feasible; "
        f"{len(summary.front_numbers)} on the Pareto front.</p>",
        "<p><b>Objectives:</b> " + "; ".join(f"{esc(o.direction)} {esc(o.metric)}" for o in objectives) + "</p>",
    ]
    if constraints:
        lines.append("<p><b>Constraints:</b> " + "; ".join(_constraint_text(c) for c in constraints) + "</p>")
    if summary.hypervolume is not None and summary.reference is not None:  # a volume always has its reference
        ref = ", ".join(fmt(v) for v in summary.reference)
        lines.append(
            f"<p><b>Hypervolume:</b> {fmt(summary.hypervolume)} (reference point {esc(ref)}, in objective order)</p>"
        )
    missing = _missing_objectives(trials, objectives)
    if missing and len(trials):
        lines.append("<p><b>No values recorded for:</b> " + ", ".join(esc(m) for m in missing) + "</p>")
    point = summary.balanced
    if point is None:
        lines.append("<p><b>Balanced point:</b> none (no completed, feasible trial yet).</p>")
    else:
        lines.append(
            f"<p><b>Balanced point: trial {point.number}</b> (rule {_rule_text(summary, esc)}; score {fmt(point.score)})</p>"
        )
        cells = [(f"{esc(k)}", fmt(v)) for k, v in point.params.items()]
        cells += [
            (f"{esc(k)}", fmt(v))
            for k, v in point.metrics.items()
            if v is not None or k in {o.metric for o in objectives}
        ]
        lines.append(
            '<table id="balanced"><tr>'
            + "".join(f'<th class="text">{k}</th>' for k, _ in cells)
            + "</tr><tr>"
            + "".join(f"<td>{v}</td>" for _, v in cells)
            + "</tr></table>"
        )
    lines.append("</div>")
    return "\n".join(lines)


def _constraint_text(constraint: Any, escape=esc) -> str:
    """`metric >= value` with the (user-provided) metric name escaped by `escape`."""
    return f"{escape(constraint.metric)} {escape(constraint.op)} {fmt(constraint.value)}"


def _html_heldout(
    trials: pd.DataFrame,
    objectives: Sequence[Objective],
    heldout: pd.DataFrame,
    front: np.ndarray,
    balanced: int | None,
) -> str:
    held_cols = [c for c in heldout.columns if c != "number"]
    search_cols = [o.metric for o in objectives if o.metric in trials]
    by_number = trials.set_index("number")
    front_numbers = set(trials["number"][front].tolist())
    head = (
        '<div class="scroll"><table id="heldout"><tr><th rowspan="2">trial</th><th rowspan="2">alpha</th><th rowspan="2">beta</th>'
        f'<th colspan="{len(search_cols)}">search</th><th colspan="{len(held_cols)}">held-out</th></tr><tr>'
        + "".join(f'<th class="text">{esc(c)}</th>' for c in search_cols + held_cols)
        + "</tr>"
    )
    rows = []
    for _, h in heldout.sort_values("number").iterrows():
        number = int(h["number"])
        t = by_number.loc[number] if number in by_number.index else None
        cls = "balanced" if number == balanced else "front" if number in front_numbers else ""
        cells = [
            str(number),
            fmt(t.get("params/alpha") if t is not None else None),
            fmt(t.get("params/beta") if t is not None else None),
        ]
        cells += [fmt(t.get(c)) if t is not None else "–" for c in search_cols]
        cells += [fmt(h[c]) for c in held_cols]
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return head + "".join(rows) + "</table></div>"


def _html_trials_table(
    trials: pd.DataFrame, objectives: Sequence[Objective], front: np.ndarray, balanced: int | None
) -> str:
    if not len(trials):
        return '<p class="muted">No trials yet.</p>'
    params = table.param_columns(trials.columns)
    metrics = _ordered_metrics(trials, objectives)
    extra = [c for c in ("constraint_violation", "duration_s", "worker") if c in trials]
    head = (
        '<div class="scroll"><table id="trials"><tr><th>trial</th><th class="text">state</th><th>feasible</th><th>front</th>'
        + "".join(f'<th class="text">{esc(c.split("/", 1)[1])}</th>' for c in params)
        + "".join(f'<th class="text">{esc(c)}</th>' for c in metrics)
        + "".join(f'<th class="text">{esc(c)}</th>' for c in extra)
        + '<th class="text">error</th></tr>'
    )
    rows = []
    interrupted = _interrupted_mask(trials).to_numpy()
    for pos, (_, row) in enumerate(trials.iterrows()):
        number = int(row["number"])
        cls = "balanced" if number == balanced else "front" if front[pos] else ""
        feasible = row.get("feasible")
        state = "INTERRUPTED" if interrupted[pos] else row.get("state", "")
        cells = [f"<td>{number}</td>", f'<td class="text">{esc(state)}</td>']
        cells.append(
            f"<td>{fmt(bool(feasible)) if feasible is not None and not (isinstance(feasible, float) and np.isnan(feasible)) else '–'}</td>"
        )
        cells.append(f"<td>{'★' if number == balanced else '●' if front[pos] else ''}</td>")
        cells += [f"<td>{fmt(row[c])}</td>" for c in params + metrics]
        cells += [f"<td>{esc(row[c]) if c == 'worker' and row[c] is not None else fmt(row[c])}</td>" for c in extra]
        error = row.get("error")
        cells.append(f'<td class="text error">{esc(error) if isinstance(error, str) and error else ""}</td>')
        rows.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return head + "\n".join(rows) + "</table></div>"


# ---------------------------------------------------------------- Markdown

_MD_SPECIAL = set("\\`*_[]<>|~&$")


def md_escape(text: Any) -> str:
    """Escape a user string for Markdown text and table cells: one line, and every
    character that could start markup mid-line backslash-escaped: emphasis, code,
    links, HTML tags and entities, strikethrough, math, and the table pipe (GFM tables
    need `\\|`). CommonMark allows a backslash before any ASCII punctuation. The
    report never puts a user string at the start of a line, so line-start markers
    (#, -, +, 1.) need no escape."""
    flat = " ".join(str(text).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in flat)


def render_markdown(
    trials: pd.DataFrame,
    *,
    objectives: Sequence[Objective],
    constraints: Sequence[Any],
    spec_name: str,
    summary: ParetoSummary,
    front: np.ndarray,
    heldout: pd.DataFrame | None,
    calibration: Any = None,
) -> str:
    """A summary and the front as a table, for pasting into a pull request or a chat."""
    counts = _counts(trials)
    out = [f"# Sweep report: {md_escape(spec_name)}", ""]
    out.append(
        f"- **Trials:** {_trial_counts_text(counts)}; {summary.n_feasible} feasible; "
        f"{len(summary.front_numbers)} on the Pareto front"
    )
    out.append("- **Objectives:** " + "; ".join(f"{o.direction} {md_escape(o.metric)}" for o in objectives))
    if constraints:
        out.append("- **Constraints:** " + "; ".join(_constraint_text(c, md_escape) for c in constraints))
    if summary.hypervolume is not None and summary.reference is not None:  # a volume always has its reference
        out.append(
            f"- **Hypervolume:** {fmt(summary.hypervolume)} (reference point {', '.join(fmt(v) for v in summary.reference)}, in objective order)"
        )
    point = summary.balanced
    if point is None:
        out.append("- **Balanced point:** none (no completed, feasible trial yet)")
    else:
        params = ", ".join(f"{md_escape(k)} = {fmt(v)}" for k, v in point.params.items())
        out.append(f"- **Balanced point:** trial {point.number} ({params}), rule {_rule_text(summary, md_escape)}")
        for o in objectives:
            out.append(f"  - {md_escape(o.metric)}: {fmt(point.metrics.get(o.metric))}")
    out.append("")

    out.append(f"## Pareto front ({len(summary.front_numbers)} trials)")
    out.append("")
    if summary.front_numbers:
        param_cols = table.param_columns(trials.columns)
        cols = [o.metric for o in objectives]
        header = (
            ["trial"]
            + [md_escape(c.split("/", 1)[1]) for c in param_cols]
            + [md_escape(c) for c in cols]
            + ["balanced"]
        )
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---:" for _ in header) + "|")
        balanced = point.number if point else None
        for _, row in trials[front].sort_values("number").iterrows():
            number = int(row["number"])
            cells = (
                [str(number)]
                + [fmt(row[c]) for c in param_cols]
                + [fmt(row.get(c)) for c in cols]
                + ["yes" if number == balanced else ""]
            )
            out.append("| " + " | ".join(cells) + " |")
    else:
        out.append("No completed, feasible trial yet.")
    out.append("")

    if heldout is not None:
        held_cols = [c for c in heldout.columns if c != "number"]
        search_cols = [o.metric for o in objectives]
        by_number = trials.set_index("number")
        out.append("## Held-out scores")
        out.append("")
        header = (
            ["trial"]
            + [f"search: {md_escape(c)}" for c in search_cols]
            + [f"held-out: {md_escape(c)}" for c in held_cols]
        )
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---:" for _ in header) + "|")
        for _, h in heldout.sort_values("number").iterrows():
            number = int(h["number"])
            t = by_number.loc[number] if number in by_number.index else None
            cells = (
                [str(number)]
                + [fmt(t.get(c)) if t is not None else "–" for c in search_cols]
                + [fmt(h[c]) for c in held_cols]
            )
            out.append("| " + " | ".join(cells) + " |")
        out.append("")

    if calibration is not None:
        from sweep.run.calibrate import markdown

        out += [*markdown(calibration, md_escape), ""]

    failed = (
        trials[(trials["state"].astype(str).str.upper() == "FAIL") & ~_interrupted_mask(trials)]
        if "state" in trials
        else trials.iloc[:0]
    )
    if len(failed):
        out.append(f"## Failed trials ({len(failed)})")
        out.append("")
        out.append("| trial | error |")
        out.append("|---:|---|")
        for _, row in failed.iterrows():
            error = row.get("error")
            out.append(f"| {int(row['number'])} | {md_escape(error if isinstance(error, str) else '') or '–'} |")
        out.append("")
    return "\n".join(out)
