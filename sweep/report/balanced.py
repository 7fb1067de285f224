"""The balanced point: the one front trial to recommend, chosen by a named rule.

Front values are normalized per objective to utilities in [0, 1] (`normalized_utilities`);
a rule scores every front point from them and the highest score wins (`balanced_point`).

A rule is `fn(utilities (n, d), weights (d,) or None) -> scores (n,)`, registered in
sweep.plugins.BALANCED_RULES with metadata `doc` (one line, shown in docs/report.md and the
report) and, for a rule that takes per-objective weights, `uses_weights=True`:

    @BALANCED_RULES.register("my_rule", doc="...")
    def my_rule(util, weights): return util.mean(axis=1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sweep.errors import SweepError
from sweep.plugins import BALANCED_RULES
from sweep.report.front import as_objectives, objective_values, to_losses
from sweep.study.table import trial_metrics, trial_params


def rule_doc(rule: str) -> str:
    """The one-line description of a registered rule ('' for an unknown one)."""
    return str(BALANCED_RULES.meta(rule).get("doc", "")) if rule in BALANCED_RULES else ""


def normalized_utilities(values: np.ndarray, directions: Sequence[str], scale: np.ndarray | None = None) -> np.ndarray:
    """Front values (n, d) -> utilities in [0, 1] per objective: 1 = best on the front,
    0 = worst among `scale`'s values (the eligible trials the front came from; default:
    the front itself). An objective equal on every point is 1 everywhere (it cannot tell
    the points apart).

    Why the trials and not the front alone: on a two-point front every point is worst
    on some objective, every point's minimum utility is 0, and maximin picks by trial
    number. The demo sweep on the shipped family met exactly that: its front was (0.44,
    0.95), which cannot add (0.00), and (0.02, 0.53), which adds (1.00) and keeps 0.81
    of its length; normalized over the front both scored 0 and the one that cannot add
    won. Scaled by the 11 eligible trials, the second scores 0.38 and the first 0."""
    losses = to_losses(values, directions)
    best = losses.min(axis=0)
    worst = losses.max(axis=0)
    if scale is not None and len(scale):
        worst = np.maximum(worst, to_losses(scale, directions).max(axis=0))
    span = worst - best
    with np.errstate(invalid="ignore", divide="ignore"):
        util = np.where(span > 0, (worst - losses) / np.where(span > 0, span, 1.0), 1.0)
    return util


# ---------------------------------------------------------------- the rules

RuleFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


@BALANCED_RULES.register(
    "maximin",
    doc="maximize the minimum over objectives of the value normalized to [0, 1] (best on the front, worst trial)",
)
def maximin(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return util.min(axis=1)


@BALANCED_RULES.register(
    "weighted",
    doc="maximize the weighted mean of the values normalized to [0, 1] (best on the front, worst trial)",
    uses_weights=True,
)
def weighted(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    w = np.ones(util.shape[1]) if weights is None else weights
    return util @ w / w.sum()


@BALANCED_RULES.register(
    "knee",
    doc="the front point farthest beyond the hyperplane through the front's extreme points (normalized values)",
)
def knee(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    n, d = util.shape
    # Anchors: for each objective, a front point best in it (ties: best mean of the others).
    anchors = np.stack([util[np.lexsort((-util.mean(axis=1), -util[:, j]))[0]] for j in range(d)])
    normal = np.ones(d)
    offset = 1.0
    if np.linalg.matrix_rank(anchors - anchors.mean(axis=0)) == d - 1:
        # Plane {u : w.u = 1} through the d anchors. Solvable unless it passes through 0.
        try:
            normal = np.linalg.solve(anchors, np.ones(d))
        except np.linalg.LinAlgError:
            normal, offset = np.ones(d), float(anchors.sum(axis=1).mean())
    else:  # degenerate anchors (e.g. one point best in everything): plane sum(u) = mean over anchors
        offset = float(anchors.sum(axis=1).mean())
    if normal.sum() - offset < 0:  # orient so the ideal point (1, ..., 1) lies on the positive side
        normal, offset = -normal, -offset
    return (util @ normal - offset) / np.linalg.norm(normal)


@dataclass(frozen=True)
class BalancedPoint:
    """The recommended trial: its number, rule, score under the rule, params and metrics."""

    number: int
    rule: str
    score: float
    params: dict[str, Any] = field(default_factory=dict)  # without the "params/" prefix
    metrics: dict[str, float | None] = field(
        default_factory=dict
    )  # every metric column of the row (None: not a number)
    weights: dict[str, float] | None = None  # by objective metric, for the "weighted" rule

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BalancedPoint:
        return cls(**data)


def check_rule(
    rule: str, weights: Mapping[str, float] | Sequence[float] | None, objectives: Sequence[Any]
) -> np.ndarray | None:
    """Validate a rule name and weights; return weights as an array ordered like `objectives`.

    Raises SweepError naming the problem: unknown rule, weights for an unknown metric,
    a missing or negative weight, or all weights zero.
    """
    objectives = as_objectives(objectives)
    if rule not in BALANCED_RULES:
        raise SweepError(f"unknown balanced-point rule {rule!r}; choose one of {', '.join(BALANCED_RULES.names())}")
    uses_weights = bool(BALANCED_RULES.meta(rule).get("uses_weights"))
    if weights is None:
        return np.ones(len(objectives)) if uses_weights else None
    names = [o.metric for o in objectives]
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in names]
        if unknown:
            raise SweepError(
                f"weights name metrics that are not objectives: {', '.join(unknown)} (objectives: {', '.join(names)})"
            )
        missing = [n for n in names if n not in weights]
        if missing:
            raise SweepError(f"weights are missing for: {', '.join(missing)}")
        arr = np.array([float(weights[n]) for n in names])
    else:
        arr = np.array([float(w) for w in weights])
        if arr.shape[0] != len(names):
            raise SweepError(f"{arr.shape[0]} weights given for {len(names)} objectives")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() <= 0:
        raise SweepError(f"weights must be finite, >= 0 and not all 0, got {arr.tolist()}")
    if not uses_weights:
        weighing = " or ".join(
            repr(name) for name in BALANCED_RULES.names() if BALANCED_RULES.meta(name).get("uses_weights")
        )
        raise SweepError(f"weights are used by the {weighing} rule only, not {rule!r}")
    return arr


def balanced_point(
    front: pd.DataFrame,
    objectives: Sequence[Any],
    *,
    rule: str = "maximin",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    trials: pd.DataFrame | None = None,
) -> BalancedPoint | None:
    """Choose the balanced point among `front`'s rows (the output of `pareto_front`).

    Values are normalized from the best on the front to the worst among `trials` (the
    eligible trials the front came from; default: the front; see
    `normalized_utilities`), the rule scores
    every point, the highest score wins; ties go to the higher mean normalized value,
    then to the lower trial number. Returns None for an empty front. Raises SweepError
    for an unknown rule or bad weights (see `check_rule`).
    """
    objectives = as_objectives(objectives)
    w = check_rule(rule, weights, objectives)
    if len(front) == 0:
        return None
    values = objective_values(front, objectives)
    scale = objective_values(trials, objectives) if trials is not None and len(trials) else None
    util = normalized_utilities(values, [o.direction for o in objectives], scale)
    scores = BALANCED_RULES.get(rule)(util, w)
    numbers = front["number"].to_numpy() if "number" in front else np.arange(len(front))
    # lexsort: last key is primary. Round scores so float noise does not break ties.
    best = np.lexsort((numbers, -util.mean(axis=1).round(12), -np.round(scores, 12)))[0]
    row = front.iloc[best]
    return BalancedPoint(
        number=int(numbers[best]),
        rule=rule,
        score=float(scores[best]),
        params=trial_params(row),
        metrics=trial_metrics(row, front.columns),
        weights={o.metric: float(x) for o, x in zip(objectives, w, strict=True)} if w is not None else None,
    )
