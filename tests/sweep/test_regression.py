"""The noise model of sweep.report.regression on hand-built measurements with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sweep.report.front import Objective
from sweep.report.regression import Measured, difference_noise, hypervolume_noise, metric_change, t995, value_sd

TOY = "lm_eval/toy/exact_match,final"


def test_binomial_band_is_pooled_so_a_zero_score_still_has_noise():
    noise, basis = difference_noise(TOY, Measured((1 / 24,), n_docs=24), Measured((0.0,), n_docs=24))
    p = 1 / 48
    assert (
        noise == pytest.approx(2.576 * math.sqrt(p * (1 - p) * 2 / 24)) and basis == "binomial at 24 and 24 documents"
    )
    same, _ = difference_noise(TOY, Measured((0.0,), n_docs=24), Measured((0.0,), n_docs=24))
    assert same == 0.0  # nothing was ever right: no doubt about "no change"


def test_lm_eval_without_a_limit_uses_the_recorded_stderr_or_says_unknown():
    noise, basis = difference_noise(TOY, Measured((0.5,), stderr=0.03), Measured((0.4,), stderr=0.04))
    assert noise == pytest.approx(2.576 * 0.05) and basis == "lm-eval's stderr"
    assert difference_noise(TOY, Measured((0.5,)), Measured((0.4,))) == (
        0.0,
        "noise unknown (no limit, no recorded stderr)",
    )


def test_probe_band_alone_is_the_recorded_90_percent_band_scaled_to_99():
    noise, basis = difference_noise("probe/x", Measured((1.0,), bands=(0.1,)), Measured((0.9,), bands=(0.1,)))
    assert noise == pytest.approx(2.576 / 1.645 * 0.1 * math.sqrt(2)) and basis == "probe bootstrap band"


def test_probe_seed_spread_wins_when_it_is_wider_than_the_bootstrap():
    before, after = Measured((1.43,), bands=(0.36,)), Measured((0.67, 0.89, 0.90), bands=(0.18, 0.2, 0.22))
    noise, basis = difference_noise("probe/length_retention", before, after)
    spread = np.sum((np.array(after.values) - np.mean(after.values)) ** 2)
    expected = 9.925 * math.sqrt(spread / 2) * math.sqrt(1 + 1 / 3)
    assert noise == pytest.approx(expected) and basis == "probe seeds: 1 before, 3 after"
    change = metric_change(Objective("probe/length_retention", "maximize"), before, after, tolerance=0.02)
    assert change.change == pytest.approx(np.mean(after.values) - 1.43) and not change.regressed
    # the same drop with no seed spread (identical repeats) falls back to the bootstrap band and regresses
    flat = Measured((0.67, 0.67, 0.67), bands=(0.05, 0.05, 0.05))
    assert metric_change(
        Objective("probe/length_retention", "maximize"), Measured((1.43,), bands=(0.05,)), flat
    ).regressed


def test_t_quantiles_shrink_towards_z():
    assert t995(2) == 9.925 and t995(21) == 2.819 and t995(500) == 2.576
    assert all(t995(d) >= t995(d + 1) for d in range(1, 200))


def test_hypervolume_noise_is_zero_without_noise_and_grows_with_it():
    values = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    kwargs = {"directions": ["maximize", "maximize"], "reference": [0.0, 0.0]}
    assert hypervolume_noise(values, np.zeros_like(values), **kwargs) == 0.0
    small = hypervolume_noise(values, np.full_like(values, 0.01), **kwargs)
    large = hypervolume_noise(values, np.full_like(values, 0.05), **kwargs)
    assert 0 < small < large


def test_value_sd_per_kind():
    assert value_sd(TOY, 0.5, {}, 24) == pytest.approx(math.sqrt(0.25 / 24))
    assert value_sd(TOY, 0.0, {}, 24) == pytest.approx(1 / 48)  # half a document's worth, not 0
    assert value_sd("probe/x", 1.0, {"probe/x_noise": 0.1645}, None) == pytest.approx(0.1)
