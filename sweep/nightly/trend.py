"""The trend over all nights of a `sweep nightly` series: `<results_dir>/<series>-trend.md`,
`.html` and `.json`.

One row per night: trials complete, the front's hypervolume, the balanced point and its
objectives, each with its 99% noise band, and the night's verdict. All hypervolumes use
one reference point (the spec's `report.reference`, else the default rule over every
night's complete trials), so they compare; a new night can move that default, and with
it every night's value: set `report.reference` to pin it. The hypervolume's band comes
from each front point's noise (Gaussian draws, sweep.report.regression.hypervolume_noise); an
objective's band is one measurement's (lm-eval: binomial at `limit`; probe: the
recorded band scaled to 99%).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep.config import SweepSpec
from sweep.report.regression import Z99, hypervolume_noise, value_sd, whole_limit


def series_name(template: str) -> str:
    """`nightly-{date}` -> `nightly`: the trend files' stem (`nightly-trend.md`)."""
    stem = template.replace("{date}", "").strip("-_.")
    return stem or "nightly"


def trend_rows(results_dir: Path, template: str, spec: SweepSpec) -> tuple[list[dict[str, Any]], list[float] | None]:
    """(one dict per night, oldest first; the shared reference point)."""
    from sweep.nightly.series import NIGHT_FILE, find_nights
    from sweep.report.balanced import balanced_point
    from sweep.report.front import as_objectives, default_reference, eligible_mask, pareto_front
    from sweep.study.durable import load_study_dir

    objectives = as_objectives(spec.objectives)
    loaded: list[tuple[Any, SweepSpec | None, pd.DataFrame | None]] = []
    for night in find_nights(results_dir, template):
        try:
            loaded.append((night, *load_study_dir(night.study_dir)))
        except Exception:  # noqa: BLE001 - a folder without a finished table: shown as such
            loaded.append((night, None, None))
    tables = [t for _, s, t in loaded if t is not None and s is not None and s.objective_names == spec.objective_names]
    reference = spec.report.reference or (
        default_reference(pd.concat(tables, ignore_index=True), objectives) if tables else None
    )
    rows = []
    for night, night_spec, trials in loaded:
        record = _read(night.study_dir / NIGHT_FILE)
        row: dict[str, Any] = {
            "date": night.date.isoformat(),
            "study_dir": str(night.study_dir),
            "verdict": record.get("verdict", "–"),
            "regressions": [r.get("text", "") for r in record.get("regressions", [])],
        }
        if trials is None or night_spec is None or night_spec.objective_names != spec.objective_names:
            rows.append(row | {"note": "no trials table, or other objectives"})
            continue
        n_docs = whole_limit(night_spec)
        front = pareto_front(trials, objectives, night_spec.constraints)
        complete = int((trials["state"].astype(str).str.upper() == "COMPLETE").sum()) if "state" in trials else 0
        row["complete"] = complete
        if reference is not None and len(front):
            from sweep.report.front import front_hypervolume, objective_values

            values = objective_values(front, objectives)
            sds = np.array(
                [
                    [value_sd(o.metric, v, r, n_docs) for o, v in zip(objectives, vals, strict=True)]
                    for vals, (_, r) in zip(values, front.iterrows(), strict=True)
                ]
            )
            row["hypervolume"] = front_hypervolume(trials, objectives, night_spec.constraints, reference=reference)
            row["hypervolume_noise"] = hypervolume_noise(
                values, sds, directions=[o.direction for o in objectives], reference=reference
            )
        point = balanced_point(
            front,
            objectives,
            rule=night_spec.report.balanced_rule,
            weights=night_spec.report.weights,
            trials=trials[eligible_mask(trials, objectives, night_spec.constraints)],
        )
        if point is not None:
            brow = front[front["number"] == point.number].iloc[0]
            row["balanced"] = {"number": point.number, "params": point.params}
            row["objectives"] = {
                o.metric: {
                    "value": point.metrics.get(o.metric),
                    "noise": Z99 * value_sd(o.metric, point.metrics.get(o.metric) or 0.0, brow, n_docs),
                }
                for o in objectives
            }
        rows.append(row)
    return rows, (list(reference) if reference is not None else None)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_trend(results_dir: Path, template: str, spec: SweepSpec) -> Path:
    """Write the series' trend (md, html, json) into results_dir; returns the html path."""
    rows, reference = trend_rows(results_dir, template, spec)
    stem = results_dir / f"{series_name(template)}-trend"
    metrics = spec.objective_names
    stem.with_suffix(".json").write_text(json.dumps({"reference": reference, "nights": rows}, indent=2, default=str))
    stem.with_suffix(".md").write_text(render_markdown(rows, metrics, reference, series_name(template)))
    html = stem.with_suffix(".html")
    html.write_text(render_html(rows, metrics, reference, series_name(template)))
    return html


def _ref_text(reference: list[float] | None) -> str:
    return "none (no complete trial)" if reference is None else "(" + ", ".join(f"{v:.4g}" for v in reference) + ")"


def _pm(value: Any, noise: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g} ± {noise:.2g}" if noise else f"{value:.4g}"


def _cells(row: dict[str, Any], metrics: list[str]) -> list[str]:
    params = row.get("balanced", {}).get("params", {})
    point = "(" + ", ".join(f"{v:.3f}" for v in params.values()) + ")" if params else "–"
    objectives = row.get("objectives", {})
    verdict = row["verdict"] + (f": {len(row['regressions'])} regression(s)" if row["regressions"] else "")
    return [
        row["date"],
        str(row.get("complete", "–")),
        _pm(row.get("hypervolume"), row.get("hypervolume_noise")),
        point,
        *[_pm(objectives.get(m, {}).get("value"), objectives.get(m, {}).get("noise")) for m in metrics],
        verdict,
    ]


def render_markdown(rows: list[dict[str, Any]], metrics: list[str], reference, series: str) -> str:
    from sweep.report.markdown_report import md_escape

    header = ["night", "complete", "hypervolume", "balanced (alpha, beta)", *metrics, "verdict"]
    reference = _ref_text(reference)
    out = [
        f"# Nightly trend: {md_escape(series)}",
        "",
        f"{len(rows)} night(s). Bands are 99% (lm-eval: binomial at `limit`; probe: the recorded band). "
        f"Hypervolume reference point {reference} (objective order), shared by every night.",
        "",
        "| " + " | ".join(md_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(md_escape(c) for c in _cells(r, metrics)) + " |" for r in rows]
    named = [(r["date"], text) for r in rows for text in r["regressions"]]
    if named:
        out += ["", "## Regressions", ""] + [f"- {d}: {md_escape(t)}" for d, t in named]
    return "\n".join(out) + "\n"


def render_html(rows: list[dict[str, Any]], metrics: list[str], reference, series: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from sweep.report.figures import esc

    header = ["night", "complete", "hypervolume", "balanced (alpha, beta)", *metrics, "verdict"]
    reference = _ref_text(reference)
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    for r in rows:
        cls = ' class="bad"' if r["verdict"] == "regression" else ""
        table += f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r, metrics)) + "</tr>"
    table += "</table>"
    dates = [r["date"] for r in rows]
    fig = make_subplots(rows=1 + len(metrics), cols=1, shared_xaxes=True, subplot_titles=["hypervolume", *metrics])
    series_values = [("hypervolume", [r.get("hypervolume") for r in rows], [r.get("hypervolume_noise") for r in rows])]
    for m in metrics:
        objs = [r.get("objectives", {}).get(m, {}) for r in rows]
        series_values.append((m, [o.get("value") for o in objs], [o.get("noise") for o in objs]))
    for k, (name, values, noise) in enumerate(series_values, start=1):
        fig.add_trace(
            go.Scatter(
                x=dates,
                y=values,
                name=name,
                mode="lines+markers",
                error_y={"type": "data", "array": [n or 0 for n in noise], "visible": True},
            ),
            row=k,
            col=1,
        )
    fig.update_layout(height=220 * len(series_values), showlegend=False, margin={"t": 40})
    plot = fig.to_html(include_plotlyjs=True, full_html=False, config={"displaylogo": False})
    regressions = "".join(f"<li>{esc(r['date'])}: {esc(t)}</li>" for r in rows for t in r["regressions"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Nightly trend: {esc(series)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1280px;padding:0 16px}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px}"
        "tr.bad td{background:#fde2e2}</style></head><body>"
        f"<h1>Nightly trend: {esc(series)}</h1><p>{len(rows)} night(s). Bands are 99%. Hypervolume reference point "
        f"{esc(reference)} (objective order), shared by every night.</p>{table}"
        + (f"<h2>Regressions</h2><ul>{regressions}</ul>" if regressions else "")
        + f"{plot}</body></html>"
    )
