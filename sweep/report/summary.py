"""What a study amounts to: counts, front, reference point, hypervolume and balanced point.

`summarize` computes a `ParetoSummary` from a trials table; `summarize_spec` takes the
objectives, constraints and report options from a spec. The summary round-trips through
JSON, so `compare` and `export` read it back without recomputing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from sweep.errors import SweepError
from sweep.report.balanced import BalancedPoint, balanced_point, check_rule
from sweep.report.front import (
    COMPLETE,
    Objective,
    as_objectives,
    default_reference,
    eligible_mask,
    front_hypervolume,
    pareto_front,
)


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
