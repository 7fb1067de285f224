"""Two studies compared.

- `compare_dirs`: two study folders, as `sweep compare` prints them and `sweep nightly`
  compares each night with the one before: the hypervolume, the balanced point and each of
  A's front points looked up in B, each change against its noise
  (sweep.report.regression.compare_studies, like with like).
- `compare_fronts`: how the front moved, under one reference point and one rule; balanced
  points with recorded noise bands only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


def compare_dirs(before, after, *, tolerance: float, fallback: bool = True) -> dict:
    """The comparison of two study folders as a plain dict (what --json prints). fallback:
    see sweep.report.regression.compare_studies (the nightly passes False)."""
    from sweep.errors import SweepError
    from sweep.report.front import default_reference
    from sweep.report.regression import compare_studies, whole_limit
    from sweep.report.summary import summarize
    from sweep.study.durable import load_study_dir
    from sweep.study.repeats_table import load_repeats  # sweep nightly's probe repeats, when the folder has them

    spec_a, trials_a = load_study_dir(before)
    spec_b, trials_b = load_study_dir(after)
    if spec_a.objective_names != spec_b.objective_names:
        raise SweepError(
            f"the studies have different objectives ({', '.join(spec_a.objective_names)} vs "
            f"{', '.join(spec_b.objective_names)}): nothing to compare"
        )
    import pandas as pd

    result = compare_studies(
        trials_a,
        trials_b,
        spec_b.objectives,
        spec_b.constraints,
        rule=spec_b.report.balanced_rule,
        weights=spec_b.report.weights,
        tolerance=tolerance,
        n_docs=(whole_limit(spec_a), whole_limit(spec_b)),
        repeats=(load_repeats(Path(before)), load_repeats(Path(after))),
        fallback=fallback,
    )
    if result.balanced_before is None:
        raise SweepError(f"{before} has no complete feasible trial: nothing to compare against")
    reference = spec_b.report.reference or default_reference(
        pd.concat([trials_a, trials_b], ignore_index=True), spec_b.objectives
    )
    hv = [
        summarize(t, spec_b.objectives, spec_b.constraints, rule=spec_b.report.balanced_rule, reference=reference)
        for t in (trials_a, trials_b)
    ]
    data = result.to_dict()
    regressions = data["regressions"]
    if result.balanced_after is None:  # B lost its feasible front entirely
        regressions.append({"metric": "(every objective)", "problem": f"{after} has no complete feasible trial"})
    hv_a, hv_b = hv[0].hypervolume, hv[1].hypervolume
    balanced = result.points[0] if result.points else None
    return {
        "before": str(before),
        "after": str(after),
        "reference": list(reference) if reference is not None else None,
        "hypervolume": {"before": hv_a, "after": hv_b, "change": None if hv_a is None or hv_b is None else hv_b - hv_a},
        "balanced": {
            "before": _point(result.balanced_before),
            "after": _point(result.balanced_after),
            "same_point": result.same_balanced_point,
            "compared_as": None if balanced is None else balanced.number_after,
            "objectives": [] if balanced is None else data["points"][0]["changes"],
        },
        "points": data["points"],
        "fallback": result.fallback,
        "notes": list(result.notes),
        "tolerance": tolerance,
        "regressions": regressions,
    }


def _point(p: dict | None) -> dict | None:
    return None if p is None else {"number": p["number"], "params": p["params"]}


def _params(p: dict | None) -> str:
    if p is None:
        return "none"
    return "(" + ", ".join(f"{k} {v:.3f}" for k, v in p.items()) + ")"


def render_points(result: dict, indent: str = "  ") -> list[str]:
    """One block per compared point: each objective's change with its noise, REGRESSION flagged."""
    lines = []
    for point in result["points"]:
        label = "balanced point" if point["balanced"] else "front point"
        if point["number_after"] is None:
            lines.append(f"{indent}{label} {_params(point['params'])}: not measured in the later study")
            continue
        lines.append(
            f"{indent}{label} {_params(point['params'])}: trial {point['number_before']} -> trial {point['number_after']}"
        )
        for c in point["changes"]:
            flag = "  REGRESSION" if c["regressed"] else ""
            lines.append(
                f"{indent}  {c['direction']} {c['metric']}: {c['before']:.4g} -> {c['after']:.4g} "
                f"({c['change']:+.4g}; noise ±{c['noise']:.3g}, {c['basis']}){flag}"
            )
    return lines


def render(result: dict) -> str:
    num = lambda v, spec=".4g": "n/a" if v is None else format(v, spec)  # noqa: E731
    hv, bal = result["hypervolume"], result["balanced"]
    before, after = bal["before"], bal["after"]
    lines = [
        f"compare {result['before']} -> {result['after']}",
        f"  hypervolume   {num(hv['before'])} -> {num(hv['after'])} ({num(hv['change'], '+.4g')}), reference {result['reference']}",
        f"  balanced      trial {before['number']} {_params(before['params'])} -> "
        + ("none" if after is None else f"trial {after['number']} {_params(after['params'])}")
        + (
            ""
            if after is None or bal["same_point"]
            else "  (another point: the sampler's choice, information, not a regression)"
        ),
    ]
    lines += render_points(result)
    lines += [f"  note: {n}" for n in result["notes"]]
    if result["regressions"]:
        named = [
            r.get("problem") or f"{r['metric']} at {_params(r['params'])}: {r['change']:+.4g} (noise ±{r['noise']:.3g})"
            for r in result["regressions"]
        ]
        lines.append(f"regression beyond tolerance {result['tolerance']:g} and the noise (99%): " + "; ".join(named))
    else:
        lines.append(f"no regression beyond tolerance {result['tolerance']:g} and the noise (99%)")
    return "\n".join(lines)
