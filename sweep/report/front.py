"""Pareto maths over a trials table: masks, the front, hypervolume and its history.

Pure functions over the runner's trials table (one row per trial; see docs/report.md)
or over plain arrays. Nothing here touches Optuna, Ray or the disk.

Conventions
-----------
- An *objective* is (metric, direction) with direction "maximize" or "minimize".
- Internally every objective is turned into a *loss* (smaller is better): a maximized
  value v becomes -v. Optuna does the same (`_normalize_value`).
- *Eligible* trials are the ones Optuna's `study.best_trials` looks at: state COMPLETE,
  feasible (every constraint value <= 0), and, because a table may hold what Optuna
  would have refused, a finite value for every objective. Infeasible trials never reach
  the front, even when no feasible trial exists (the front is then empty), exactly as
  in Optuna 5 (`Study.best_trials` -> `_get_feasible_trials`).
- Trials with identical objective values are all on the front when that value is
  non-dominated (Optuna keeps every duplicate too).

Hypervolume
-----------
The volume of loss space dominated by the front and bounded by a reference point
`r` (in metric units; a maximized objective's front points must exceed r, a minimized
one's must be below it). Points that do not strictly improve on `r` in every objective
add nothing. Computed exactly by slicing (HSO): sort by the last objective, sweep the
slabs between consecutive values, each slab's area is the hypervolume of the points
so far in one dimension fewer; 2 objectives are one vectorized sweep. Exact for any
number of objectives; cost O(n^(d-1) log n) for n points and d objectives (3 objectives,
200 front points: ~0.03 s).
(No maintained hypervolume library fits: pymoo/pygmo are large, moocore is compiled
and pulls a C toolchain on some platforms; Optuna's is private API. Tests cross-check
against Optuna's `optuna._hypervolume.compute_hypervolume`.)

The default reference point (`reference_point`) is, per objective, the worst value
observed over every COMPLETE trial with finite objectives (feasible or not), moved
further out by `margin` (default 10%) of that objective's observed span (or by
`margin * max(1, |worst|)` when every value is equal). Fixing it from all COMPLETE
trials keeps it constant along the hypervolume history. Two studies compared with
each other must share one reference point: pass the union of their values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Direction = Literal["maximize", "minimize"]

COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class Objective:
    """One objective: a metric column of the trials table and its direction."""

    metric: str
    direction: Direction

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(
                f"objective {self.metric!r}: direction must be 'maximize' or 'minimize', got {self.direction!r}"
            )

    @property
    def sign(self) -> float:
        """Multiply a value by this to get a loss (smaller is better)."""
        return -1.0 if self.direction == "maximize" else 1.0


def as_objectives(items: Iterable[Any]) -> tuple[Objective, ...]:
    """Accept `Objective`s, spec `ObjectiveSpec`s (`.metric`, `.direction`) or (metric, direction) pairs."""
    out = []
    for item in items:
        if isinstance(item, Objective):
            out.append(item)
        elif hasattr(item, "metric") and hasattr(item, "direction"):
            out.append(Objective(str(item.metric), item.direction))
        else:
            metric, direction = item
            out.append(Objective(str(metric), direction))
    if not out:
        raise ValueError("at least one objective is needed")
    return tuple(out)


# ---------------------------------------------------------------- arrays


def to_losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, d) metric values -> (n, d) losses (maximized columns negated)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(directions))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * signs


def nondominated_mask(losses: np.ndarray) -> np.ndarray:
    """True for each row of (n, d) losses that no other row dominates.

    Row a dominates row b when a <= b everywhere and a < b somewhere. Equal rows do not
    dominate each other, so duplicates of a non-dominated row are all kept.
    """
    losses = np.asarray(losses, dtype=float)
    n = losses.shape[0]
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(losses <= losses[i], axis=1)
        better = np.any(losses < losses[i], axis=1)
        if np.any(no_worse & better):
            mask[i] = False
    return mask


def _hv_losses(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume of loss `points` (n, d), each < `reference` (d,) everywhere.

    Dominated points may be present: they add nothing (the union of boxes is the same).
    """
    if points.size == 0:
        return 0.0
    d = points.shape[1]
    if d == 1:
        return float(reference[0] - points[:, 0].min())
    if d == 2:  # sweep by the first loss; each point adds a strip below the running best second loss
        order = np.argsort(points[:, 0], kind="stable")
        xs, ys = points[order, 0], points[order, 1]
        best = np.minimum.accumulate(np.concatenate(([reference[1]], ys)))
        return float(np.sum((reference[0] - xs) * (best[:-1] - best[1:])))
    # d >= 3: slice along the last loss. Between consecutive last-loss values z_k and
    # z_{k+1} (or the reference), the dominated cross-section is the (d-1)-volume of
    # the points whose last loss is <= z_k. O(n^(d-1) log n) for n points.
    order = np.argsort(points[:, -1], kind="stable")
    pts = points[order]
    uppers = np.append(pts[1:, -1], reference[-1])
    volume = 0.0
    for k in range(len(pts)):
        height = uppers[k] - pts[k, -1]
        if height > 0:
            volume += height * _hv_losses(pts[: k + 1, :-1], reference[:-1])
    return float(volume)


def _front_only(points: np.ndarray) -> np.ndarray:
    return np.unique(points[nondominated_mask(points)], axis=0)


def hypervolume(values: np.ndarray, *, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume of metric `values` (n, d) against `reference` (d,), both in metric units.

    Rows that fail to strictly improve on the reference in every objective add nothing.
    Raises ValueError on a shape mismatch or a non-finite reference.
    """
    directions = list(directions)
    ref = to_losses(np.asarray(reference, dtype=float), directions)[0]
    if ref.shape[0] != len(directions) or not np.all(np.isfinite(ref)):
        raise ValueError(
            f"reference point {list(reference)} must hold one finite value per objective ({len(directions)})"
        )
    losses = to_losses(values, directions)
    losses = losses[np.all(np.isfinite(losses), axis=1) & np.all(losses < ref, axis=1)]
    if losses.shape[0] == 0:
        return 0.0
    return _hv_losses(_front_only(losses), ref)


def reference_point(values: np.ndarray, *, directions: Sequence[str], margin: float = 0.1) -> tuple[float, ...]:
    """Default reference point in metric units: the worst observed value per objective,
    moved out by `margin` times the observed span (or `margin * max(1, |worst|)` when the
    span is 0). Non-finite rows are ignored. Raises ValueError when no row is finite."""
    losses = to_losses(values, directions)
    losses = losses[np.all(np.isfinite(losses), axis=1)]
    if losses.shape[0] == 0:
        raise ValueError("no trial has a finite value for every objective: no reference point")
    worst, best = losses.max(axis=0), losses.min(axis=0)
    span = worst - best
    pad = np.where(span > 0, margin * span, margin * np.maximum(1.0, np.abs(worst)))
    ref_loss = worst + pad
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return tuple(float(v) for v in ref_loss * signs)


# ---------------------------------------------------------------- trials tables


def objective_values(trials: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """(n, d) float matrix of the objective columns; a missing column is all NaN."""
    cols = [
        pd.to_numeric(trials[o.metric], errors="coerce")
        if o.metric in trials
        else pd.Series(np.nan, index=trials.index)
        for o in objectives
    ]
    return np.column_stack([c.to_numpy(dtype=float) for c in cols]) if cols else np.empty((len(trials), 0))


def feasible_mask(trials: pd.DataFrame, constraints: Sequence[Any] = ()) -> np.ndarray:
    """Feasibility per row. The table's `feasible` column is authoritative (it is what
    Optuna was told); rows where it is missing are judged from `constraints`
    (`.metric`, `.violation(value)` <= 0, a missing metric is infeasible); with neither,
    every row is feasible (Optuna: a trial without constraints is feasible)."""
    from_constraints = np.ones(len(trials), dtype=bool)
    for c in constraints:
        vals = (
            pd.to_numeric(trials[c.metric], errors="coerce").to_numpy(dtype=float)
            if c.metric in trials
            else np.full(len(trials), np.nan)
        )
        ok = np.array([math.isfinite(v) and c.violation(float(v)) <= 0 for v in vals], dtype=bool)
        from_constraints &= ok
    if "feasible" not in trials:
        return from_constraints
    col = trials["feasible"]
    known = col.notna().to_numpy()
    given = np.array([bool(v) if k else False for v, k in zip(col.tolist(), known, strict=True)], dtype=bool)
    return np.where(known, given, from_constraints)


def complete_mask(trials: pd.DataFrame) -> np.ndarray:
    if "state" not in trials:
        return np.ones(len(trials), dtype=bool)
    return (trials["state"].astype(str).str.upper() == COMPLETE).to_numpy()


def eligible_mask(trials: pd.DataFrame, objectives: Sequence[Any], constraints: Sequence[Any] = ()) -> np.ndarray:
    """COMPLETE, feasible and finite in every objective: the trials the front is chosen from."""
    objectives = as_objectives(objectives)
    finite = np.all(np.isfinite(objective_values(trials, objectives)), axis=1)
    return complete_mask(trials) & feasible_mask(trials, constraints) & finite


def pareto_mask(trials: pd.DataFrame, objectives: Sequence[Any], constraints: Sequence[Any] = ()) -> np.ndarray:
    """True for the rows on the Pareto front (consistent with Optuna's `study.best_trials`)."""
    objectives = as_objectives(objectives)
    eligible = eligible_mask(trials, objectives, constraints)
    mask = np.zeros(len(trials), dtype=bool)
    if eligible.any():
        losses = to_losses(objective_values(trials, objectives)[eligible], [o.direction for o in objectives])
        mask[np.flatnonzero(eligible)[nondominated_mask(losses)]] = True
    return mask


def pareto_front(trials: pd.DataFrame, objectives: Sequence[Any], constraints: Sequence[Any] = ()) -> pd.DataFrame:
    """The front's rows, ordered by trial number."""
    front = trials[pareto_mask(trials, objectives, constraints)]
    return front.sort_values("number") if "number" in front else front


def default_reference(
    trials: pd.DataFrame, objectives: Sequence[Any], *, margin: float = 0.1
) -> tuple[float, ...] | None:
    """`reference_point` over every COMPLETE trial with finite objectives; None if there is none."""
    objectives = as_objectives(objectives)
    values = objective_values(trials, objectives)[complete_mask(trials)]
    values = values[np.all(np.isfinite(values), axis=1)]
    if values.shape[0] == 0:
        return None
    return reference_point(values, directions=[o.direction for o in objectives], margin=margin)


def front_hypervolume(
    trials: pd.DataFrame, objectives: Sequence[Any], constraints: Sequence[Any] = (), *, reference: Sequence[float]
) -> float:
    """Hypervolume of the eligible trials (only the front contributes) against `reference`."""
    objectives = as_objectives(objectives)
    values = objective_values(trials, objectives)[eligible_mask(trials, objectives, constraints)]
    return hypervolume(values, directions=[o.direction for o in objectives], reference=reference)


def hypervolume_history(
    trials: pd.DataFrame, objectives: Sequence[Any], constraints: Sequence[Any] = (), *, reference: Sequence[float]
) -> pd.DataFrame:
    """Hypervolume of the front of trials numbered <= n, for each trial number n in the table.

    Returns a DataFrame with columns `number` (int) and `hypervolume` (float), one row per
    trial (failed trials included: the curve stays flat there), sorted by number.
    """
    objectives = as_objectives(objectives)
    directions = [o.direction for o in objectives]
    if "number" not in trials or len(trials) == 0:
        return pd.DataFrame({"number": pd.Series(dtype=int), "hypervolume": pd.Series(dtype=float)})
    order = np.argsort(trials["number"].to_numpy(), kind="stable")
    numbers = trials["number"].to_numpy()[order]
    losses = to_losses(objective_values(trials, objectives)[order], directions)
    eligible = eligible_mask(trials, objectives, constraints)[order]
    ref = to_losses(np.asarray(reference, dtype=float), directions)[0]
    front = np.empty((0, len(directions)))
    history, volume = [], 0.0
    for k in range(len(numbers)):
        point = losses[k]
        # Only an eligible point inside the reference box, not weakly dominated by the
        # current front, can change the volume; then the front is updated incrementally.
        if eligible[k] and np.all(point < ref) and not np.any(np.all(front <= point, axis=1)):
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            volume = _hv_losses(front, ref)
        history.append(volume)
    return pd.DataFrame({"number": numbers.astype(int), "hypervolume": history})
