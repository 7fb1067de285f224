"""Stability metrics on hand-built curves with known answers."""

from __future__ import annotations

import json
import math

import pytest

from evals.metric_names import PROBE_METRICS
from evals.stability import StabilityMetrics, length_collapsed, moving_average, stability_metrics

FLAT = [0.5] * 5


def test_flat_curves_keep_everything():
    m = stability_metrics([10, 10, 10, 10], [0.5, 0.5, 0.5, 0.5])
    assert m.length_retention == 1.0
    assert m.length_growth == 1.0
    assert m.reward_dip == 0.0
    assert m.reward_recovery_step is None  # no dip, so nothing to recover from
    assert m.reward_steps_to_recover == 0
    assert m.reward_final == 0.5 and m.reward_gain == 0.0
    assert m.kl_final is None and m.entropy_drop is None
    assert m.steps == 4 and m.window == 1


def test_length_collapse():
    m = stability_metrics([20, 15, 8, 5, 4], FLAT)
    assert m.length_retention == pytest.approx(0.2)
    assert m.length_growth == pytest.approx(0.2)


def test_length_growth_after_a_small_dip():
    m = stability_metrics([10, 9, 12, 15], [0.1, 0.2, 0.3, 0.4])
    assert m.length_retention == pytest.approx(0.9)
    assert m.length_growth == pytest.approx(1.5)
    assert m.reward_dip == 0.0 and m.reward_recovery_step is None  # rising reward: no dip


def test_hockey_stick_with_recovery():
    reward = [0.6, 0.2, 0.1, 0.3, 0.5, 0.6, 0.7]
    m = stability_metrics([10] * 7, reward)
    assert m.reward_dip == pytest.approx(0.5)
    assert m.reward_recovery_step == 5  # first step after the minimum (step 2) back at 0.6
    assert m.reward_steps_to_recover == 5
    assert m.reward_final == pytest.approx(0.7)
    assert m.reward_gain == pytest.approx(0.1)  # the dip does not count: only where the run ended


def test_reward_gain_reads_against_the_baseline_and_the_smoothed_end():
    # three-step window, full windows only: the last smoothed point is (0.5 + 0.6 + 0.7) / 3
    m = stability_metrics([10] * 6, [0.2, 0.2, 0.3, 0.5, 0.6, 0.7], window=3, full_windows=True, baseline_reward=0.25)
    assert m.reward_final == pytest.approx(0.6)
    assert m.reward_gain == pytest.approx(0.35)
    assert m.as_metrics()["probe/reward_gain"] == pytest.approx(0.35)
    # a record written before the metric existed reads back with it undefined, not as an error
    old = {k: v for k, v in m.to_dict().items() if k != "reward_gain"}
    assert StabilityMetrics.from_dict(old).as_metrics()["probe/reward_gain"] is None


def test_hockey_stick_without_recovery():
    m = stability_metrics([10] * 5, [0.6, 0.2, 0.1, 0.3, 0.5])
    assert m.reward_dip == pytest.approx(0.5)
    assert m.reward_recovery_step is None
    assert m.reward_steps_to_recover == 5  # never recovered: the number of steps, worse than any recovery


def test_recovery_at_the_last_step():
    m = stability_metrics([10, 10, 10], [0.6, 0.1, 0.6])
    assert m.reward_recovery_step == 2
    assert m.reward_steps_to_recover == 2


def test_recovery_counts_from_the_first_minimum():
    m = stability_metrics([10] * 5, [0.5, 0.1, 0.6, 0.1, 0.4])
    assert m.reward_dip == pytest.approx(0.4)
    assert m.reward_recovery_step == 2


def test_noisy_curves_with_smoothing():
    length = [10, 12, 8, 10, 6, 8, 4]
    reward = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    raw = stability_metrics(length, reward)
    assert raw.length_retention == pytest.approx(0.4)
    assert raw.reward_dip == pytest.approx(1.0)
    assert raw.reward_recovery_step == 2
    # trailing window 2: length -> [10, 11, 10, 9, 8, 7, 6], reward -> [1, .5, .5, .5, .5, 1, 1]
    smooth = stability_metrics(length, reward, window=2)
    assert smooth.length_retention == pytest.approx(0.6)
    assert smooth.length_growth == pytest.approx(0.6)
    assert smooth.reward_dip == pytest.approx(0.5)
    assert smooth.reward_recovery_step == 5
    assert smooth.window == 2


def test_trailing_moving_average_uses_the_steps_available_so_far():
    assert moving_average([6, 0, 3, 9], 3) == pytest.approx([6, 3, 3, 4])
    assert moving_average([1, 2], 5) == pytest.approx([1, 1.5])
    assert moving_average([1, 2, 3], 1) == [1.0, 2.0, 3.0]


def test_kl_final_and_entropy_drop():
    m = stability_metrics([10] * 4, [0.5] * 4, kl=[0.0, 0.1, 0.2, 0.3], entropy=[2.0, 1.5, 1.2, 1.4])
    assert m.kl_final == pytest.approx(0.3)
    assert m.entropy_drop == pytest.approx(0.8)
    smooth = stability_metrics([10] * 4, [0.5] * 4, kl=[0.0, 0.1, 0.2, 0.3], entropy=[2.0, 1.5, 1.2, 1.4], window=2)
    assert smooth.kl_final == pytest.approx(0.25)
    assert smooth.entropy_drop == pytest.approx(0.7)  # smoothed entropy [2, 1.75, 1.35, 1.3]


def test_zero_initial_length_leaves_length_ratios_undefined():
    m = stability_metrics([0, 3, 5], [0.1, 0.2, 0.3])
    assert m.length_retention is None and m.length_growth is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": [], "reward": []}, "empty"),
        ({"length": [1, 2], "reward": [1.0]}, "reward curve has 1 points"),
        ({"length": [1, 2], "reward": [1.0, 2.0], "kl": [0.0]}, "kl curve has 1 points"),
        ({"length": [1, math.nan], "reward": [1.0, 2.0]}, "non-finite"),
        ({"length": [1, 2], "reward": [1.0, 2.0], "window": 0}, "window"),
    ],
)
def test_bad_curves_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stability_metrics(**kwargs)


def test_as_metrics_names_every_probe_metric_and_round_trips():
    m = stability_metrics([10, 5, 12], [0.6, 0.1, 0.3], kl=[0, 0.1, 0.2], entropy=[2, 1, 1.5])
    named = m.as_metrics()
    assert list(named) == [f"probe/{n}" for n in PROBE_METRICS]
    assert named["probe/length_retention"] == pytest.approx(0.5)
    assert named["probe/reward_recovery_step"] is None  # no recovery: undefined, not a number
    assert named["probe/stopped_early"] == 0.0
    assert StabilityMetrics.from_json(json.dumps(json.loads(m.to_json()))) == m
    recovered = stability_metrics([10] * 3, [0.6, 0.1, 0.6])
    assert StabilityMetrics.from_dict(json.loads(recovered.to_json())) == recovered
    assert recovered.as_metrics()["probe/reward_recovery_step"] == 2.0


def test_length_collapsed_needs_patience_consecutive_low_steps():
    assert length_collapsed([10, 4, 4], threshold=0.5, patience=2)
    assert not length_collapsed([10, 4, 6, 4], threshold=0.5, patience=2)  # interrupted
    assert not length_collapsed([10, 4], threshold=0.5, patience=2)  # not enough steps yet
    assert not length_collapsed([10, 5, 5], threshold=0.5, patience=2)  # exactly at the threshold


def test_baselines_replace_the_first_point_as_reference():
    # normalized curves: the baseline (10 tokens, reward 0.5, entropy 2) is the reference, not step 0
    m = stability_metrics(
        [12, 8, 11],
        [0.4, 0.2, 0.6],
        entropy=[2.5, 1.5, 2.0],
        baseline_length=10,
        baseline_reward=0.5,
        baseline_entropy=2.0,
    )
    assert m.length_retention == pytest.approx(0.8) and m.length_growth == pytest.approx(1.1)
    assert m.reward_dip == pytest.approx(0.3) and m.reward_recovery_step == 2
    assert m.entropy_drop == pytest.approx(0.5)
    # without baselines the same curves read against their first points
    m = stability_metrics([12, 8, 11], [0.4, 0.2, 0.6])
    assert m.length_retention == pytest.approx(8 / 12) and m.reward_dip == pytest.approx(0.2)


def test_planned_steps_score_an_unrecovered_dip():
    m = stability_metrics([10, 10, 10], [0.5, 0.1, 0.2], planned_steps=12)
    assert m.reward_steps_to_recover == 12 and m.steps == 3
    with pytest.raises(ValueError, match="planned_steps"):
        stability_metrics([10, 10, 10], [0.5, 0.1, 0.2], planned_steps=2)


def test_diverged_metrics_are_the_finite_worst_case():
    from evals.stability import DIVERGED_KL, diverged_metrics

    seen = stability_metrics([10, 9], [0.5, 0.2])
    m = diverged_metrics(planned_steps=8, reward_scale=2.0, baseline_entropy=1.5, seen=seen)
    values = m.as_metrics()
    assert values["probe/diverged"] == 1.0 and values["probe/stopped_early"] == 1.0
    assert (m.length_retention, m.length_growth, m.reward_steps_to_recover, m.kl_final) == (0.0, 0.0, 8, DIVERGED_KL)
    assert m.reward_dip == 2.0 and m.entropy_drop == 1.5
    assert m.reward_gain == pytest.approx(-0.3 - 2.0)  # the gain seen (-0.3), lowered by the worst-case dip
    assert all(v is None or math.isfinite(v) for v in values.values())
    assert StabilityMetrics.from_json(m.to_json()) == m


def test_full_windows_read_only_smoothed_points_whose_window_is_full():
    # a noisy first step (6) is the minimum of the partial-window curve [6, 8, 8.67, 10, 10.33, 9, 9.67]
    length = [6, 10, 10, 10, 11, 6, 12]
    reward = [0.5, 0.1, 0.5, 0.2, 0.2, 0.2, 0.8]
    partial = stability_metrics(length, reward, window=3, baseline_length=10, baseline_reward=0.5)
    full = stability_metrics(length, reward, window=3, baseline_length=10, baseline_reward=0.5, full_windows=True)
    assert partial.length_retention == pytest.approx(0.6)
    assert full.length_retention == pytest.approx(26 / 30)  # min of [8.67, 10, 10.33, 9, 9.67]
    assert full.length_growth == partial.length_growth == pytest.approx(29 / 30)
    # smoothed reward from step 2: [0.367, 0.267, 0.3, 0.2, 0.4]; the dip's low is step 5
    assert full.reward_dip == pytest.approx(0.3)
    assert full.reward_recovery_step is None and full.reward_steps_to_recover == 7
    # step indices stay those of the input: smoothed [.., 0.2 (step 5), 0.4, 0.73 (step 7)]
    m = stability_metrics(length + [10], reward + [1.2], window=3, baseline_reward=0.5, full_windows=True)
    assert m.reward_recovery_step == 7
    # fewer steps than the window: one point, the mean of all of them
    short = stability_metrics([6, 12], [0.5, 0.5], window=3, baseline_length=10, full_windows=True)
    assert short.length_retention == pytest.approx(0.9) == short.length_growth
