"""Plotly figures for the report. Each function returns a `plotly.graph_objects.Figure`.

Only SVG trace types (`scatter`), never WebGL ones (`scattergl`, `splom`): the report
must render on machines and headless browsers without a GPU. Every user-provided
string (metric and param names, study name) is HTML-escaped before it reaches plotly,
which renders a subset of HTML in titles and hover labels and decodes entities back
to the literal text.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from evals.metric_names import NOISE_SUFFIX
from sweep.report.front import Objective, objective_values
from sweep.study.table import metric_columns, param_columns

LENGTH_CURVE = "response_length/mean"  # tokens per response, per probe step (verl's name)
REWARD_CURVE = "critic/score/mean"  # raw reward per probe step, before the KL penalty
# Per-prompt normalized curves (evals/probe/baseline.py) and their per-step noise band,
# drawn instead of the raw ones when a trial recorded them.
NORMALIZED_CURVES = {LENGTH_CURVE: "response_length/normalized", REWARD_CURVE: "critic/score/normalized"}


def noise_values(trials: pd.DataFrame, objective: Objective) -> np.ndarray | None:
    """The half-width of each trial's noise band for an objective (`<metric>_noise`
    column), NaN where unknown; None when the table has no such column."""
    column = objective.metric + NOISE_SUFFIX
    if column not in trials:
        return None
    return pd.to_numeric(trials[column], errors="coerce").to_numpy(dtype=float)


def curves_of(row: pd.Series) -> dict[str, list[float]]:
    """The row's `curves` JSON as {name: [per-step values]}; {} when missing or unreadable."""
    raw = row.get("curves") if hasattr(row, "get") else None
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return {}
    if isinstance(raw, Mapping):
        return {str(k): list(v) for k, v in raw.items()}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return {str(k): list(v) for k, v in data.items()} if isinstance(data, dict) else {}


FRONT_COLOUR = "#d62728"
BALANCED_COLOUR = "#ffbf00"
DOMINATED_COLOUR = "#1f77b4"
INFEASIBLE_COLOUR = "#9a9a9a"
EXTREME_COLOUR = "#444444"
LAYOUT = dict(template="plotly_white", height=440, margin=dict(l=70, r=30, t=60, b=60), hoverlabel=dict(align="left"))


def esc(text: Any) -> str:
    """Escape a user-provided string for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def label(text: Any) -> str:
    """Escape a user-provided string for plotly's HTML-like labels (titles, hover text).

    Plotly turns a few tags (<b>, <br>, <a href>, <span style>) into SVG and decodes
    &lt; &gt; &amp; back to text, but not &quot;: escaping the angle brackets and the
    ampersand leaves no tag to interpret, and the text shows as written."""
    return html.escape(str(text), quote=False)


def fmt(value: Any) -> str:
    """A number for people: 4 significant digits; '–' for missing."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    return f"{number:.4g}"


def hover_text(row: pd.Series, columns: Sequence[str], note: str = "") -> str:
    """Trial number, every param (alpha, beta first) and every metric, one per line."""
    lines = [f"<b>trial {int(row['number'])}</b>" + (f" ({label(note)})" if note else "")]
    lines += [f"{label(c.split('/', 1)[1])} = {fmt(row[c])}" for c in param_columns(columns)]
    lines += [f"{label(c)} = {fmt(row[c])}" for c in metric_columns(columns) if _numeric(row[c])]
    return "<br>".join(lines)


def _numeric(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _groups(trials: pd.DataFrame, values: np.ndarray, eligible: np.ndarray, front: np.ndarray, balanced: int | None):
    """(name, row mask, marker) for the scatter groups, drawn in this order."""
    complete = (
        trials["state"].astype(str).str.upper().eq("COMPLETE").to_numpy()
        if "state" in trials
        else np.ones(len(trials), bool)
    )
    finite = np.all(np.isfinite(values), axis=1)
    infeasible = complete & finite & ~eligible
    dominated = eligible & ~front
    is_balanced = trials["number"].to_numpy() == balanced if balanced is not None else np.zeros(len(trials), bool)
    return [
        ("infeasible", infeasible, dict(color=INFEASIBLE_COLOUR, symbol="x", size=8)),
        ("dominated", dominated, dict(color=DOMINATED_COLOUR, size=8, opacity=0.7)),
        ("Pareto front", front, dict(color=FRONT_COLOUR, size=11, line=dict(color="black", width=1))),
        (
            "balanced point",
            is_balanced,
            dict(color=BALANCED_COLOUR, symbol="star", size=20, line=dict(color="black", width=1.5)),
        ),
    ]


def _axis_title(objective: Objective) -> str:
    arrow = "↑" if objective.direction == "maximize" else "↓"
    return f"{label(objective.metric)} {arrow}"


def pareto_figure(
    trials: pd.DataFrame,
    objectives: Sequence[Objective],
    *,
    eligible: np.ndarray,
    front: np.ndarray,
    balanced: int | None,
):
    """The front against the other trials. 1 objective: value by trial number; 2: one
    scatter; 3 or more: a grid with one scatter per pair of objectives."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    values = objective_values(trials, objectives)
    texts = np.array(
        [
            hover_text(row, trials.columns, "" if ok else "infeasible")
            for (_, row), ok in zip(trials.iterrows(), eligible, strict=True)
        ],
        dtype=object,
    )
    groups = _groups(trials, values, eligible, front, balanced)
    noise = [noise_values(trials, o) for o in objectives]

    def bars(k: int, mask: np.ndarray):
        """Error bars of objective k for the rows in mask: its noise band, where recorded."""
        band = noise[k]
        if band is None:
            return None
        widths = np.nan_to_num(band[mask], nan=0.0)
        return dict(type="data", array=widths.tolist(), visible=True, thickness=1, width=3, color="rgba(0,0,0,0.35)")

    if len(objectives) == 1:
        numbers = trials["number"].to_numpy()
        fig = go.Figure()
        for name, mask, marker in groups:
            fig.add_trace(
                go.Scatter(
                    x=numbers[mask],
                    y=values[mask, 0],
                    mode="markers",
                    name=name,
                    marker=marker,
                    text=texts[mask],
                    hovertemplate="%{text}<extra></extra>",
                    error_y=bars(0, mask),
                )
            )
        fig.update_layout(
            title="Objective by trial", xaxis_title="trial number", yaxis_title=_axis_title(objectives[0]), **LAYOUT
        )
        return fig

    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.09, vertical_spacing=0.16)
    for k, (i, j) in enumerate(pairs):
        r, c = k // cols + 1, k % cols + 1
        for name, mask, marker in groups:
            fig.add_trace(
                go.Scatter(
                    x=values[mask, i],
                    y=values[mask, j],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=k == 0,
                    marker=marker,
                    text=texts[mask],
                    hovertemplate="%{text}<extra></extra>",
                    error_x=bars(i, mask),
                    error_y=bars(j, mask),
                ),
                row=r,
                col=c,
            )
        if len(objectives) == 2 and front.any():  # the staircase through the front, by the first objective
            order = np.argsort(values[front, i])
            fig.add_trace(
                go.Scatter(
                    x=values[front, i][order],
                    y=values[front, j][order],
                    mode="lines",
                    line=dict(color=FRONT_COLOUR, dash="dot"),
                    hoverinfo="skip",
                    showlegend=False,
                ),
                row=r,
                col=c,
            )
        fig.update_xaxes(title_text=_axis_title(objectives[i]), row=r, col=c)
        fig.update_yaxes(title_text=_axis_title(objectives[j]), row=r, col=c)
    layout = dict(LAYOUT)
    layout["height"] = 440 * rows
    fig.update_layout(title="Pareto front" + (" (each pair of objectives)" if len(pairs) > 1 else ""), **layout)
    return fig


def objective_map_figure(trials: pd.DataFrame, objective: Objective, *, front: np.ndarray):
    """Trials at (alpha, beta) coloured by one objective; brighter is better, front ringed."""
    import plotly.graph_objects as go

    values = objective_values(trials, [objective])[:, 0]
    alpha = pd.to_numeric(trials.get("params/alpha", pd.Series(np.nan, index=trials.index)), errors="coerce").to_numpy(
        dtype=float
    )
    beta = pd.to_numeric(trials.get("params/beta", pd.Series(np.nan, index=trials.index)), errors="coerce").to_numpy(
        dtype=float
    )
    shown = np.isfinite(values) & np.isfinite(alpha) & np.isfinite(beta)
    texts = np.array([hover_text(row, trials.columns) for _, row in trials.iterrows()], dtype=object)
    scale = "Viridis" if objective.direction == "maximize" else "Viridis_r"
    fig = go.Figure(
        go.Scatter(
            x=alpha[shown],
            y=beta[shown],
            mode="markers",
            text=texts[shown],
            hovertemplate="%{text}<extra></extra>",
            showlegend=False,
            marker=dict(
                color=values[shown],
                colorscale=scale,
                size=np.where(front[shown], 16, 11),
                showscale=True,
                colorbar=dict(title=dict(text="value", side="right"), thickness=12),
                line=dict(
                    color=np.where(front[shown], FRONT_COLOUR, "white").tolist(),
                    width=np.where(front[shown], 3, 1).tolist(),
                ),
            ),
        )
    )
    layout = dict(LAYOUT)
    # Fixed size: maps sit side by side, and a responsive plot measured before the row
    # is laid out comes out clipped.
    layout.update(width=600, height=420, margin=dict(l=60, r=20, t=70, b=50), autosize=False)
    fig.update_layout(
        title=dict(text=_axis_title(objective), font=dict(size=13)),
        xaxis_title="alpha (instruct share)",
        yaxis_title="beta (stage-1 share)",
        **layout,
    )
    return fig


def curve_traces(trials: pd.DataFrame, *, front: np.ndarray) -> list[tuple[int, str, bool]]:
    """(row position, label, is_front) of the trials whose probe curves are drawn: the
    front points, and the COMPLETE trials with the smallest and largest alpha."""
    chosen: dict[int, tuple[str, bool]] = {}
    for front_pos in np.flatnonzero(front):
        chosen[int(front_pos)] = (f"front: trial {int(trials['number'].iloc[front_pos])}", True)
    if "params/alpha" in trials:
        complete = (
            trials["state"].astype(str).str.upper().eq("COMPLETE")
            if "state" in trials
            else pd.Series(True, index=trials.index)
        )
        alpha = pd.to_numeric(trials["params/alpha"], errors="coerce").where(complete.to_numpy())
        if alpha.notna().any():
            for which, pos in (
                ("min", int(np.nanargmin(alpha.to_numpy()))),
                ("max", int(np.nanargmax(alpha.to_numpy()))),
            ):
                number = int(trials["number"].iloc[pos])
                name = f"{which} alpha ({fmt(alpha.iloc[pos])}): trial {number}"
                if pos in chosen:
                    name = f"{chosen[pos][0]}, {which} alpha"
                chosen[pos] = (name, chosen.get(pos, ("", False))[1])
    return [(pos, label, is_front) for pos, (label, is_front) in sorted(chosen.items())]


def curve_figure(trials: pd.DataFrame, *, key: str, title: str, y_title: str, front: np.ndarray):
    """One probe curve (`key` in the trials' `curves` JSON) per step for the front and the extremes.

    A trial that recorded the per-prompt normalized curve (NORMALIZED_CURVES[key]) is drawn
    with it, with error bars from its per-step noise band (`<normalized key>/noise`).
    Returns None when no chosen trial recorded that curve."""
    import plotly.graph_objects as go

    fig = go.Figure()
    normalized_any = False
    for pos, name, is_front in curve_traces(trials, front=front):
        row = trials.iloc[pos]
        curves = curves_of(row)
        normalized = NORMALIZED_CURVES.get(key)
        shown = normalized if normalized is not None and curves.get(normalized) else key
        ys = [float(v) if v is not None else None for v in curves.get(shown, [])]
        if not ys:
            continue
        normalized_any |= shown != key
        band = [float(v) if v is not None else 0.0 for v in curves.get(f"{shown}/noise", [])]
        error_y = dict(type="data", array=band, visible=True, thickness=1, width=2) if len(band) == len(ys) else None
        fig.add_trace(
            go.Scatter(
                x=list(range(len(ys))),
                y=ys,
                mode="lines+markers",
                name=name,
                error_y=error_y,
                line=dict(
                    dash="solid" if is_front else "dash",
                    width=2 if is_front else 1.5,
                    **({} if is_front else {"color": EXTREME_COLOUR}),
                ),
                marker=dict(size=4),
                hovertemplate=f"trial {int(row['number'])}<br>step %{{x}}<br>{label(key)} = %{{y:.4g}}<extra></extra>",
            )
        )
    if not fig.data:
        return None
    if normalized_any:
        title += " (normalized per prompt, with the noise band)"
    fig.update_layout(title=title, xaxis_title="probe step", yaxis_title=y_title, **LAYOUT)
    return fig


def hypervolume_figure(history: pd.DataFrame, *, reference: Sequence[float] | None):
    """Hypervolume of the front so far, by trial number (a step line)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=history["number"],
            y=history["hypervolume"],
            mode="lines+markers",
            line_shape="hv",
            name="hypervolume",
            hovertemplate="after trial %{x}<br>hypervolume %{y:.4g}<extra></extra>",
        )
    )
    ref = ", ".join(fmt(v) for v in reference) if reference is not None else "none"
    fig.update_layout(
        title=f"Hypervolume history (reference point {label(ref)})",
        xaxis_title="trial number",
        yaxis_title="hypervolume",
        **LAYOUT,
    )
    return fig
