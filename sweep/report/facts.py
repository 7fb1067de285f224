"""What both report pages state: trial counts by state, the balanced
point's rule text, constraint text, and the order of metric columns. User strings are
escaped by the `escape` each page passes (HTML or Markdown)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweep.report.balanced import rule_doc
from sweep.report.figures import esc, fmt
from sweep.report.front import Objective, objective_values
from sweep.report.summary import ParetoSummary
from sweep.study import table


def interrupted_mask(trials: pd.DataFrame) -> pd.Series:
    """FAIL rows that a signal stopped (failure_kind interrupted): queued again, not failures."""
    if "state" not in trials or "failure_kind" not in trials:
        return pd.Series(False, index=trials.index)
    return (trials["state"].astype(str).str.upper() == "FAIL") & (trials["failure_kind"] == "interrupted")


def state_counts(trials: pd.DataFrame) -> dict[str, int]:
    states = trials["state"].astype(str).str.upper() if "state" in trials else pd.Series(["COMPLETE"] * len(trials))
    interrupted = interrupted_mask(trials)
    states = states.where(~interrupted, "INTERRUPTED")
    return {s: int((states == s).sum()) for s in ("COMPLETE", "FAIL", "INTERRUPTED", "RUNNING", "PRUNED")} | {
        "total": len(trials)
    }


def trial_counts_text(counts: dict[str, int]) -> str:
    """'12 (10 complete, 0 failed, 2 interrupted and queued again)': interrupted trials are not failures."""
    parts = [f"{counts['COMPLETE']} complete", f"{counts['FAIL']} failed"]
    if counts["INTERRUPTED"]:
        parts.append(f"{counts['INTERRUPTED']} interrupted and queued again")
    if counts["RUNNING"] + counts["PRUNED"]:
        parts += [f"{counts['RUNNING']} running", f"{counts['PRUNED']} pruned"]
    return f"{counts['total']} ({', '.join(parts)})"


def rule_text(summary: ParetoSummary, escape) -> str:
    """The balanced point's rule, what it does, and its weights (metric names escaped by `escape`)."""
    point = summary.balanced
    if point is None:
        return ""
    text = f"{escape(point.rule)}: {escape(rule_doc(point.rule))}"
    if point.weights:
        text += " (weights " + ", ".join(f"{escape(k)} = {fmt(v)}" for k, v in point.weights.items()) + ")"
    return text


def missing_objectives(trials: pd.DataFrame, objectives: Sequence[Objective]) -> list[str]:
    values = objective_values(trials, objectives)
    return [o.metric for k, o in enumerate(objectives) if not np.isfinite(values[:, k]).any()]


def ordered_metrics(trials: pd.DataFrame, objectives: Sequence[Objective]) -> list[str]:
    """Objective columns first (in objective order), then every other numeric metric column."""
    names = [o.metric for o in objectives if o.metric in trials]
    others = [
        c for c in table.metric_columns(trials.columns) if c not in names and pd.api.types.is_numeric_dtype(trials[c])
    ]
    return names + others


def constraint_text(constraint: Any, escape=esc) -> str:
    """`metric >= value` with the (user-provided) metric name escaped by `escape`."""
    return f"{escape(constraint.metric)} {escape(constraint.op)} {fmt(constraint.value)}"


def probe_text(probe: Any) -> str | None:
    """How the probe ran, from the spec's `evals.probe` section (None without one): its
    size, learning rate, update and KL term, the reference named when it is not the
    candidate, the loss aggregation when it is not the token mean, and the mini-batches
    when there are several. The reader of a front needs it to know what its probe metrics measured."""
    if probe is None:
        return None
    against = probe.reference if probe.reference is not None else "the candidate"
    return (
        f"{probe.size_text()}; learning rate {probe.learning_rate:g}, {probe.update} update{probe.update_text()}; "
        f"KL {probe.kl_coef:g} against {against}"
    )
