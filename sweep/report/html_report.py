"""report.html: self-contained and interactive (plotly.js inlined once, in <head>, about
4.8 MB, so it opens with no network). Every user-provided string is HTML-escaped."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep.report.facts import (
    constraint_text,
    interrupted_mask,
    missing_objectives,
    ordered_metrics,
    rule_text,
    state_counts,
    trial_counts_text,
)
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
from sweep.report.front import Objective
from sweep.report.summary import ParetoSummary
from sweep.study import table

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
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
    probe: str | None = None,
) -> str:
    """The whole report.html as a string (plotly.js inlined once, in <head>)."""
    from plotly.offline import get_plotlyjs

    balanced_number = summary.balanced.number if summary.balanced else None
    parts: list[str] = []
    parts.append(f"<h1>Sweep report: {esc(spec_name)}</h1>")
    parts.append(
        f'<p class="muted">Generated {esc(_dt.datetime.now().isoformat(timespec="seconds"))} by sweep report.</p>'
    )
    parts.append(_html_summary(trials, objectives, constraints, summary, probe))
    if heldout is not None:
        parts.append("<h2>Held-out scores</h2>")
        parts.append(
            '<p class="muted">Search scores steered the search; held-out scores come from the report tasks, never seen by it.</p>'
        )
        parts.append(_html_heldout(trials, objectives, heldout, front, balanced_number))
    if calibration is not None:
        from sweep.report.calibration import html

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
    trials: pd.DataFrame,
    objectives: Sequence[Objective],
    constraints: Sequence[Any],
    summary: ParetoSummary,
    probe: str | None = None,
) -> str:
    counts = state_counts(trials)
    lines = [
        '<div class="box" id="summary">',
        f"<p><b>Trials:</b> {trial_counts_text(counts)}; {summary.n_feasible} feasible; "
        f"{len(summary.front_numbers)} on the Pareto front.</p>",
        "<p><b>Objectives:</b> " + "; ".join(f"{esc(o.direction)} {esc(o.metric)}" for o in objectives) + "</p>",
    ]
    if constraints:
        lines.append("<p><b>Constraints:</b> " + "; ".join(constraint_text(c) for c in constraints) + "</p>")
    if probe:
        lines.append(f"<p><b>Probe:</b> {esc(probe)}</p>")
    if summary.hypervolume is not None and summary.reference is not None:  # a volume always has its reference
        ref = ", ".join(fmt(v) for v in summary.reference)
        lines.append(
            f"<p><b>Hypervolume:</b> {fmt(summary.hypervolume)} (reference point {esc(ref)}, in objective order)</p>"
        )
    missing = missing_objectives(trials, objectives)
    if missing and len(trials):
        lines.append("<p><b>No values recorded for:</b> " + ", ".join(esc(m) for m in missing) + "</p>")
    point = summary.balanced
    if point is None:
        lines.append("<p><b>Balanced point:</b> none (no completed, feasible trial yet).</p>")
    else:
        lines.append(
            f"<p><b>Balanced point: trial {point.number}</b> (rule {rule_text(summary, esc)}; score {fmt(point.score)})</p>"
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
    metrics = ordered_metrics(trials, objectives)
    extra = [c for c in ("constraint_violation", "duration_s", "worker") if c in trials]
    head = (
        '<div class="scroll"><table id="trials"><tr><th>trial</th><th class="text">state</th><th>feasible</th><th>front</th>'
        + "".join(f'<th class="text">{esc(c.split("/", 1)[1])}</th>' for c in params)
        + "".join(f'<th class="text">{esc(c)}</th>' for c in metrics)
        + "".join(f'<th class="text">{esc(c)}</th>' for c in extra)
        + '<th class="text">error</th></tr>'
    )
    rows = []
    interrupted = interrupted_mask(trials).to_numpy()
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
