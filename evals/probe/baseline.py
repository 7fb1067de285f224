"""Per-prompt baselines, the normalized curves they give, and a bootstrap noise band.

Why: a probe step draws a few prompts, and prompts differ several-fold in answer length
and difficulty, so a step's raw mean length mostly says which prompts it drew. Before
the first update the probe samples every prompt of its pool `baseline_samples` times
from the starting model. A step's normalized value is then the mean over the prompts it
drew of each prompt's value relative to that prompt's own baseline, put back in the
pool's units:

    length[t]  = B_len  * mean_i ( mean length of prompt i's group at t / B_len_i )
    score[t]   = B_score + mean_i ( mean reward of prompt i's group at t - B_score_i )
    entropy[t] = B_ent  + mean_i ( mean token entropy of the group at t - B_ent_i )

(B_x_i: prompt i's baseline mean, B_x: the mean of B_x_i over the pool). The stability
metrics then compare these curves with B_len, B_score and B_ent, so a model that does
not learn reads length_retention ~1 and reward_dip ~0 whatever the draw.

The noise band of each metric is a bootstrap: each replicate resamples, with
replacement, every baseline prompt's samples, each step's drawn prompts, and each drawn
group's completions, and recomputes the metrics; the band is half the width of the
central 90% of the replicates (docs/probe.md compares it with the spread of a
no-learning control across seeds). Pure Python: no torch.

The band says how sure the dip of *this* run is, not whether a run that learned nothing
would read a dip as deep: the smoothed reward's minimum over many noisy steps lies under
the start even when nothing changed (on the demo a no-learning run of 128 steps reads a
dip of 0.06-0.18). `null_reward` simulates that no-learning run from the baseline's
own samples, so a long run's dip can be held against its null without running one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from evals.probe.records import PromptSamples
from evals.stability import StabilityMetrics, stability_metrics

NOISE_METRICS = (
    "length_retention",
    "length_growth",
    "reward_dip",
    "reward_final",
    "reward_gain",
    "reward_steps_to_recover",
    "entropy_drop",
)
# Per-step noise curves recorded beside the normalized curves (half-widths, same units).
NOISE_CURVES = ("response_length/normalized/noise", "critic/score/normalized/noise")
NOISE_QUANTILE = 0.05  # the band is the central 1 - 2 * 0.05 = 90% of the bootstrap replicates


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class Baseline:
    """Per-prompt means of the starting model: length (tokens), score, entropy (nats/token)."""

    def __init__(self, samples: Sequence[PromptSamples]):
        if not samples:
            raise ValueError("a baseline needs at least one prompt")
        self.length = {s.prompt: _mean(s.lengths) for s in samples}
        self.score = {s.prompt: _mean(s.scores) for s in samples}
        self.entropy = {s.prompt: _mean(s.entropies) for s in samples}
        self.pool_length = _mean(list(self.length.values()))
        self.pool_score = _mean(list(self.score.values()))
        self.pool_entropy = _mean(list(self.entropy.values()))

    def normalize(self, step: Sequence[PromptSamples]) -> tuple[float, float, float]:
        """(length, score, entropy) of one step, normalized per prompt (see the module doc)."""
        missing = [s.prompt for s in step if s.prompt not in self.length]
        if missing:
            raise ValueError(f"prompts {missing} were drawn but have no baseline")
        ratios = [_mean(s.lengths) / self.length[s.prompt] if self.length[s.prompt] > 0 else 1.0 for s in step]
        length = self.pool_length * _mean(ratios)
        score = self.pool_score + _mean([_mean(s.scores) - self.score[s.prompt] for s in step])
        entropy = self.pool_entropy + _mean([_mean(s.entropies) - self.entropy[s.prompt] for s in step])
        return length, score, entropy


def normalized_curves(
    baseline: Sequence[PromptSamples], steps: Sequence[Sequence[PromptSamples]]
) -> tuple[list[float], list[float], list[float]]:
    """(length, score, entropy) curves, one point per step, normalized per prompt."""
    base = Baseline(baseline)
    points = [base.normalize(step) for step in steps]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def normalized_metrics(
    baseline: Sequence[PromptSamples],
    steps: Sequence[Sequence[PromptSamples]],
    *,
    kl: Sequence[float] | None,
    window: int,
    planned_steps: int,
) -> StabilityMetrics:
    """Stability metrics of the normalized curves against the pool's baseline means."""
    base = Baseline(baseline)
    length, score, entropy = normalized_curves(baseline, steps)
    return stability_metrics(
        length,
        score,
        kl=kl,
        entropy=entropy,
        window=window,
        baseline_length=base.pool_length,
        baseline_reward=base.pool_score,
        baseline_entropy=base.pool_entropy,
        planned_steps=planned_steps,
        full_windows=True,
    )


def _resample(rng: random.Random, samples: PromptSamples) -> PromptSamples:
    return _draw(rng, samples, len(samples.lengths))


def bootstrap_noise(
    baseline: Sequence[PromptSamples],
    steps: Sequence[Sequence[PromptSamples]],
    *,
    window: int,
    planned_steps: int,
    replicates: int,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metric noise, curve noise): half-width of the central 90% of `replicates`
    bootstrap replicates per metric in NOISE_METRICS (metrics undefined in some replicate
    are left out), and per step of the normalized length and score curves (keyed by
    NOISE_CURVES)."""
    if replicates < 2 or not steps:
        return {}, {}
    rng = random.Random(f"probe-noise-{seed}")
    values: dict[str, list[float]] = {name: [] for name in NOISE_METRICS}
    curve_values: list[tuple[list[float], list[float]]] = []
    for _ in range(replicates):
        base = [_resample(rng, s) for s in baseline]
        drawn = []
        for step in steps:
            groups = [step[rng.randrange(len(step))] for _ in step]
            drawn.append([_resample(rng, g) for g in groups])
        metrics = normalized_metrics(base, drawn, kl=None, window=window, planned_steps=planned_steps)
        for name in NOISE_METRICS:
            value = getattr(metrics, name)
            if value is not None:
                values[name].append(float(value))
        length, score, _ = normalized_curves(base, drawn)
        curve_values.append((length, score))
    out = {name: _half_width(sample) for name, sample in values.items() if len(sample) == replicates}
    curves = {
        NOISE_CURVES[0]: [_half_width([c[0][t] for c in curve_values]) for t in range(len(steps))],
        NOISE_CURVES[1]: [_half_width([c[1][t] for c in curve_values]) for t in range(len(steps))],
    }
    return out, curves


def _half_width(sample: list[float]) -> float:
    sample = sorted(sample)
    n = len(sample)
    low = sample[int(NOISE_QUANTILE * (n - 1))]
    high = sample[int(round((1 - NOISE_QUANTILE) * (n - 1)))]
    return (high - low) / 2


NULL_QUANTILE = 0.99  # a dip beyond the null is deeper than 99% of the simulated no-learning runs
NULL_POINT_QUANTILE = 0.95  # a point back at the start is above the lowest 5% of a no-learning run's points


def _draw(rng: random.Random, samples: PromptSamples, n: int) -> PromptSamples:
    picks = [rng.randrange(len(samples.lengths)) for _ in range(n)]
    return PromptSamples(
        samples.prompt,
        tuple(samples.lengths[i] for i in picks),
        tuple(samples.scores[i] for i in picks),
        tuple(samples.entropies[i] for i in picks),
    )


def null_reward(
    baseline: Sequence[PromptSamples],
    steps: Sequence[Sequence[PromptSamples]],
    *,
    window: int,
    replicates: int,
    seed: int = 0,
) -> tuple[float, float] | None:
    """(dip, point): what a run that never left its starting model reads, with these steps'
    prompts and group sizes. Each replicate resamples the baseline (as bootstrap_noise does)
    and replaces every drawn group by as many completions drawn, with replacement, from the
    baseline's samples of the same prompt, then smooths the normalized reward as the probe
    does (full windows). `dip`: the reward_dip such a run exceeds only 1% of the time;
    `point`: how far under the start a single smoothed point of it lies only 5% of the time.
    None when a drawn prompt has no baseline or `replicates` < 2.

    Where every baseline sample of every drawn prompt scores the same (a candidate at its
    ceiling) the simulation cannot vary and both are 0: hold a dip against the bootstrap
    band of the run's own dip as well (sweep.run.calibrate.reward_shape)."""
    from evals.stability import moving_average

    by_prompt = {s.prompt: s for s in baseline}
    if replicates < 2 or not steps or any(g.prompt not in by_prompt for step in steps for g in step):
        return None
    rng = random.Random(f"probe-null-{seed}")
    first = min(window, len(steps)) - 1  # full windows only
    dips, deficits = [], []
    for _ in range(replicates):
        base = [_resample(rng, s) for s in baseline]
        drawn = [[_draw(rng, by_prompt[g.prompt], len(g.lengths)) for g in step] for step in steps]
        _, score, _ = normalized_curves(base, drawn)
        start = Baseline(base).pool_score
        under = [start - v for v in moving_average(score, window)[first:]]
        dips.append(max(0.0, max(under)))
        deficits.extend(under)
    dips.sort()
    deficits.sort()
    return dips[min(len(dips) - 1, int(NULL_QUANTILE * len(dips)))], max(
        0.0, deficits[min(len(deficits) - 1, int(NULL_POINT_QUANTILE * len(deficits)))]
    )


def fall_threshold(null_dip: float, dip_noise: float | None) -> float:
    """The dip a run must exceed to have fallen beyond its null: the simulated no-learning
    run's dip (null_reward), or twice the run's own dip band where that is larger (the floor
    for a candidate at its ceiling, whose null cannot vary but whose real no-learning runs
    still read a wrong answer now and then: 0.01-0.04 on the demo)."""
    return max(null_dip, 2 * (dip_noise or 0.0))


def reward_fall(dip: float, null_dip: float, dip_noise: float | None) -> float:
    """How far `dip` goes beyond its null (fall_threshold): probe/reward_fall, and the long
    run's fall in sweep calibrate; 0 when it does not."""
    return max(0.0, dip - fall_threshold(null_dip, dip_noise))
