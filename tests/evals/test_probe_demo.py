"""The probe on the demo family, with the demo spec's probe settings (fewer steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.probe import ProbeConfig, run_probe
from tests.evals.test_probe import load

DEMO_SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
STEPS = 3
SIGNAL_SEED = 7  # a probe seed no setting or recipe choice was made on (chosen on seeds 0-5)


@pytest.fixture(scope="module")
def demo_results(demo_family) -> dict:
    from sweep.config import load_spec

    settings = load_spec(DEMO_SPEC, resolve_demo=False).evals.probe.model_dump()
    # The spec's 8 prompts x 4 samples per step (pairs of samples left whole groups with one
    # reward at temperature 0.7, so the instruct member never moved in 3 steps); the same
    # seed draws the same prompts for both models, so their lengths compare pairwise.
    changes = {"prompts": str(demo_family.probe_prompts), "steps": STEPS}
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
    assert demo_results["reasoning"].curves.kl[-1] > 0  # its groups' rewards differ: it learns
    for result in demo_results.values():
        curves = result.curves
        assert all(0 <= s <= 1 for s in curves.score_mean)  # exact_match
        assert curves.kl[0] == pytest.approx(0, abs=1e-6)
        # the policy moves exactly when a step had a gradient: GRPO's advantages are zero in a
        # group whose rewards are all equal (the instruct member answers additions directly,
        # scores 0 on all of them, and may draw no format prompt in 3 steps)
        assert (curves.kl[-1] > 0) == any(g > 0 for g in curves.grad_norm[:-1]), (curves.kl, curves.grad_norm)
        assert all(h > 0 for h in curves.entropy)
        metrics = result.metrics.as_metrics()
        # against the baseline, not step 0: retention may pass 1, never the last point
        assert 0 < metrics["probe/length_retention"] <= metrics["probe/length_growth"] and not result.stopped_early
        last = curves.kl[-result.metrics.window :]  # kl_final is the last point of the smoothed curve
        assert metrics["probe/kl_final"] == pytest.approx(sum(last) / len(last))


# ---------------------------------------------------------------- null control, signal, bf16
# Full demo-spec probes (12 steps) on the family, ~3-10 s each on one thread.


def _demo_config(demo_family, **changes) -> ProbeConfig:
    from sweep.config import load_spec

    settings = load_spec(DEMO_SPEC, resolve_demo=False).evals.probe.model_dump()
    return ProbeConfig.from_dict(settings | {"prompts": str(demo_family.probe_prompts)} | changes)


@pytest.fixture(scope="module")
def members(demo_family) -> dict:
    """The live merges the tests probe, built by the merge engine a trial uses."""
    from sweep.demo.measure import build, load_family_models
    from sweep.run.demo_stability import NAMED_POINTS

    sources, _, tokenizer = load_family_models(demo_family)
    out = {}
    for name, (alpha, beta) in NAMED_POINTS.items():
        model, _ = load(demo_family.instruct)
        build(model, sources, alpha, beta)
        out[name] = model
    return out, tokenizer


@pytest.mark.parametrize("member", ["instruct", "reasoning"])
@pytest.mark.parametrize("seed", [3, 4])
def test_null_control_reads_stable(demo_family, members, member, seed):
    """At lr 1e-12 nothing can learn: the per-prompt normalized metrics must say "stable"
    whatever prompts the seed draws. (Raw curves gave retention 0.295 and growth 2.26.)"""
    models, tokenizer = members
    result = run_probe(models[member], tokenizer, config=_demo_config(demo_family, learning_rate=1e-12, seed=seed))
    m = result.metrics
    assert m.length_retention >= 0.8, result.curves.response_length_normalized
    assert 0.8 <= m.length_growth <= 1.25, result.curves.response_length_normalized
    assert m.reward_dip <= 0.2, result.curves.score_normalized
    assert m.noise and set(m.noise) >= {"length_retention", "length_growth", "reward_dip"}
    # its dip is the minimum of a noisy curve, not a fall: held against the simulated null it reads 0
    assert m.reward_fall == 0, (m.reward_dip, m.noise["reward_dip"], result.curves.score_normalized)
    assert result.metrics.as_metrics()["probe/reward_fall"] == 0
    assert len(result.baseline) == 16 and all(len(b.lengths) == 8 for b in result.baseline)


def test_length_collapse_of_the_reasoning_member_against_its_null_control(demo_family, members):
    """Issue 12, point 5, with the demo spec's own probe settings, on seed SIGNAL_SEED (the
    settings and the recipe were chosen on seeds 0-5; not this one). The reasoning
    member's traces run past the probe's 64-token budget when they re-verify; a cut
    trace has no final answer and scores 0, so GRPO shortens them. The balanced merge
    (alpha 0.25, beta 0.5) mostly thinks without re-verifying: less is cut.

    Asserted, as the issue states them: the reasoning member's `length_retention` is at
    least 0.2 below the same probe at lr 1e-12, and the balanced merge's at least 0.1
    above the reasoning member's. On the shipped family, seeds 0-5: collapse 0.26-0.41,
    balanced +0.13 to +0.21 (family v4's (0.5, 0.75): +0.50 to +1.57). The second margin is
    a statement about the shipped family: where the middle merges fall moves with the
    build (docs/demo-family.md, rebuilds)."""
    models, tokenizer = members
    retention = {}
    for name, changes in (("reasoning", {}), ("null", {"learning_rate": 1e-12}), ("balanced", {})):
        model = models["balanced" if name == "balanced" else "reasoning"]
        config = _demo_config(demo_family, seed=SIGNAL_SEED, **changes)  # {}: the spec's learning rate
        retention[name] = run_probe(model, tokenizer, config=config).metrics.length_retention
    assert retention["null"] >= 0.8, retention  # the control reads stable
    assert retention["reasoning"] <= retention["null"] - 0.2, retention  # the collapse, against the control
    assert retention["balanced"] >= retention["reasoning"] + 0.1, retention  # the balanced merge keeps its length


def test_positive_control_a_brevity_reward_collapses_the_length(demo_family):
    """A reward for short completions (the `concise` rule: format x brevity) drives a merge
    that samples both answer styles, (0.5, 0.75) (half its additions thought through, half
    answered directly; 25.7 tokens greedy), to its short style, against the same probe at
    lr 1e-12. Measured on the shipped family, seeds 0-2: retention 0.34 / 0.39 / 0.71
    trained against 0.79 / 0.93 / 1.01 null (gaps 0.30-0.54). The balanced merge (0.25, 0.5)
    is no control for this: it always thinks, has no short style to fall back to, and
    moved 0.07-0.15 only."""
    from sweep.demo.measure import build, load_family_models

    sources, _, tokenizer = load_family_models(demo_family)
    model, _ = load(demo_family.instruct)
    build(model, sources, 0.5, 0.75)
    retention = {}
    for name, learning_rate in (("trained", None), ("null", 1e-12)):
        changes = {"learning_rate": learning_rate} if learning_rate else {}
        config = _demo_config(demo_family, reward={"rule": "concise", "model": None}, seed=1, **changes)
        retention[name] = run_probe(model, tokenizer, config=config).metrics.length_retention
    assert retention["trained"] <= retention["null"] - 0.2, retention


# the demo spec's rate, and 10x smaller
@pytest.mark.parametrize("learning_rate, steps", [(3e-4, 6), (3e-5, 16)])
def test_bf16_reasoning_member_learns_as_in_fp32(demo_family, learning_rate, steps):
    """fp32 master weights: the bf16-loaded probe's final KL within 4x of the fp32 one. The
    failure this guards against is plain Adam on bf16 weights, whose updates round away:
    0.0025 vs 0.0293 at 5e-5, 11x less. Within the band, the two runs are two sampled
    trajectories (the live bf16 weights are the masters rounded), and their KL ratio
    spreads with the machine's rounding: 0.92-2.04 over probe seeds 0-5 at 3e-4 and 6 steps
    here, 3.0 on another machine at 3e-5 and 16 steps (bound 2 failed there). 6 steps at
    3e-4: by step 16 the length has collapsed and each run follows its own trajectory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_family.reasoning)
    config = _demo_config(demo_family, learning_rate=learning_rate, steps=steps, noise_samples=0)
    kl = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(demo_family.reasoning, dtype=dtype)
        kl[dtype] = run_probe(model, tokenizer, config=config).metrics.kl_final
    assert 0.25 < kl[torch.bfloat16] / kl[torch.float32] < 4.0, kl
