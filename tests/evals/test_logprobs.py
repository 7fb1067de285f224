"""Chunked, micro-batched log-probs equal the plain [B, T, V] computation (values and grads)."""

from __future__ import annotations

import copy

import pytest
import torch

from evals.probe.logprobs import activation_checkpointing, grpo_update, micro_batches, token_logprobs
from tests.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("lp") / "m", hidden=64, layers=2, heads=2, tie=False, seed=5)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    B, P, R, V = 6, 5, 9, model.config.vocab_size
    prompt = torch.randint(3, V, (B, P), generator=gen)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    prompt_mask[3, :1] = 0
    response = torch.randint(3, V, (B, R), generator=gen)
    lengths = torch.tensor([9, 4, 1, 7, 9, 2])
    response_mask = (torch.arange(R)[None] < lengths[:, None]).long()
    batch = dict(
        input_ids=torch.cat([prompt, response], 1),
        attention_mask=torch.cat([prompt_mask, response_mask], 1),
        response_ids=response,
        response_mask=response_mask,
    )
    return model, batch


def plain_logprobs(model, batch, temperature):
    """Today's probe: full logits, fp32 log-softmax over [B, R, V], gather."""
    mask = batch["attention_mask"]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    R = batch["response_ids"].shape[1]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=R + 1
    ).logits
    logp_all = torch.log_softmax(logits[:, :-1].double() / temperature, dim=-1)
    logp = logp_all.gather(-1, batch["response_ids"][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    m = batch["response_mask"]
    return logp * m, entropy * m


@pytest.mark.parametrize("chunk", [None, 1, 7, 1024])
def test_chunked_logprobs_and_grads_equal_the_plain_ones(model_and_batch, chunk):
    model, batch = model_and_batch
    model.zero_grad(set_to_none=True)
    ref_lp, ref_ent = plain_logprobs(model, batch, 0.7)
    (ref_lp.sum() * 0.5).backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    lp, ent = token_logprobs(model, temperature=0.7, chunk=chunk, **batch)
    (lp.sum() * 0.5).backward()
    assert lp.shape == batch["response_ids"].shape and lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=0, atol=1e-5)
    assert (lp[batch["response_mask"] == 0] == 0).all()
    for p, g in zip(model.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_micro_batched_update_equals_the_full_batch_update(model_and_batch):
    model, batch = model_and_batch
    advantages = torch.tensor([1.0, -0.5, 0.2, -1.0, 0.3, 0.0], dtype=torch.float64)
    results, weights = [], []
    for mb, chunk, ckpt in ((None, None, False), (2, 5, False), (1, 3, True)):
        policy = copy.deepcopy(model).requires_grad_(True)
        reference = copy.deepcopy(model).requires_grad_(False)
        with torch.no_grad():  # a policy that has moved from its reference: k3 > 0
            for p in policy.parameters():
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
        results.append(
            grpo_update(
                policy,
                reference,
                optimizer,
                advantages=advantages,
                kl_coef=0.05,
                temperature=1.0,
                micro_batch_size=mb,
                chunk=chunk,
                checkpoint_activations=ckpt,
                **batch,
            )
        )
        weights.append([p.detach().clone() for p in policy.parameters()])
        assert not _checkpointing(policy)  # restored after the step
    assert results[0]["kl"] > 1e-6
    for other, w in zip(results[1:], weights[1:], strict=True):
        for key in ("kl", "entropy", "grad_norm"):
            assert other[key] == pytest.approx(results[0][key], rel=1e-5, abs=1e-9), key
        for a, b in zip(w, weights[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_reference_as_adapters_off_context(model_and_batch):
    """A callable reference: the model itself under a context (LoRA with adapters disabled)."""
    import contextlib

    model, batch = model_and_batch
    policy = copy.deepcopy(model).requires_grad_(True)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    out = grpo_update(
        policy,
        contextlib.nullcontext,
        optimizer,
        advantages=torch.zeros(6, dtype=torch.float64),
        kl_coef=1.0,
        micro_batch_size=4,
        **batch,
    )
    assert out["kl"] == pytest.approx(0.0, abs=1e-12)  # the reference is the policy itself


def test_micro_batches_and_checkpointing_context(model_and_batch):
    assert micro_batches(5, None) == [slice(0, 5)]
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    model, _ = model_and_batch
    with activation_checkpointing(model):
        assert _checkpointing(model)
    assert not _checkpointing(model)


def _checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_each_loss_aggregation_is_the_gradient_of_its_formula(model_and_batch, loss_agg):
    """verl's three loss_agg_modes, micro-batched, against the formula written out on the
    plain log-probs: token-mean sum(l) / tokens; seq-mean-token-mean the mean over responses
    of each one's token mean; seq-mean-token-sum-norm sum(l) / (B x R)."""
    from evals.probe.logprobs import accumulate_grpo_gradients

    model, batch = model_and_batch
    advantages = torch.tensor([1.0, -0.5, 0.2, -1.0, 0.3, 0.7], dtype=torch.float64)
    mask = batch["response_mask"].double()
    rows, width = mask.shape
    model.zero_grad(set_to_none=True)
    logp, _ = plain_logprobs(model, batch, 1.0)
    per_token = -advantages[:, None] * logp * mask  # the loss's gradient at the start (ratio 1, KL 0)
    expected = {
        "token-mean": per_token.sum() / mask.sum(),
        "seq-mean-token-mean": (per_token.sum(1) / mask.sum(1)).mean(),
        "seq-mean-token-sum-norm": per_token.sum() / (rows * width),
    }[loss_agg]
    expected.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    reference = copy.deepcopy(model).requires_grad_(False)
    accumulate_grpo_gradients(
        model, reference, advantages=advantages, kl_coef=0.05, micro_batch_size=4, chunk=5, loss_agg=loss_agg, **batch
    )
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_the_original_grpo_loss_weighs_a_short_response_more(model_and_batch):
    """seq-mean-token-mean is not token-mean rescaled: the one-token response (row 2) gets
    1/(B x 1) of the loss instead of 1/32 (the batch's tokens), so with only its advantage
    non-zero the two gradients differ by 32/6, and with only a 9-token response's by 32/54."""
    from evals.probe.logprobs import accumulate_grpo_gradients

    model, batch = model_and_batch

    def grad_norm(row, loss_agg):
        advantages = torch.zeros(6, dtype=torch.float64)
        advantages[row] = 1.0
        model.zero_grad(set_to_none=True)
        accumulate_grpo_gradients(model, model, advantages=advantages, kl_coef=0.0, loss_agg=loss_agg, **batch)
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
        model.zero_grad(set_to_none=True)
        return norm

    assert int(batch["response_mask"].sum()) == 32 and batch["response_mask"].shape[0] == 6
    assert grad_norm(2, "seq-mean-token-mean") / grad_norm(2, "token-mean") == pytest.approx(32 / 6, rel=1e-6)
    assert grad_norm(0, "seq-mean-token-mean") / grad_norm(0, "token-mean") == pytest.approx(32 / 54, rel=1e-6)


def test_an_unknown_loss_aggregation_is_refused_with_the_choices():
    from evals.errors import EvalError
    from evals.probe.config import ProbeConfig

    with pytest.raises(EvalError, match="loss_agg") as info:
        ProbeConfig(prompts="p.jsonl", loss_agg="seq-sum")
    assert "seq-mean-token-mean" in str(info.value)


def test_the_clipped_surrogate_is_ppos(model_and_batch):
    """With the sampling policy's log-probs the policy term is -min(r A, clip(r) A): its
    gradient equals the formula written out, and clipfrac and ppo_kl are the shares and
    means a hand count gives."""
    from evals.probe.logprobs import accumulate_grpo_gradients

    model, batch = model_and_batch
    advantages = torch.tensor([1.0, -0.5, 0.2, -1.0, 0.3, 0.7], dtype=torch.float64)
    mask = batch["response_mask"].double()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        now, _ = plain_logprobs(model, batch, 1.0)
    shift = 0.3 * torch.sin(torch.arange(now.numel(), dtype=torch.float64)).view_as(now)
    old = (now + shift) * mask  # a sampling policy 0-0.3 nats away, per token
    logp, _ = plain_logprobs(model, batch, 1.0)
    ratio = torch.exp(logp - old)
    a = advantages[:, None]
    surrogate = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    (surrogate * mask).sum().div(mask.sum()).backward()
    want = [p.grad.clone() for p in model.parameters()]
    clipped = ((ratio.clamp(0.8, 1.2) * a < ratio * a).double() * mask).sum() / mask.sum()
    model.zero_grad(set_to_none=True)
    stats = accumulate_grpo_gradients(
        model, model, advantages=advantages, kl_coef=0.0, micro_batch_size=4, old_logprobs=old.float(), **batch
    )
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    assert 0 < float(clipped) < 1
    assert stats["clipfrac"] == pytest.approx(float(clipped), abs=1e-9)
    assert stats["ppo_kl"] == pytest.approx(float((shift * mask).sum() / mask.sum()), abs=1e-5)


def _step_with(model_and_batch, advantages, **settings):
    """One evals.probe.update.grpo_step on the fixture's batch (2 prompts x 3 samples)."""
    from evals.probe.config import ProbeConfig
    from evals.probe.sampling import Batch
    from evals.probe.update import MasterAdam, grpo_step

    model, batch = model_and_batch
    policy = copy.deepcopy(model).float().requires_grad_(True)
    reference = copy.deepcopy(policy).requires_grad_(False)
    R = batch["response_ids"].shape[1]
    rollouts = Batch(
        batch["input_ids"][:, :-R],
        batch["attention_mask"][:, :-R],
        batch["response_ids"],
        batch["response_mask"],
        completions=None,
        lengths=batch["response_mask"].sum(1),
        truncated=torch.zeros(6, dtype=torch.bool),
        entropy=torch.zeros(6),
    )
    config = ProbeConfig(prompts="p.jsonl", prompts_per_step=2, group_size=3, learning_rate=0.05, **settings)
    optimizer = MasterAdam(list(policy.parameters()), lr=config.learning_rate)
    stats = grpo_step(policy, reference, optimizer, rollouts, torch.tensor(advantages), config=config)
    steps = {int(state["step"]) for state in optimizer.adam.state.values()}
    return stats, steps


def test_mini_batches_take_one_adam_step_each_and_read_the_drift(model_and_batch):
    """mini_batches: 2 splits the step's 2 groups into two updates; the second trains on
    the sampling policy's log-probs, so it reads a drift (ppo_kl) and, at a large step, a
    clip. One mini-batch reads 0 for both; a flat second mini-batch takes no update."""
    advantages = [1.0, -0.5, -0.5, -1.0, 0.3, 0.7]
    one, steps = _step_with(model_and_batch, advantages)
    assert steps == {1} and one["updated"] == 1.0 and one["pg_clipfrac"] == one["ppo_kl"] == 0.0
    two, steps = _step_with(model_and_batch, advantages, mini_batches=2)
    assert steps == {2} and two["updated"] == 1.0
    assert two["ppo_kl"] != 0.0 and 0 < two["pg_clipfrac"] <= 1
    flat, steps = _step_with(model_and_batch, [1.0, -0.5, -0.5, 0.0, 0.0, 0.0], mini_batches=2)
    assert steps == {1} and flat["updated"] == 0.5


def test_mini_batches_must_hold_whole_groups():
    from evals.errors import EvalError
    from evals.probe.config import ProbeConfig

    with pytest.raises(EvalError, match=r"mini_batches \(3\) must divide prompts_per_step \(4\)"):
        ProbeConfig(prompts="p.jsonl", prompts_per_step=4, mini_batches=3)
