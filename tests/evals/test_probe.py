"""The built-in GRPO probe on real tiny checkpoints: curves, determinism, learning,
early stop, what it leaves of the model, and the records' JSON round trips."""

from __future__ import annotations

import json

import pytest

from evals.errors import EvalError
from evals.probe import (
    CURVE_KEYS,
    ProbeConfig,
    ProbeCurves,
    ProbeResult,
    Prompt,
    get_backend,
    load_prompts,
    run_probe,
)
from tests.evals.conftest import PROBE_PROMPTS

PROMPTS = [Prompt(prompt=p, answer=a) for p, a in PROBE_PROMPTS]


def load(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def digit_share(*, prompts, completions, answers):
    """Learnable and length-independent: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def brevity(*, prompts, completions, answers):
    """Rewards short completions: drives a sequence-length collapse."""
    return [-len(c) / 16 for c in completions]


def config(**changes) -> ProbeConfig:
    base = dict(prompts="unused.jsonl", steps=6, max_new_tokens=16, learning_rate=3e-3, seed=0)
    return ProbeConfig(**(base | changes))


def without_timing(curves: ProbeCurves) -> dict:
    return {k: v for k, v in curves.to_dict().items() if not k.startswith("timing/")}


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("probe") / "qwen2", seed=5, arch="qwen2")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_curves_are_sensible(arch, request):
    model, tokenizer = load(request.getfixturevalue("tiny_dir" if arch == "llama" else "qwen2_dir"))
    result = run_probe(model, tokenizer, config=config(steps=4), prompts=PROMPTS, reward=digit_share)
    curves = result.curves
    assert curves.steps == 4 and set(curves.to_dict()) == set(CURVE_KEYS)
    for t in range(4):
        assert (
            1 <= curves.response_length_min[t] <= curves.response_length_mean[t] <= curves.response_length_max[t] <= 16
        )
        assert 0 <= curves.response_length_clip_ratio[t] <= 1
        assert curves.kl[t] >= 0 and curves.entropy[t] > 0 and curves.grad_norm[t] > 0
        assert curves.step_s[t] >= curves.gen_s[t] > 0
    assert curves.kl[0] == pytest.approx(0, abs=1e-6)  # step 0 is measured before any update
    assert curves.kl[-1] > 0
    assert result.metrics.steps == 4 and not result.stopped_early and result.stop_reason is None
    assert result.wall_s >= sum(curves.step_s)


def test_same_seed_gives_identical_curves_and_another_seed_does_not(tiny_dir):
    model, tokenizer = load(tiny_dir)
    first = run_probe(model, tokenizer, config=config(), prompts=PROMPTS, reward=digit_share)
    model, tokenizer = load(tiny_dir)
    second = run_probe(model, tokenizer, config=config(), prompts=PROMPTS, reward=digit_share)
    assert without_timing(first.curves) == without_timing(second.curves)
    assert first.metrics == second.metrics
    third = run_probe(model, tokenizer, config=config(seed=1), prompts=PROMPTS, reward=digit_share)
    assert without_timing(third.curves) != without_timing(first.curves)


def test_reward_rises_on_a_learnable_reward(tiny_dir):
    model, tokenizer = load(tiny_dir)
    result = run_probe(
        model, tokenizer, config=config(steps=24, learning_rate=1e-2), prompts=PROMPTS, reward=digit_share
    )
    score = result.curves.score_mean
    first, last = sum(score[:4]) / 4, sum(score[-4:]) / 4
    assert last > first + 0.2, score  # measured ~0.12 -> ~0.9 (seeds 0-3: 0.79-0.93); chance is ~10 of 83 tokens
    assert result.metrics.reward_final > score[0]


def test_early_stop_on_length_collapse_still_reports_metrics(tiny_dir):
    model, tokenizer = load(tiny_dir)
    cfg = config(steps=40, learning_rate=3e-2, collapse_threshold=0.5, collapse_patience=2)
    result = run_probe(model, tokenizer, config=cfg, prompts=PROMPTS, reward=brevity)
    length = result.curves.response_length_mean
    assert result.stopped_early and result.curves.steps < 40
    assert "collapse" in result.stop_reason and "0.5" in result.stop_reason
    assert all(value < 0.5 * length[0] for value in length[-2:])
    assert result.metrics.stopped_early and result.metrics.as_metrics()["probe/stopped_early"] == 1.0
    assert result.metrics.length_retention < 0.5


def test_model_comes_back_as_it_was_given(tiny_dir):
    import torch

    model, tokenizer = load(tiny_dir)
    model.train()
    model.model.layers[0].eval()  # mixed modes are restored module by module
    model.model.norm.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_probe(model, tokenizer, config=config(steps=3, learning_rate=1e-1), prompts=PROMPTS, reward=digit_share)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert not model.model.norm.weight.requires_grad and model.lm_head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and not model._forward_pre_hooks and not model._backward_hooks
    with torch.no_grad():  # still an ordinary, usable model
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_a_probe_of_n_steps_is_the_first_n_steps_of_a_longer_run(tiny_dir):
    """What bench/probe_validity.py and `sweep calibrate` rest on: the prompt order and the
    sampler's stream do not depend on `steps`, so the probe is the long run's prefix."""
    from evals.probe.baseline import normalized_metrics
    from evals.probe.records import PromptSamples

    model, tokenizer = load(tiny_dir)
    cfg = config(baseline_samples=2, prompt_pool=4, prompts_per_step=2, group_size=2, noise_samples=0, window=2)
    short = run_probe(model, tokenizer, config=cfg, prompts=PROMPTS, reward=digit_share)
    backend = get_backend("builtin")
    long = backend.run(
        model, tokenizer, config=cfg.model_copy(update={"steps": 12}), prompts=PROMPTS, reward=digit_share
    )
    assert long.curves.steps == 12 and short.curves.steps == 6
    assert long.curves.score_mean[:6] == short.curves.score_mean
    assert long.curves.response_length_mean[:6] == short.curves.response_length_mean
    prefix = normalized_metrics(long.baseline, long.steps[:6], kl=long.curves.kl[:6], window=2, planned_steps=6)
    assert prefix.length_retention == short.metrics.length_retention
    assert prefix.reward_dip == short.metrics.reward_dip
    assert all(isinstance(p, PromptSamples) for step in long.steps for p in step)


def test_on_trained_sees_the_trained_policy_and_the_model_still_comes_back(tiny_dir):
    import torch

    model, tokenizer = load(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def on_trained(trained):
        assert trained is model
        seen.append(sum((v - before[k]).abs().sum().item() for k, v in trained.state_dict().items()))

    cfg = config(steps=3, learning_rate=1e-2)
    steps: list[tuple[int, int]] = []
    run_probe(
        model,
        tokenizer,
        config=cfg,
        prompts=PROMPTS,
        reward=digit_share,
        on_trained=on_trained,
        on_step=lambda done, planned: steps.append((done, planned)),
    )
    assert len(seen) == 1 and seen[0] > 0  # called once, on weights that moved
    assert steps == [(1, 3), (2, 3), (3, 3)]  # told after each step: a long run's progress
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # then restored


def informative_once():
    """digit_share on the first call (one informative batch), then 1.0 for everything: the
    batches after the first have no reward variance."""
    calls = []

    def reward(*, prompts, completions, answers):
        calls.append(1)
        return (
            digit_share(prompts=prompts, completions=completions, answers=answers)
            if len(calls) == 1
            else [1.0] * len(completions)
        )

    return reward


@pytest.mark.parametrize("skip", [True, False])
def test_a_flat_batch_takes_no_update_unless_told_to(tiny_dir, skip):
    """After one informative step every batch is flat (all advantages 0). Skipped, the
    policy stays where that step left it (KL flat, no further drift); stepped, Adam keeps
    moving it on the KL term and its momentum (docs/probe.md, "Flat batches")."""
    import torch

    model, tokenizer = load(tiny_dir)
    cfg = config(steps=6, learning_rate=1e-2, baseline_samples=0, skip_flat_batches=skip)
    moved = []

    def record(snapshot):
        def on_trained(trained):
            snapshot.append({k: v.clone() for k, v in trained.state_dict().items()})

        return on_trained

    result = run_probe(
        model, tokenizer, config=cfg, prompts=PROMPTS, reward=informative_once(), on_trained=record(moved)
    )
    one = []  # the same probe stopped after its one informative step
    run_probe(
        model,
        tokenizer,
        config=cfg.model_copy(update={"steps": 1}),
        prompts=PROMPTS,
        reward=informative_once(),
        on_trained=record(one),
    )
    unchanged = all(torch.equal(one[0][k], v) for k, v in moved[0].items())
    curves = result.curves
    assert curves.score_std[1:] == (0.0,) * 5  # the batches after the first are flat
    assert curves.grad_norm[0] > 0
    if skip:
        assert curves.updated == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0) and curves.grad_norm[1:] == (0.0,) * 5
        assert unchanged  # 5 skipped steps changed nothing
        assert result.metrics.as_metrics()["probe/update_share"] == pytest.approx(1 / 6)  # the probe saw little
    else:
        assert curves.updated == (1.0,) * 6 and all(g > 0 for g in curves.grad_norm)
        assert not unchanged and result.metrics.update_share == 1.0
    assert curves.kl[0] == pytest.approx(0, abs=1e-6) and curves.kl[-1] > 0  # measured on every step either way


def test_rule_reward_from_config_and_prompts_file(tiny_dir, prompts_file):
    model, tokenizer = load(tiny_dir)
    cfg = config(prompts=str(prompts_file), steps=2, reward={"rule": "format", "model": None})
    cfg = ProbeConfig.from_dict(cfg.to_dict())
    result = run_probe(model, tokenizer, config=cfg)
    assert all(0 <= s <= 1 for s in result.curves.score_mean)


def test_reward_model_from_config(tiny_dir, tmp_path):
    from tests.evals.test_rewards import make_reward_model

    rm = make_reward_model(tmp_path / "rm")
    model, tokenizer = load(tiny_dir)
    cfg = ProbeConfig.from_dict(
        {"prompts": "unused", "steps": 2, "max_new_tokens": 8, "reward": {"rule": "exact_match", "model": str(rm)}}
    )
    assert cfg.reward.rule is None  # a reward model wins over a rule, as in the spec
    result = run_probe(model, tokenizer, config=cfg, prompts=PROMPTS)
    assert result.curves.score_std[0] > 0  # real, varying scores from the reward model


def test_prompts_get_the_chat_template(tiny_dir):
    from evals.probe.sampling import encode_prompt as _encode_prompt

    _, tokenizer = load(tiny_dir)
    assert tokenizer.decode(_encode_prompt(tokenizer, "2+3")) == "Q: 2+3\nA: "
    tokenizer.chat_template = None
    assert tokenizer.decode(_encode_prompt(tokenizer, "2+3")) == "2+3"


def test_bad_input_fails_before_any_step(tiny_dir, tmp_path):
    model, tokenizer = load(tiny_dir)
    with pytest.raises(EvalError, match="needs an answer for every prompt; prompt 2"):
        run_probe(model, tokenizer, config=config(), prompts=[Prompt("1+1", "2"), Prompt("2+2")])
    with pytest.raises(EvalError, match="unknown probe backend 'verl'"):
        run_probe(model, tokenizer, config=config(backend="verl"), prompts=PROMPTS)
    with pytest.raises(EvalError, match="not found"):
        run_probe(model, tokenizer, config=config(prompts=str(tmp_path / "none.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": 3}\n')
    with pytest.raises(EvalError, match="line 2"):
        load_prompts(bad)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 1}, "steps must be a whole number >= 2"),
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"collapse_threshold": 1.5}, "collapse_threshold"),
        ({"reward": {"rule": "exactmatch"}}, "reward.rule 'exactmatch'"),
        ({"reward": {"rule": None, "model": None}}, "reward rule or a reward model"),
        ({"stepz": 3}, "unknown keys stepz"),
        ({"micro_batch_size": 0}, "micro_batch_size must be a whole number >= 1 or null"),
        ({"update": "qlora"}, "update must be full or lora"),
        ({"generator": "sglang"}, "generator must be hf or vllm"),
    ],
)
def test_bad_config_is_a_user_error(changes, message):
    with pytest.raises(EvalError, match=message):
        ProbeConfig.from_dict({"prompts": "p.jsonl"} | changes)


def test_config_fields_are_exactly_the_spec_keys():
    from sweep.config import parse_spec
    from sweep.config.schema import EvalsSpec

    assert EvalsSpec.model_fields["probe"].annotation == ProbeConfig | None  # the spec embeds the config
    spec = parse_spec(
        "name: t\nmodels: {pretrained: a, instruct: b, reasoning: c}\n"
        "evals: {probe: {prompts: p.jsonl, steps: 5, reward: {rule: format}, collapse_threshold: 0.4,"
        " micro_batch_size: 2, update: lora, lora_rank: 4}}\n"
        "objectives: [{metric: probe/length_retention, direction: maximize}]\n"
        'constraints: ["probe/stopped_early <= 0"]\n'
    )
    cfg = ProbeConfig.from_dict(spec.evals.probe.model_dump())
    assert (cfg.steps, cfg.reward.rule, cfg.collapse_threshold, cfg.window) == (5, "format", 0.4, 1)
    assert (cfg.micro_batch_size, cfg.logprob_chunk, cfg.update, cfg.lora_rank, cfg.generator) == (
        2,
        1024,
        "lora",
        4,
        "hf",
    )
    assert ProbeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_result_round_trips_through_json(tiny_dir):
    model, tokenizer = load(tiny_dir)
    result = run_probe(model, tokenizer, config=config(steps=3, window=2), prompts=PROMPTS, reward=digit_share)
    again = ProbeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.curves["critic/score/mean"] == result.curves.score_mean
    assert isinstance(again.curves.kl, tuple)


def test_builtin_backend_is_registered():
    assert get_backend("builtin").name == "builtin"


@pytest.mark.gpu
def test_probe_on_cuda_gives_back_the_weights(tiny_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, tokenizer = load(tiny_dir)
    model = model.cuda()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_probe(model, tokenizer, config=config(steps=4), prompts=PROMPTS, reward=digit_share)
    assert result.curves.steps == 4 and result.curves.kl[0] == pytest.approx(0, abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_template_that_opens_think_is_scored_with_the_tag_put_back(tiny_dir):
    """The probe's completions under a template ending in <think> reach the reward with
    "<think>" in front: a rule sees the whole think block."""
    model, tokenizer = load(tiny_dir)
    tokenizer.chat_template = tokenizer.chat_template.replace("A: {% endif %}", "A: <think>{% endif %}")
    seen: list[str] = []

    def record(*, prompts, completions, answers):
        seen.extend(completions)
        return [float(c.startswith("<think>")) for c in completions]

    result = run_probe(model, tokenizer, config=config(steps=2, baseline_samples=0), prompts=PROMPTS, reward=record)
    assert seen and all(c.startswith("<think>") for c in seen)
    assert result.curves.score_mean == (1.0, 1.0)
    load_tokenizer = load(tiny_dir)[1]
    seen.clear()
    run_probe(model, load_tokenizer, config=config(steps=2, baseline_samples=0), prompts=PROMPTS, reward=record)
    assert not any(c.startswith("<think>") for c in seen)  # the plain template opens nothing


def test_a_diverging_probe_is_a_recorded_outcome_not_an_error(tiny_dir):
    """lr 1e30 blows the weights up after the first update: the next step's logits are not
    finite. The probe returns worst-case, finite metrics that violate any sane constraint,
    JSON-safe (no NaN), and the model comes back unchanged."""
    import math

    import torch

    model, tokenizer = load(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_probe(
        model, tokenizer, config=config(steps=6, learning_rate=1e30), prompts=PROMPTS, reward=digit_share
    )
    assert result.diverged and result.stopped_early and "diverged at step" in result.stop_reason
    metrics = result.metrics.as_metrics()
    assert metrics["probe/diverged"] == 1.0 and metrics["probe/stopped_early"] == 1.0
    assert metrics["probe/length_retention"] == 0.0 and metrics["probe/length_growth"] == 0.0
    assert metrics["probe/reward_dip"] >= 1.0 and metrics["probe/reward_steps_to_recover"] == 6
    assert all(v is None or math.isfinite(v) for v in metrics.values())
    json.dumps(result.to_dict(), allow_nan=False)  # the trial record stays valid JSON
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a stable probe reads diverged 0
    assert (
        run_probe(model, tokenizer, config=config(steps=2), prompts=PROMPTS, reward=digit_share).metrics.as_metrics()[
            "probe/diverged"
        ]
        == 0.0
    )


def test_an_early_stopped_probe_is_scored_over_the_configured_steps():
    """A collapse that stops after 5 of 40 steps with an unrecovered dip scores 40 steps
    to recover, never better than a probe that ran all 40 and did not recover."""
    from evals.probe import BackendRun, score_run

    length = [10.0, 4.0, 3.0, 3.0, 3.0]
    reward = [0.5, 0.2, 0.1, 0.1, 0.1]
    rows = [
        {k: 0.0 for k in CURVE_KEYS if "normalized" not in k}
        | {"response_length/mean": n, "critic/score/mean": r, "actor/entropy": 1.0}
        for n, r in zip(length, reward, strict=True)
    ]
    curves = ProbeCurves()
    for row in rows:
        curves = curves.append(row)
    cfg = config(steps=40, collapse_threshold=0.5, collapse_patience=3)
    early = score_run(BackendRun(curves=curves, stopped_early=True, stop_reason="collapse"), config=cfg)
    assert early.reward_steps_to_recover == 40 and early.stopped_early
    full = score_run(BackendRun(curves=curves), config=config(steps=5))
    assert full.reward_steps_to_recover == 5  # the same curves, run to the end of a 5-step probe


@pytest.mark.parametrize("learning_rate", [3e-4, 3e-5])
def test_a_bf16_model_learns_as_an_fp32_one(tiny_dir, learning_rate):
    """fp32 master weights: the final KL of a bf16-loaded probe is within 2x of the fp32
    one. (Plain Adam on the bf16 weights gave 6x less KL at 3e-5: updates rounded away.)"""
    import torch
    from transformers import AutoModelForCausalLM

    kl = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=dtype)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = run_probe(
            model, load(tiny_dir)[1], config=config(learning_rate=learning_rate), prompts=PROMPTS, reward=digit_share
        )
        kl[dtype] = result.metrics.kl_final
        assert all(
            torch.equal(before[k], v) and v.dtype == dtype for k, v in model.state_dict().items()
        )  # restored bit for bit
    assert 0.5 < kl[torch.bfloat16] / kl[torch.float32] < 2.0, kl


def test_micro_batched_chunked_checkpointed_update_gives_the_full_batch_curves(tiny_dir):
    """The scale settings change memory, not the probe: micro-batches of 3 rollouts with
    gradient accumulation, log-probs in 5-token chunks and activation checkpointing give
    the curves of one full-batch, one-block update, to rounding (fp32, 6 steps: the same
    samples, so any real difference would show in the lengths and scores)."""
    curves = []
    for scale in (
        dict(micro_batch_size=None, logprob_chunk=None),
        dict(micro_batch_size=3, logprob_chunk=5),
        dict(micro_batch_size=5, logprob_chunk=7, activation_checkpointing=True),
    ):
        model, tokenizer = load(tiny_dir)
        result = run_probe(model, tokenizer, config=config(**scale), prompts=PROMPTS, reward=digit_share)
        curves.append(without_timing(result.curves))
    full = curves[0]
    assert full["actor/kl"][-1] > 1e-4  # it learned: there is something to compare
    for other in curves[1:]:
        assert other.keys() == full.keys()
        for key in full:
            assert other[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key


def test_lora_update_learns_and_gives_the_model_back(tiny_dir):
    """update: lora trains fp32 adapters on the live model against the adapters-off model
    (no copy): the KL grows and the reward moves; afterwards the model is the one given,
    bit for bit, with its own modules, modes and flags and nothing of peft left on it."""
    import torch

    model, tokenizer = load(tiny_dir)
    # The random tiny model's logits lie within about +-0.6 (near-uniform, entropy 4.4 nats
    # over 83 tokens), so adapters below the head could hardly move them (KL 0.015 at any
    # learning rate). A final norm 10x larger gives a trained model's logit scale (entropy 1.5).
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    model.model.norm.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [(name, type(m)) for name, m in model.named_modules()]
    attributes = set(vars(model))
    result = run_probe(
        model,
        tokenizer,
        config=config(steps=16, update="lora", lora_rank=4, learning_rate=1e-2),
        prompts=PROMPTS,
        reward=digit_share,
    )
    kl, score = result.curves.kl, result.curves.score_mean
    assert kl[0] == 0 and kl[-1] > 0.1, kl
    assert sum(score[-4:]) / 4 > sum(score[:4]) / 4 + 0.3, score  # digits rewarded: measured 0.08 -> 0.78
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
    assert set(vars(model)) == attributes and not hasattr(model, "peft_config")
    assert not model.model.norm.weight.requires_grad and model.lm_head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_lora_probe_with_one_seed_is_the_same_whatever_torch_global_seed(tiny_dir):
    """peft draws the adapters' starting values from torch's global RNG; the probe draws
    them under its own seed, so two LoRA probes with one seed agree (as they would in two
    processes, whose global seeds differ)."""
    import torch

    model, tokenizer = load(tiny_dir)
    curves = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        result = run_probe(
            model,
            tokenizer,
            config=config(steps=3, update="lora", lora_rank=4, learning_rate=1e-2),
            prompts=PROMPTS,
            reward=digit_share,
        )
        curves.append(without_timing(result.curves))
    assert curves[0] == curves[1]


def test_lora_on_a_bf16_model_trains_fp32_adapters(tiny_dir):
    """bf16 base, fp32 adapters: it learns (KL > 0) and the bf16 weights come back as they were."""
    import torch
    from transformers import AutoModelForCausalLM

    from evals.probe.lora import LoraAdapters

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    adapters = LoraAdapters(model, rank=4)
    assert adapters.parameters and all(p.dtype == torch.float32 and p.requires_grad for p in adapters.parameters)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    adapters.remove()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_probe(
        model,
        load(tiny_dir)[1],
        config=config(update="lora", lora_rank=4, learning_rate=3e-2),
        prompts=PROMPTS,
        reward=digit_share,
    )
    assert result.metrics.kl_final > 1e-4
    assert all(torch.equal(before[k], v) and v.dtype == torch.bfloat16 for k, v in model.state_dict().items())


def test_saved_lora_adapters_load_in_peft_and_give_the_adapted_model(tiny_dir, tmp_path):
    """LoraAdapters.save writes peft's format (what a vLLM LoRARequest loads): peft's own
    PeftModel.from_pretrained on a fresh base gives the adapted model's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evals.probe.lora import LoraAdapters

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    adapters = LoraAdapters(model, rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapters.parameters:
            p.add_(torch.randn_like(p) * 0.2)  # B is zero at the start: make the adapters matter
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapters.disabled():
            plain = model(input_ids=ids).logits
    folder = adapters.save(tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    loaded = PeftModel.from_pretrained(fresh, str(folder)).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, adapted, rtol=0, atol=1e-5)


def test_generator_vllm_without_an_engine_is_a_clear_error(tiny_dir):
    model, tokenizer = load(tiny_dir)
    with pytest.raises(EvalError, match="generator vllm: give the vLLM engine"):
        run_probe(model, tokenizer, config=config(generator="vllm"), prompts=PROMPTS, reward=digit_share)


def test_temperature_0_samples_greedily(tiny_dir):
    """Greedy rollouts: every completion of a group is the same (advantages 0), the
    curves repeat run to run, and the model is given back."""
    model, tokenizer = load(tiny_dir)
    seen = []

    def record(*, prompts, completions, answers):
        seen.append(list(completions))
        return digit_share(prompts=prompts, completions=completions, answers=answers)

    cfg = config(steps=3, temperature=0.0, baseline_samples=0, group_size=3)
    first = run_probe(model, tokenizer, config=cfg, prompts=PROMPTS, reward=record)
    assert all(batch[g * 3] == batch[g * 3 + 1] == batch[g * 3 + 2] for batch in seen for g in range(len(batch) // 3))
    assert first.curves.grad_norm[0] < 1e-6 and first.curves.kl == (0.0, 0.0, 0.0)
    second = run_probe(model, tokenizer, config=cfg, prompts=PROMPTS, reward=digit_share)
    assert without_timing(first.curves) == without_timing(second.curves)
