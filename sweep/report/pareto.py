"""Pareto maths over a trials table: front, hypervolume, history, balanced point.

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

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from evals.metric_names import NOISE_SUFFIX
from sweep.errors import SweepError
from sweep.study.table import trial_metrics, trial_params

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


# ---------------------------------------------------------------- balanced point


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


RuleFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
BALANCED_RULES: dict[str, RuleFn] = {}
RULE_DOCS: dict[str, str] = {}


def register_rule(name: str, doc: str) -> Callable[[RuleFn], RuleFn]:
    """Register a balanced-point rule: fn(utilities (n, d), weights (d,) or None) -> scores (n,);
    the highest score wins."""

    def wrap(fn: RuleFn) -> RuleFn:
        BALANCED_RULES[name] = fn
        RULE_DOCS[name] = doc
        return fn

    return wrap


@register_rule(
    "maximin", "maximize the minimum over objectives of the value normalized to [0, 1] (best on the front, worst trial)"
)
def _maximin(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return util.min(axis=1)


@register_rule(
    "weighted", "maximize the weighted mean of the values normalized to [0, 1] (best on the front, worst trial)"
)
def _weighted(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    w = np.ones(util.shape[1]) if weights is None else weights
    return util @ w / w.sum()


@register_rule(
    "knee", "the front point farthest beyond the hyperplane through the front's extreme points (normalized values)"
)
def _knee(util: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
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
        raise SweepError(f"unknown balanced-point rule {rule!r}; choose one of {', '.join(sorted(BALANCED_RULES))}")
    if weights is None:
        if rule == "weighted":
            return np.ones(len(objectives))
        return None
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
    if rule != "weighted":
        raise SweepError(f"weights are used by the 'weighted' rule only, not {rule!r}")
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
    scores = BALANCED_RULES[rule](util, w)
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


# ---------------------------------------------------------------- row helpers


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


# ---------------------------------------------------------------- summary record


@dataclass(frozen=True)
class ParetoSummary:
    """What a study amounts to: counts, front, reference point, hypervolume, balanced point.

    Serializes losslessly to JSON (`to_json` / `from_json`) so `compare` and `export` can
    read it back without recomputing.
    """

    objectives: tuple[Objective, ...]
    n_trials: int
    n_complete: int
    n_failed: int
    n_feasible: int  # COMPLETE and feasible with finite objectives
    front_numbers: tuple[int, ...]
    reference: tuple[float, ...] | None
    hypervolume: float | None
    balanced: BalancedPoint | None
    n_interrupted: int = 0  # FAIL trials a signal stopped (failure_kind interrupted): not in n_failed

    def to_json(self) -> str:
        data = asdict(self)
        data["objectives"] = [asdict(o) for o in self.objectives]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ParetoSummary:
        data = json.loads(text)
        return cls(
            objectives=tuple(Objective(**o) for o in data["objectives"]),
            n_trials=data["n_trials"],
            n_complete=data["n_complete"],
            n_failed=data["n_failed"],
            n_feasible=data["n_feasible"],
            front_numbers=tuple(data["front_numbers"]),
            reference=tuple(data["reference"]) if data["reference"] is not None else None,
            hypervolume=data["hypervolume"],
            balanced=BalancedPoint.from_dict(data["balanced"]) if data["balanced"] is not None else None,
            n_interrupted=data.get("n_interrupted", 0),
        )


def summarize_spec(trials: pd.DataFrame, spec: Any) -> ParetoSummary:
    """`summarize` with a spec's objectives, constraints and report section (rule, weights, reference)."""
    return summarize(
        trials,
        spec.objectives,
        spec.constraints,
        rule=spec.report.balanced_rule,
        weights=spec.report.weights,
        reference=spec.report.reference,
    )


def summarize(
    trials: pd.DataFrame,
    objectives: Sequence[Any],
    constraints: Sequence[Any] = (),
    *,
    rule: str = "maximin",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    reference: Sequence[float] | None = None,
) -> ParetoSummary:
    """Front, hypervolume (against `reference` or `default_reference`) and balanced point."""
    objectives = as_objectives(objectives)
    check_rule(rule, weights, objectives)
    front = pareto_front(trials, objectives, constraints)
    ref: tuple[float, ...] | None
    if reference is not None:
        ref = tuple(float(v) for v in reference)
        if len(ref) != len(objectives) or not all(math.isfinite(v) for v in ref):
            raise SweepError(
                f"the hypervolume reference point needs one finite number per objective ({len(objectives)}), got {list(reference)}"
            )
    else:
        ref = default_reference(trials, objectives)
    volume = front_hypervolume(trials, objectives, constraints, reference=ref) if ref is not None else None
    states = trials["state"].astype(str).str.upper() if "state" in trials else pd.Series([COMPLETE] * len(trials))
    failed = (states == "FAIL").to_numpy()
    interrupted = failed & ((trials["failure_kind"] == "interrupted").to_numpy() if "failure_kind" in trials else False)
    return ParetoSummary(
        objectives=objectives,
        n_trials=len(trials),
        n_complete=int((states == COMPLETE).sum()),
        n_failed=int((failed & ~interrupted).sum()),
        n_interrupted=int(interrupted.sum()),
        n_feasible=int(eligible_mask(trials, objectives, constraints).sum()),
        front_numbers=tuple(int(n) for n in front["number"]) if "number" in front else (),
        reference=ref,
        hypervolume=volume,
        balanced=balanced_point(
            front, objectives, rule=rule, weights=weights, trials=trials[eligible_mask(trials, objectives, constraints)]
        ),
    )


# ---------------------------------------------------------------- comparing two studies


@dataclass(frozen=True)
class FrontComparison:
    """How the front moved from study A (before) to study B (after).

    Both hypervolumes use one reference point. `changes` are B minus A of the balanced
    points' objective values in metric units, sign-corrected so that positive is better
    (a minimized objective that went down counts as a positive change). `regressions`
    names the objectives whose change is below -(tolerance + noise), or every objective
    when B has no balanced point but A had one. `noise` is, per objective, the combined
    noise band of the two balanced points (sqrt(a^2 + b^2) of their `<metric>_noise`
    values; 0 where neither recorded one): a change within the noise is no regression.
    """

    objectives: tuple[Objective, ...]
    reference: tuple[float, ...] | None
    hypervolume_a: float | None
    hypervolume_b: float | None
    balanced_a: BalancedPoint | None
    balanced_b: BalancedPoint | None
    changes: dict[str, float]
    tolerance: dict[str, float]
    regressions: tuple[str, ...]
    noise: dict[str, float] = field(default_factory=dict)  # combined noise band per objective, metric units

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def hypervolume_change(self) -> float | None:
        if self.hypervolume_a is None or self.hypervolume_b is None:
            return None
        return self.hypervolume_b - self.hypervolume_a

    def to_json(self) -> str:
        data = asdict(self)
        data["objectives"] = [asdict(o) for o in self.objectives]
        return json.dumps(data, indent=2, sort_keys=True)


def compare_fronts(
    trials_a: pd.DataFrame,
    trials_b: pd.DataFrame,
    objectives: Sequence[Any],
    constraints: Sequence[Any] = (),
    *,
    rule: str = "maximin",
    weights: Mapping[str, float] | Sequence[float] | None = None,
    tolerance: float | Mapping[str, float] = 0.0,
    reference: Sequence[float] | None = None,
) -> FrontComparison:
    """Compare study B against study A under one reference point (given, or
    `reference_point` over the COMPLETE trials of both) and one balanced-point rule.

    tolerance: how much worse (metric units, >= 0) B's balanced point may be in an
    objective before it counts as a regression; one number for all objectives or one
    per objective metric. Raises SweepError for a negative or unknown-metric tolerance.
    """
    objectives = as_objectives(objectives)
    names = [o.metric for o in objectives]
    if isinstance(tolerance, Mapping):
        unknown = [k for k in tolerance if k not in names]
        if unknown:
            raise SweepError(f"tolerance names metrics that are not objectives: {', '.join(unknown)}")
        tol = {n: float(tolerance.get(n, 0.0)) for n in names}
    else:
        tol = {n: float(tolerance) for n in names}
    if any(not math.isfinite(v) or v < 0 for v in tol.values()):
        raise SweepError(f"tolerance must be >= 0, got {tolerance}")
    if reference is None:
        both = pd.concat([trials_a, trials_b], ignore_index=True)
        reference = default_reference(both, objectives)
    a = summarize(trials_a, objectives, constraints, rule=rule, weights=weights, reference=reference)
    b = summarize(trials_b, objectives, constraints, rule=rule, weights=weights, reference=reference)
    changes: dict[str, float] = {}
    noise: dict[str, float] = {}
    regressions: list[str] = []
    if a.balanced is not None and b.balanced is not None:
        for o in objectives:
            before, after = a.balanced.metrics.get(o.metric), b.balanced.metrics.get(o.metric)
            if before is None or after is None:
                continue
            changes[o.metric] = -o.sign * (after - before)  # positive = better
            bands = [p.metrics.get(o.metric + NOISE_SUFFIX) for p in (a.balanced, b.balanced)]
            noise[o.metric] = math.sqrt(sum(float(w) ** 2 for w in bands if w is not None and math.isfinite(w)))
            if changes[o.metric] < -(tol[o.metric] + noise[o.metric]):
                regressions.append(o.metric)
    elif a.balanced is not None:  # B lost its feasible front entirely
        regressions = names
    return FrontComparison(
        objectives=objectives,
        reference=a.reference,
        hypervolume_a=a.hypervolume,
        hypervolume_b=b.hypervolume,
        balanced_a=a.balanced,
        balanced_b=b.balanced,
        changes=changes,
        tolerance=tol,
        noise=noise,
        regressions=tuple(regressions),
    )
