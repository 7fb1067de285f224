"""Typed records of a sweep trial, lossless through JSON (and Optuna user attributes)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Optuna user-attribute keys of a trial's record (what the table and recovery read back).
ATTR_METRICS = "metrics"
ATTR_CURVES = "curves"
ATTR_TIMINGS = "timings"
ATTR_WORKER = "worker"
ATTR_NOTES = "notes"
ATTR_ERROR = "error"
ATTR_RAY_TRIAL_ID = "ray_trial_id"
ATTR_FINISHED = "finished_at"
ATTR_FAILURE_KIND = "failure_kind"  # error | infrastructure | orphaned | interrupted | skipped
ATTR_RETRIES = "retries"  # errors of the attempts retried before this outcome (budget.max_failures)
ATTR_DRIVER = "driver"  # the driver that launched the trial (sweep.study.lease)
ATTR_RECIPE = "recipe"  # the models and merge the trial ran with (sweep.study.fingerprint)


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured.

    params:   the candidate (alpha, beta, and any searched method parameters)
    metrics:  every metric by its stable name (lm_eval/<task>/<metric>,<filter>, probe/<name>);
              None where a metric is undefined (e.g. probe/reward_recovery_step with no recovery)
    curves:   per-step probe curves by verl-style name (response_length/mean, critic/score/mean, ...)
    timings:  seconds per phase (merge_s, lm_eval_s, probe_s, total_s, first_load_s)
    worker:   host and pid of the worker that ran it
    notes:    free-form facts worth keeping (probe stopped early and why, ...)
    """

    params: dict[str, float]
    metrics: dict[str, float | None]
    curves: dict[str, list[float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, default=_jsonable)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(**{k: data.get(k, {}) for k in ("params", "metrics", "curves", "timings", "worker", "notes")})

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        return cls.from_dict(json.loads(text))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def clean_metric(value: Any) -> float | None:
    """A plain float, or None for missing / NaN / infinite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
