"""Did the models get worse? Noise-aware comparison of two studies at the same points.

Pure functions over trials tables (and the nightly's probe repeats); nothing here runs a
trial or touches the disk. `sweep compare` and `sweep nightly` share them.

Like with like
--------------
A study's balanced point and front are chosen by a sampler: two studies of the same
models can pick different (alpha, beta), and comparing those mixes "the models changed"
with "the sampler went elsewhere". So the *compared points* are study A's front
(balanced point first), each matched with study B's COMPLETE trial at the same params.
`sweep nightly` makes those trials exist: warm start runs last night's front first.
B's own balanced point, when it is another point, is information, never a regression.

Noise
-----
Every objective's change carries the 99% half-width of the difference (`noise`,
metric units; z = 2.576, or Student's t at the repeats' degrees of freedom):

- lm-eval proportions (exact_match, acc, ...) at a whole-number `limit` of n documents:
  the binomial two-proportion band, pooled p = (p_a + p_b) / 2 at equal n,
  z * sqrt(p (1 - p) (1/n_a + 1/n_b)). Pooled, so 1/24 -> 0 has a band (0.106), where
  each side's own stderr at 0 would be 0. Other lm-eval metrics, or no limit: lm-eval's
  recorded stderr (`<metric>_stderr`), z * sqrt(se_a^2 + se_b^2); none recorded: 0,
  and the basis says "noise unknown".
- probe metrics: the recorded bootstrap band (`probe/<name>_noise`, a 90% half-width,
  so sd = band / 1.645) covers the prompts and samples of one run, not the training
  trajectory: measured on the demo family at (alpha 0.5, beta 0.75), length_retention
  over probe seeds 0-5 had sd 0.26 against a bootstrap sd of ~0.15 (docs/report.md).
  Where a point was probed with several seeds (the nightly's repeats), the pooled sample
  sd s of both nights' values (df = n_a + n_b - 2) gives
  t(0.995, df) * s * sqrt(1/n_a + 1/n_b); the band is never below the bootstrap's
  z * sd_boot * sqrt(1/n_a + 1/n_b).

A change regresses when, sign-corrected so that positive is better, it is below
-(tolerance + noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from evals.metric_names import NOISE_SUFFIX
from sweep.report.balanced import balanced_point
from sweep.report.front import Objective, as_objectives, eligible_mask, pareto_front
from sweep.study.table import finite_number, trial_params

Z99 = 2.576  # two-sided 99%: a false alarm on 0.5% of unchanged metrics
Z90 = 1.645  # the probe's recorded bands are 90% half-widths
STDERR_SUFFIX = "_stderr"  # lm_eval/<task>/<metric>,<filter>_stderr: lm-eval's own stderr
# lm-eval metrics that are a mean of 0/1 per document: binomial at `limit` documents.
BINOMIAL_METRICS = frozenset({"exact_match", "acc", "acc_norm", "pass@1", "pass_at_1", "mc1"})
# Student's t at 0.995 by degrees of freedom (above 30: interpolated towards z).
_T995 = {1: 63.657, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 6: 3.707, 7: 3.499, 8: 3.355, 9: 3.250, 10: 3.169}
_T995 |= {11: 3.106, 12: 3.055, 13: 3.012, 14: 2.977, 15: 2.947, 16: 2.921, 17: 2.898, 18: 2.878, 19: 2.861}
_T995 |= {20: 2.845, 22: 2.819, 24: 2.797, 26: 2.779, 28: 2.763, 30: 2.750, 40: 2.704, 60: 2.660, 120: 2.617}
PARAM_ATOL = 1e-9  # params equal within this are the same point (as sweep.study.durable.same_params)


def t995(df: int) -> float:
    """Student's t quantile at 0.995 (the 99% two-sided band) for `df` degrees of freedom >= 1."""
    keys = sorted(_T995)
    if df >= keys[-1]:
        return Z99
    return _T995[min(k for k in keys if k >= df)]  # the next tabulated df down-rounds t: conservative


@dataclass(frozen=True)
class Measured:
    """One metric at one point in one study: the trial's value, then any repeats' values."""

    values: tuple[float, ...]
    bands: tuple[float, ...] = ()  # recorded 90% bootstrap half-widths (probe metrics)
    stderr: float | None = None  # lm-eval's recorded stderr
    n_docs: int | None = None  # lm-eval documents behind each value (the spec's whole-number limit)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


@dataclass(frozen=True)
class MetricChange:
    """How one objective moved at one point. `change` is sign-corrected: positive is better."""

    metric: str
    direction: str
    before: float
    after: float
    change: float
    noise: float  # 99% half-width of the difference, metric units
    basis: str  # where the noise comes from, in words
    regressed: bool


@dataclass(frozen=True)
class PointComparison:
    """One of study A's front points, re-measured in study B."""

    params: dict[str, float]
    number_before: int
    number_after: int | None  # None: B has no COMPLETE trial at these params
    balanced: bool  # A's balanced point
    changes: tuple[MetricChange, ...] = ()

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.regressed]


def metric_change(objective: Objective, before: Measured, after: Measured, *, tolerance: float = 0.0) -> MetricChange:
    """The change of one objective between two measurements of one point, with its noise."""
    change = -objective.sign * (after.mean - before.mean)
    noise, basis = difference_noise(objective.metric, before, after)
    return MetricChange(
        metric=objective.metric,
        direction=objective.direction,
        before=before.mean,
        after=after.mean,
        change=float(change),
        noise=float(noise),
        basis=basis,
        regressed=bool(change < -(tolerance + noise)),
    )


def difference_noise(metric: str, a: Measured, b: Measured) -> tuple[float, str]:
    """(99% half-width of mean(b) - mean(a), the basis in words). See the module docstring."""
    if metric.startswith("lm_eval/"):
        base = metric.split("/")[-1].split(",")[0]
        if base in BINOMIAL_METRICS and a.n_docs and b.n_docs:
            n_a, n_b = a.n_docs * len(a.values), b.n_docs * len(b.values)
            p = (a.mean * n_a + b.mean * n_b) / (n_a + n_b)
            p = min(max(p, 0.0), 1.0)
            noise = Z99 * math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
            return noise, f"binomial at {a.n_docs} and {b.n_docs} documents"
        if a.stderr is not None and b.stderr is not None:
            return Z99 * math.hypot(a.stderr, b.stderr), "lm-eval's stderr"
        return 0.0, "noise unknown (no limit, no recorded stderr)"
    n_a, n_b = len(a.values), len(b.values)
    scale = math.sqrt(1 / n_a + 1 / n_b)
    bands = [w for w in (*a.bands, *b.bands) if math.isfinite(w)]
    boot = Z99 * math.sqrt(np.mean(np.square(bands))) / Z90 * scale if bands else 0.0
    df = n_a + n_b - 2
    if df >= 1:
        spread = sum(float(np.sum((np.asarray(m.values) - m.mean) ** 2)) for m in (a, b))
        seeds = t995(df) * math.sqrt(spread / df) * scale
        if seeds >= boot:
            return seeds, f"probe seeds: {n_a} before, {n_b} after"
    if bands:
        return boot, "probe bootstrap band" + (f" ({n_a} and {n_b} seeds)" if df >= 1 else "")
    return 0.0, "noise unknown (no band recorded)"


# ---------------------------------------------------------------- studies


def same_point(row_params: Mapping[str, Any], params: Mapping[str, float]) -> bool:
    return set(row_params) == set(params) and all(
        row_params[k] is not None and math.isclose(float(row_params[k]), float(v), abs_tol=PARAM_ATOL)
        for k, v in params.items()
    )


def whole_limit(spec: Any) -> int | None:
    """The spec's lm-eval `limit` when it is a whole number of documents (the binomial n)."""
    lm = getattr(getattr(spec, "evals", None), "lm_eval", None)
    limit = getattr(lm, "limit", None)
    return int(limit) if limit is not None and limit >= 1 and limit == int(limit) else None


def measured(
    metric: str, row: pd.Series, repeats: pd.DataFrame | None = None, *, n_docs: int | None = None
) -> Measured | None:
    """The metric at a trial's row, plus the repeats' values at its params. None when the row has no value."""
    value = finite_number(row.get(metric))
    if value is None:
        return None
    values, bands = [value], []
    band = finite_number(row.get(metric + NOISE_SUFFIX))
    if band is not None:
        bands.append(band)
    if repeats is not None and len(repeats) and metric in repeats:
        params = trial_params(row)
        for _, rep in repeats.iterrows():
            if same_point(trial_params(rep), params) and (v := finite_number(rep.get(metric))) is not None:
                values.append(v)
                if (w := finite_number(rep.get(metric + NOISE_SUFFIX))) is not None:
                    bands.append(w)
    return Measured(tuple(values), tuple(bands), finite_number(row.get(metric + STDERR_SUFFIX)), n_docs)


def find_trial(trials: pd.DataFrame, params: Mapping[str, float]) -> pd.Series | None:
    """Study B's COMPLETE trial at exactly these params (the latest, if several)."""
    if "state" not in trials:
        return None
    complete = trials[trials["state"].astype(str).str.upper() == "COMPLETE"]
    hits = [row for _, row in complete.iterrows() if same_point(trial_params(row), params)]
    return hits[-1] if hits else None


@dataclass(frozen=True)
class StudyComparison:
    """Study A's front re-measured in study B, and what else B found."""

    points: tuple[PointComparison, ...]
    balanced_before: dict[str, Any] | None  # {number, params, metrics} of A's balanced point
    balanced_after: dict[str, Any] | None  # B's own balanced point
    tolerance: float
    fallback: bool = False  # A's balanced point was not measured in B: balanced points compared instead
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def regressions(self) -> list[tuple[PointComparison, MetricChange]]:
        return [(p, c) for p in self.points for c in p.regressions]

    @property
    def same_balanced_point(self) -> bool:
        a, b = self.balanced_before, self.balanced_after
        return a is not None and b is not None and same_point(b["params"], a["params"])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["regressions"] = [{"params": p.params, "balanced": p.balanced} | asdict(c) for p, c in self.regressions]
        return data


def compare_studies(
    trials_a: pd.DataFrame,
    trials_b: pd.DataFrame,
    objectives: Sequence[Any],
    constraints: Sequence[Any] = (),
    *,
    rule: str = "maximin",
    weights: Mapping[str, float] | None = None,
    tolerance: float = 0.0,
    n_docs: tuple[int | None, int | None] = (None, None),
    repeats: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
    front_points: bool = True,
    fallback: bool = True,
) -> StudyComparison:
    """Study A's balanced point (and, with front_points, the rest of its front) re-measured
    in study B. n_docs: each study's whole-number lm-eval limit; repeats: each study's
    probe repeats (`sweep nightly`), or None. When B has no trial at A's balanced point,
    the two balanced points are compared instead (`fallback`), as `sweep compare` did
    before: that answer mixes a model change with the sampler's choice, and says so.
    With fallback False (the nightly), that point is reported as not measured instead."""
    objectives = as_objectives(objectives)
    if not math.isfinite(tolerance) or tolerance < 0:
        from sweep.errors import SweepError

        raise SweepError(f"tolerance must be >= 0, got {tolerance}")
    front_a = pareto_front(trials_a, objectives, constraints)
    front_b = pareto_front(trials_b, objectives, constraints)
    eligible_a = trials_a[eligible_mask(trials_a, objectives, constraints)]
    eligible_b = trials_b[eligible_mask(trials_b, objectives, constraints)]
    bal_a = balanced_point(front_a, objectives, rule=rule, weights=weights, trials=eligible_a)
    bal_b = balanced_point(front_b, objectives, rule=rule, weights=weights, trials=eligible_b)
    as_dict = lambda p: None if p is None else {"number": p.number, "params": p.params, "metrics": p.metrics}  # noqa: E731
    points: list[PointComparison] = []
    notes: list[str] = []
    fell_back = False
    if bal_a is not None:
        rows = front_a.sort_values("number")
        ordered = [r for _, r in rows.iterrows() if int(r["number"]) == bal_a.number]
        if front_points:
            ordered += [r for _, r in rows.iterrows() if int(r["number"]) != bal_a.number]
        for row in ordered:
            params = {k: float(v) for k, v in trial_params(row).items()}
            is_balanced = int(row["number"]) == bal_a.number
            match = find_trial(trials_b, params)
            if match is None and is_balanced and bal_b is not None and fallback:
                match, fell_back = front_b[front_b["number"] == bal_b.number].iloc[0], True
                notes.append(
                    "B has no complete trial at A's balanced point: the two balanced points are compared, "
                    "which mixes a change of the models with the sampler's choice"
                )
            points.append(_compare_point(row, match, params, is_balanced, objectives, tolerance, n_docs, repeats))
    return StudyComparison(
        points=tuple(points),
        balanced_before=as_dict(bal_a),
        balanced_after=as_dict(bal_b),
        tolerance=float(tolerance),
        fallback=fell_back,
        notes=tuple(notes),
    )


def _compare_point(row_a, row_b, params, is_balanced, objectives, tolerance, n_docs, repeats) -> PointComparison:
    if row_b is None:
        return PointComparison(params, int(row_a["number"]), None, is_balanced)
    changes = []
    for o in objectives:
        a = measured(o.metric, row_a, repeats[0], n_docs=n_docs[0])
        b = measured(o.metric, row_b, repeats[1], n_docs=n_docs[1])
        if a is not None and b is not None:
            changes.append(metric_change(o, a, b, tolerance=tolerance))
    return PointComparison(params, int(row_a["number"]), int(row_b["number"]), is_balanced, tuple(changes))


def describe_change(point: PointComparison, change: MetricChange) -> str:
    """'(alpha 0.150, beta 0.530), balanced: lm_eval/...: 0.75 -> 0.04 (-0.71; noise ±0.25, binomial ...)'."""
    where = "(" + ", ".join(f"{k} {v:.3f}" for k, v in point.params.items()) + ")"
    return (
        f"{where}{', balanced' if point.balanced else ''}: {change.metric}: {change.before:.4g} -> {change.after:.4g} "
        f"({change.change:+.4g}; noise ±{change.noise:.3g}, {change.basis})"
    )


def hypervolume_noise(
    values: np.ndarray, sds: np.ndarray, *, directions: Sequence[str], reference: Sequence[float], draws: int = 200
) -> float:
    """99% half-width of the hypervolume of `values` (n, d) when each value is uncertain
    with standard deviation `sds` (n, d): Gaussian draws, a fixed seed (repeatable)."""
    from sweep.report.front import hypervolume

    values, sds = np.asarray(values, dtype=float), np.nan_to_num(np.asarray(sds, dtype=float))
    if values.size == 0 or not np.any(sds > 0):
        return 0.0
    rng = np.random.default_rng(0)
    volumes = [
        hypervolume(values + rng.normal(size=values.shape) * sds, directions=directions, reference=reference)
        for _ in range(draws)
    ]
    low, high = np.quantile(volumes, [0.005, 0.995])
    return float((high - low) / 2)


def value_sd(metric: str, value: float, row: Mapping[str, Any], n_docs: int | None) -> float:
    """One measurement's standard deviation (for a trend's bands): binomial at n_docs for
    lm-eval proportions, else the recorded stderr; the probe band / 1.645; 0 when unknown."""
    if metric.startswith("lm_eval/"):
        base = metric.split("/")[-1].split(",")[0]
        if base in BINOMIAL_METRICS and n_docs:
            p = min(max(value, 0.0), 1.0)
            return math.sqrt(max(p * (1 - p), 1 / (4 * n_docs)) / n_docs)  # floor: half a document's worth
        return finite_number(row.get(metric + STDERR_SUFFIX)) or 0.0
    band = finite_number(row.get(metric + NOISE_SUFFIX))
    return band / Z90 if band is not None else 0.0
