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
