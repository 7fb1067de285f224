"""How the front moved from study A to study B, under one reference point and one rule.

`compare_fronts` compares balanced points with recorded noise bands only; the nightly's
like-with-like comparison is sweep.report.regression.compare_studies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from evals.metric_names import NOISE_SUFFIX
from sweep.errors import SweepError
from sweep.report.balanced import BalancedPoint
from sweep.report.front import Objective, as_objectives, default_reference
from sweep.report.summary import summarize


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
