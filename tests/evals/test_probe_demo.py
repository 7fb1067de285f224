"""The probe on the demo family, with the demo spec's probe settings (fewer steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.probe import ProbeConfig, run_probe
from tests.evals.test_probe import load

DEMO_SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
STEPS = 3


@pytest.fixture(scope="module")
def demo_family():
    build = pytest.importorskip("sweep.demo.build", reason="the demo family builder is not there yet")
    return build.ensure_family()


@pytest.fixture(scope="module")
def demo_results(demo_family) -> dict:
    from sweep.spec import PROBE_SCALE_FIELDS, load_spec

    settings = load_spec(DEMO_SPEC, resolve_demo=False).evals.probe.model_dump(exclude=set(PROBE_SCALE_FIELDS))
    # 16 prompts x 2 samples per step: enough completions for a steady step-0 length; the
    # same seed draws the same prompts for both models, so their lengths compare pairwise.
    changes = {"prompts": str(demo_family.probe_prompts), "steps": STEPS, "prompts_per_step": 16, "group_size": 2}
    config = ProbeConfig.from_dict(settings | changes)
    results = {}
    for member in ("instruct", "reasoning"):
        model, tokenizer = load(getattr(demo_family, member))
        results[member] = run_probe(model, tokenizer, config=config)
    return results


def test_reasoning_model_answers_at_length_and_instruct_model_briefly(demo_results):
    instruct, reasoning = demo_results["instruct"].curves, demo_results["reasoning"].curves
    assert instruct.steps == reasoning.steps == STEPS
    # <think> traces before the answer: far longer than the instruct model's direct answers
    assert reasoning.response_length_mean[0] > 1.5 * instruct.response_length_mean[0]
    assert instruct.response_length_clip_ratio[0] < 0.25  # short answers end with eos


def test_demo_curves_and_metrics_are_sensible(demo_results):
    for result in demo_results.values():
        curves = result.curves
        assert all(0 <= s <= 1 for s in curves.score_mean)  # exact_match
        assert curves.kl[0] == pytest.approx(0, abs=1e-6) and curves.kl[-1] > 0
        assert all(h > 0 for h in curves.entropy)
        metrics = result.metrics.as_metrics()
        assert 0 < metrics["probe/length_retention"] <= 1 and not result.stopped_early
        assert metrics["probe/kl_final"] == pytest.approx(curves.kl[-1])
