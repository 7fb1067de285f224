"""Stability metrics: pure functions of a probe's per-step curves.

The two failure signs of RL from a bad actor initialization, measured on the curves of
a short probe (step 0 is the candidate itself, before any update):

- sequence-length collapse: `length_retention` = min(length) / length[0] well below 1;
- the reward hockey stick: `reward_dip` = max(0, reward[0] - min(reward)) (reward units)
  and `reward_recovery_step`, the first step after the minimum where the reward is back
  at reward[0] or above (None with no dip or no recovery: the best and the worst case,
  so objectives should use `reward_steps_to_recover`, which is 0 and len(curve) there).

With `window > 1` every curve is first smoothed with a trailing moving average of that
many steps (the first steps average over the steps available so far, so the smoothed
curve has the same length and step indices as the input). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

from evals.metric_names import PROBE_METRICS, probe_metric_name


@dataclass(frozen=True)
class StabilityMetrics:
    """Stability metrics of one probe. None means "undefined" (see each field)."""

    length_retention: float | None  # min(L) / L[0]; None when L[0] == 0
    length_growth: float | None  # L[-1] / L[0]; None when L[0] == 0
    reward_dip: float  # max(0, R[0] - min(R)), reward units
    reward_recovery_step: int | None  # step index; None with no dip or no recovery
    # reward_recovery_step made total, for objectives: 0 with no dip, len(curve) with no recovery
    reward_steps_to_recover: int
    reward_final: float  # R[-1]
    kl_final: float | None  # KL[-1] to the initial candidate; None without a KL curve
    entropy_drop: float | None  # H[0] - min(H), nats per token; None without an entropy curve
    stopped_early: bool = False  # the probe stopped early on sequence-length collapse
    steps: int = 0  # points in the curves the metrics were computed from
    window: int = 1  # trailing moving-average window applied first

    def as_metrics(self) -> dict[str, float | None]:
        """`probe/<name>` -> value for every name in PROBE_METRICS (floats; None if undefined)."""
        out: dict[str, float | None] = {}
        for name in PROBE_METRICS:
            value = getattr(self, name)
            out[probe_metric_name(name)] = None if value is None else float(value)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StabilityMetrics":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("reward_recovery_step") is not None:
            values["reward_recovery_step"] = int(values["reward_recovery_step"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "StabilityMetrics":
        return cls.from_dict(json.loads(text))


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: out[t] = mean(values[max(0, t - window + 1) : t + 1])."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window == 1:
        return [float(v) for v in values]
    out: list[float] = []
    for t in range(len(values)):
        span = values[max(0, t - window + 1) : t + 1]
        out.append(float(sum(span)) / len(span))
    return out


def _checked(name: str, values: Sequence[float] | None, steps: int | None) -> list[float] | None:
    if values is None:
        return None
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{name} curve is empty")
    if steps is not None and len(values) != steps:
        raise ValueError(f"{name} curve has {len(values)} points, the length curve has {steps}")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"{name} curve has non-finite values: {values}")
    return values


def stability_metrics(
    length: Sequence[float],
    reward: Sequence[float],
    *,
    kl: Sequence[float] | None = None,
    entropy: Sequence[float] | None = None,
    window: int = 1,
) -> StabilityMetrics:
    """Stability metrics from per-step curves (index 0 = the initial candidate).

    length: mean response length per step (tokens); reward: mean raw reward per step;
    kl, entropy: optional per-step means. All curves must have the same number of
    finite points (ValueError otherwise). window: trailing moving average applied to
    every curve first (1 = none).
    """
    length_values = _checked("length", length, None)
    steps = len(length_values)
    reward_values = _checked("reward", reward, steps)
    kl_values = _checked("kl", kl, steps)
    entropy_values = _checked("entropy", entropy, steps)

    L = moving_average(length_values, window)
    R = moving_average(reward_values, window)
    first_length = L[0]
    retention = min(L) / first_length if first_length > 0 else None
    growth = L[-1] / first_length if first_length > 0 else None

    reward_min = min(R)
    dip = max(0.0, R[0] - reward_min)
    recovery = None
    if dip > 0:
        low_step = R.index(reward_min)  # first step at the minimum
        recovery = next((t for t in range(low_step + 1, steps) if R[t] >= R[0]), None)

    kl_final = moving_average(kl_values, window)[-1] if kl_values is not None else None
    entropy_drop = None
    if entropy_values is not None:
        H = moving_average(entropy_values, window)
        entropy_drop = H[0] - min(H)
    return StabilityMetrics(
        length_retention=retention,
        length_growth=growth,
        reward_dip=dip,
        reward_recovery_step=recovery,
        reward_steps_to_recover=0 if dip == 0 else (recovery if recovery is not None else steps),
        reward_final=R[-1],
        kl_final=kl_final,
        entropy_drop=entropy_drop,
        steps=steps,
        window=window,
    )


def length_collapsed(length: Sequence[float], *, threshold: float, patience: int) -> bool:
    """True when the last `patience` points of `length` are all below threshold * length[0].

    The early-stop rule of the probe; step 0 (the reference) never counts.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(length) < patience + 1:
        return False
    limit = threshold * length[0]
    return all(value < limit for value in length[-patience:])
