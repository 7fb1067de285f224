"""report.md: a summary and the front as tables, for a pull request or a chat. Every
user-provided string is Markdown-escaped (`md_escape`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep.report.facts import constraint_text, interrupted_mask, rule_text, state_counts, trial_counts_text
from sweep.report.figures import fmt
from sweep.report.front import Objective
from sweep.report.summary import ParetoSummary
from sweep.study import table

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
    probe: str | None = None,
) -> str:
    """A summary and the front as a table, for pasting into a pull request or a chat."""
    counts = state_counts(trials)
    out = [f"# Sweep report: {md_escape(spec_name)}", ""]
    out.append(
        f"- **Trials:** {trial_counts_text(counts)}; {summary.n_feasible} feasible; "
        f"{len(summary.front_numbers)} on the Pareto front"
    )
    out.append("- **Objectives:** " + "; ".join(f"{o.direction} {md_escape(o.metric)}" for o in objectives))
    if constraints:
        out.append("- **Constraints:** " + "; ".join(constraint_text(c, md_escape) for c in constraints))
    if probe:
        out.append(f"- **Probe:** {md_escape(probe)}")
    if summary.hypervolume is not None and summary.reference is not None:  # a volume always has its reference
        out.append(
            f"- **Hypervolume:** {fmt(summary.hypervolume)} (reference point {', '.join(fmt(v) for v in summary.reference)}, in objective order)"
        )
    point = summary.balanced
    if point is None:
        out.append("- **Balanced point:** none (no completed, feasible trial yet)")
    else:
        params = ", ".join(f"{md_escape(k)} = {fmt(v)}" for k, v in point.params.items())
        out.append(f"- **Balanced point:** trial {point.number} ({params}), rule {rule_text(summary, md_escape)}")
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
        from sweep.report.calibration import markdown

        out += [*markdown(calibration, md_escape), ""]

    failed = (
        trials[(trials["state"].astype(str).str.upper() == "FAIL") & ~interrupted_mask(trials)]
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
