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
curve has the same length and step indices as the input). With `full_windows` the
metrics read only the points whose window is full (steps window-1 onwards; all steps
averaged when there are fewer): a partial window is the mean of fewer steps, so it is
the noisiest point, and `min()` picks it. The probe uses this, because its references are
baselines, not the curve's first point (on a demo balanced merge the partial windows
put the no-learning control's retention at 0.71-0.77 on 2 of 6 seeds; full windows,
0.86-1.05; docs/probe.md).

References. By default each metric compares a curve with its own first point. The
probe passes `baseline_length`, `baseline_reward` and `baseline_entropy` instead: the
starting model measured on the same prompts with several samples each, before any
update (its curves are then per-prompt ratios and differences, see docs/probe.md), so
the reference is not one noisy step. `planned_steps` scores a probe that stopped early
over the steps it was configured to run. `diverged_metrics` gives the finite worst case
recorded for a probe whose loss, gradient or KL went non-finite. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from evals.metric_names import PROBE_METRICS, noise_metric_name, probe_metric_name

# Worst case recorded for a diverged probe's KL, nats per token (finite, so the record
# stays valid JSON and the sampler sees a very bad value rather than a failed trial).
DIVERGED_KL = 100.0


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
    diverged: bool = False  # loss, gradient or KL went non-finite: the values are the worst case
    # metric name -> half-width of its noise band (same units as the metric); see docs/probe.md
    noise: dict[str, float] | None = None
    # R[-1] - R[0] (R[0]: the baseline's reward when there is one): what the run added to the
    # reward. Ranks candidates as 128-step runs end (docs/probe.md). None only in records
    # written before it existed.
    reward_gain: float | None = None
    # Share of the steps (of the mini-batches, with mini_batches > 1) that updated the policy
    # (the rest: flat batches skipped). None from backends without an `actor/updated` curve,
    # and in records written before it existed.
    update_share: float | None = None
    # reward_dip beyond its null: max(0, dip - the dip a no-learning run exceeds 1% of the
    # time, or twice the dip's noise band where larger; evals.probe.baseline.fall_threshold).
    # None without a baseline, with noise_samples 0, and in records written before it existed.
    reward_fall: float | None = None

    def as_metrics(self) -> dict[str, float | None]:
        """`probe/<name>` -> value for every name in PROBE_METRICS (floats; None if undefined),
        plus `probe/<name>_noise` (the noise band's half-width) for every metric that has one."""
        out: dict[str, float | None] = {}
        for name in PROBE_METRICS:
            value = getattr(self, name)
            out[probe_metric_name(name)] = None if value is None else float(value)
        for name, width in (self.noise or {}).items():
            out[noise_metric_name(name)] = float(width)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StabilityMetrics:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("reward_recovery_step") is not None:
            values["reward_recovery_step"] = int(values["reward_recovery_step"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> StabilityMetrics:
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


def _required(name: str, values: Sequence[float] | None, steps: int | None) -> list[float]:
    checked = _checked(name, values, steps)
    if checked is None:
        raise ValueError(f"{name} curve is required, got None")
    return checked


def stability_metrics(
    length: Sequence[float],
    reward: Sequence[float],
    *,
    kl: Sequence[float] | None = None,
    entropy: Sequence[float] | None = None,
    window: int = 1,
    baseline_length: float | None = None,
    baseline_reward: float | None = None,
    baseline_entropy: float | None = None,
    planned_steps: int | None = None,
    full_windows: bool = False,
) -> StabilityMetrics:
    """Stability metrics from per-step curves (index 0 = the initial candidate).

    length: mean response length per step (tokens, or a ratio to a baseline); reward:
    mean raw reward per step (or its change from a baseline); kl, entropy: optional
    per-step means. All curves must have the same number of finite points (ValueError
    otherwise). window: trailing moving average applied to every curve first (1 = none).
    baseline_length / baseline_reward / baseline_entropy: the references that retention,
    growth, dip, recovery and entropy drop are measured against (default: the smoothed
    curve's first point). planned_steps: the steps the probe was configured to run
    (default: the curve's length); a dip never recovered scores this many steps, so a
    probe that stopped early never scores better than one that ran to the end.
    full_windows: read only the smoothed points with a full window (see the module doc);
    the step indices reported (reward_recovery_step) stay those of the input.
    """
    length_values = _required("length", length, None)
    steps = len(length_values)
    reward_values = _required("reward", reward, steps)
    kl_values = _checked("kl", kl, steps)
    entropy_values = _checked("entropy", entropy, steps)

    if planned_steps is not None and planned_steps < steps:
        raise ValueError(f"planned_steps ({planned_steps}) is below the {steps} points of the curves")
    # the first point read: with full_windows, the first step whose window is full
    start = min(window, steps) - 1 if full_windows else 0
    L = moving_average(length_values, window)[start:]
    R = moving_average(reward_values, window)[start:]
    first_length = float(baseline_length) if baseline_length is not None else L[0]
    first_reward = float(baseline_reward) if baseline_reward is not None else R[0]
    retention = min(L) / first_length if first_length > 0 else None
    growth = L[-1] / first_length if first_length > 0 else None

    reward_min = min(R)
    dip = max(0.0, first_reward - reward_min)
    recovery = None
    if dip > 0:
        low_step = R.index(reward_min)  # first step at the minimum
        recovery = next((start + t for t in range(low_step + 1, len(R)) if R[t] >= first_reward), None)

    kl_final = moving_average(kl_values, window)[-1] if kl_values is not None else None
    entropy_drop = None
    if entropy_values is not None:
        H = moving_average(entropy_values, window)[start:]
        entropy_drop = (float(baseline_entropy) if baseline_entropy is not None else H[0]) - min(H)
    return StabilityMetrics(
        length_retention=retention,
        length_growth=growth,
        reward_dip=dip,
        reward_recovery_step=recovery,
        reward_steps_to_recover=0 if dip == 0 else (recovery if recovery is not None else (planned_steps or steps)),
        reward_final=R[-1],
        reward_gain=R[-1] - first_reward,
        kl_final=kl_final,
        entropy_drop=entropy_drop,
        steps=steps,
        window=window,
    )


def diverged_metrics(
    *,
    planned_steps: int,
    window: int = 1,
    reward_scale: float = 1.0,
    baseline_entropy: float | None = None,
    seen: StabilityMetrics | None = None,
) -> StabilityMetrics:
    """The finite worst case recorded for a probe that diverged (non-finite loss, gradient or KL).

    length_retention and length_growth 0 (every length constraint violated), reward_dip
    (and reward_fall) the larger of `reward_scale` (the reward's range, e.g. 1 for
    exact_match) and the dip already seen, no recovery (reward_steps_to_recover =
    planned_steps), reward_final and reward_gain lowered by that dip, kl_final
    DIVERGED_KL, entropy_drop the whole starting entropy, stopped_early and diverged True.
    `seen`: metrics of the steps that completed, when there were any.
    """
    dip = max(float(reward_scale), seen.reward_dip if seen is not None else 0.0)
    reward_final = seen.reward_final if seen is not None else 0.0
    return StabilityMetrics(
        length_retention=0.0,
        length_growth=0.0,
        reward_dip=dip,
        reward_recovery_step=None,
        reward_steps_to_recover=planned_steps,
        reward_final=reward_final - dip if seen is not None else -dip,
        reward_gain=(seen.reward_gain or 0.0) - dip if seen is not None else -dip,
        kl_final=DIVERGED_KL,
        entropy_drop=float(baseline_entropy)
        if baseline_entropy is not None
        else (seen.entropy_drop if seen is not None else None),
        stopped_early=True,
        steps=seen.steps if seen is not None else 0,
        window=window,
        diverged=True,
        reward_fall=dip,
    )


def length_collapsed(
    length: Sequence[float], *, threshold: float, patience: int, reference: float | None = None
) -> bool:
    """True when the last `patience` points of `length` are all below threshold * reference
    (default reference: length[0]).

    The early-stop rule of the probe; step 0 never counts (it is the starting model).
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if len(length) < patience + 1:
        return False
    limit = threshold * (length[0] if reference is None else reference)
    return all(value < limit for value in length[-patience:])
