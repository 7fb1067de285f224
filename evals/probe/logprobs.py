"""Token log-probs and entropy that scale: micro-batches, vocabulary chunks, checkpointing.

The probe's update needs, for every response token, log p(token | prefix) at the
sampling temperature (with gradient) and the entropy of that distribution (without).
Computed the plain way (`model(...).logits.float().log_softmax(-1)`) that is a
[B, T, V] tensor in fp32, saved for backward, twice (policy and reference): for 128
rollouts x 2048 tokens x 152k vocabulary about 160 GB. Here instead:

- the decoder runs once per micro-batch and returns hidden states [b, T, H];
- only response positions are kept, flattened to [N, H];
- the output projection, log-softmax, gather and entropy run on `chunk` rows at a time
  inside `torch.utils.checkpoint`, so backward keeps only the [chunk, H] inputs and
  recomputes one [chunk, V] block at a time: peak ~ chunk x V x 12 bytes, whatever N is;
- `grpo_update` sums micro-batch losses, each token weighted for the whole batch
  (`loss_weights`: by default 1 / the batch's token count), so the accumulated gradient
  equals the full-batch gradient (to rounding).

    logp, entropy = token_logprobs(model, input_ids=ids, attention_mask=mask,
                                   response_ids=resp, response_mask=resp_mask, chunk=1024)

Works for HF causal LMs that expose `get_decoder()` (or `base_model`) and
`get_output_embeddings()` (Llama, Qwen2, Mistral, ...). Models that post-process
logits (Gemma's final_logit_softcapping) are not handled: `logits_postprocess_problem`
says so before any work.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from evals.probe.config import LOSS_AGGREGATIONS

DEFAULT_CHUNK = 1024  # tokens per vocabulary block: 1024 x 152k x 12 bytes ~ 1.9 GB peak
MAX_GRAD_NORM = 1.0  # verl's and TRL's default clip


def logits_postprocess_problem(model: Any) -> str | None:
    """Why chunked log-probs would differ from the model's own logits, or None."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return (
            f"{type(model).__name__} soft-caps its logits (final_logit_softcapping); chunked log-probs do not apply it"
        )
    return None


def _decoder(model: Any) -> Any:
    if hasattr(model, "get_decoder") and model.get_decoder() is not None:
        return model.get_decoder()
    return model.base_model


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, inv_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and entropy for [n, H] hidden rows: the [n, V] block lives only here."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if inv_temperature != 1.0:
        logits = logits * inv_temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    with torch.no_grad():  # one more [n, V] block, reused in place
        weighted = torch.softmax(logits, dim=-1).mul_(logits)
        entropy = lse.detach() - weighted.sum(-1)
        del weighted
    return logp, entropy


def token_logprobs(
    model: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk: int | None = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (with grad when enabled) and entropies (no grad) of the response.

    input_ids [B, P+R]: prompt then response (the last R columns are response_ids [B, R]);
    response_mask [B, R]: 1 for tokens that count. Returns two fp32 [B, R] tensors, zero
    where response_mask is 0. `chunk` None computes the whole vocabulary block at once
    (the plain path, kept for comparisons).
    """
    R = response_ids.shape[1]
    if position_ids is None:
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    out = _decoder(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    hidden = hidden[:, -(R + 1) : -1]  # position i predicts token i + 1
    keep = response_mask.bool()
    rows = hidden[keep]  # [N, H]
    targets = response_ids[keep]
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    inv_t = 1.0 / temperature
    step = rows.shape[0] if chunk is None else max(1, int(chunk))
    logps, entropies = [], []
    for start in range(0, rows.shape[0], step):
        h, t = rows[start : start + step], targets[start : start + step]
        if chunk is not None and torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_chunk_logprobs, h, t, weight, bias, inv_t, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(h, t, weight, bias, inv_t)
        logps.append(lp)
        entropies.append(ent)
    flat_logp = torch.cat(logps) if logps else rows.new_zeros(0, dtype=torch.float32)
    flat_ent = torch.cat(entropies) if entropies else rows.new_zeros(0, dtype=torch.float32)
    logp = torch.zeros(response_ids.shape, dtype=torch.float32, device=rows.device).masked_scatter(keep, flat_logp)
    entropy = torch.zeros(response_ids.shape, dtype=torch.float32, device=rows.device).masked_scatter(
        keep, flat_ent.detach()
    )
    return logp, entropy


def micro_batches(rows: int, size: int | None) -> list[slice]:
    """Row slices of at most `size` rows (None or >= rows: one slice of all)."""
    if size is None or size >= rows:
        return [slice(0, rows)]
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


@contextlib.contextmanager
def activation_checkpointing(model: Any, enabled: bool = True) -> Iterator[None]:
    """HF gradient checkpointing (non-reentrant) while inside; the previous setting after.

    It recomputes each decoder layer in backward, so only layer inputs are kept. HF
    applies it only in training mode; the probe runs in eval mode (no dropout), so the
    flag on each checkpointed layer is set directly.
    """
    if not enabled:
        yield
        return
    # transformers 5.24 renamed gradient_* to activation_* (5.19, the vLLM venv's, has only the old names)
    new = hasattr(model, "activation_checkpointing_enable")
    was = bool(getattr(model, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False))
    if new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    training = [m.training for m in layers]
    try:
        for m in layers:
            m.training = True  # HF checks `self.gradient_checkpointing and self.training`
        yield
    finally:
        for m, flag in zip(layers, training, strict=True):
            m.training = flag
        if not was:
            (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()


def loss_weights(response_mask: torch.Tensor, loss_agg: str = "token-mean") -> tuple[torch.Tensor, torch.Tensor]:
    """How `loss_agg` (LOSS_AGGREGATIONS) weighs each response token of the batch: a [B, R]
    fp32 weight (0 off the mask) and the batch's divisor; the loss is sum(weight x
    per-token loss) / divisor. token-mean: the mask over the token count.
    seq-mean-token-mean: 1 / the response's length, over B. seq-mean-token-sum-norm: the
    mask over B x R, R the padded response width (the generation budget when a response
    reached it; verl's default constant)."""
    mask = response_mask.float()
    rows, width = mask.shape
    if loss_agg == "token-mean":
        return mask, mask.sum().clamp(min=1)
    if loss_agg == "seq-mean-token-mean":
        return mask / mask.sum(1, keepdim=True).clamp(min=1), torch.tensor(float(rows))
    if loss_agg == "seq-mean-token-sum-norm":
        return mask, torch.tensor(float(rows * width))
    raise ValueError(f"loss_agg {loss_agg!r} is not one of {', '.join(LOSS_AGGREGATIONS)}")


def accumulate_grpo_gradients(
    model: Any,
    reference: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    kl_coef: float,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    chunk: int | None = DEFAULT_CHUNK,
    checkpoint_activations: bool = False,
    loss_agg: str = "token-mean",
    old_logprobs: torch.Tensor | None = None,
    clip_ratio: float = 0.2,
) -> dict[str, float]:
    """The GRPO loss's gradient, accumulated over micro-batches into `.grad` (not zeroed
    first: the caller zeroes). Takes no step.

    Loss: -A * exp(logp - logp.detach()) + kl_coef * k3 per token, aggregated over the
    whole batch by `loss_agg` (`loss_weights`; default the token mean),
    k3 = exp(ref - logp) - (ref - logp) - 1. With `old_logprobs` ([B, R], the sampling
    policy's, for a mini-batch after the step's first update) the policy term is PPO's
    clipped surrogate -min(r A, clip(r, 1 - clip_ratio, 1 + clip_ratio) A),
    r = exp(logp - old); `clipfrac` is the share of tokens where the clip binds and
    `ppo_kl` the token mean of old - logp (both 0 without old log-probs). `reference` is a
    frozen module, or a callable returning a context manager under which `model` itself
    is the reference (LoRA with adapters off). Returns the loss, kl, entropy, clipfrac and ppo_kl (token means over
    the whole batch); a non-finite one is returned as is (the caller decides), and
    backward is skipped for a micro-batch whose loss is not finite.
    """
    n_tokens = response_mask.sum().clamp(min=1).float()
    weights, divisor = loss_weights(response_mask, loss_agg)
    kl_sum = torch.zeros((), dtype=torch.float64)
    ent_sum = torch.zeros((), dtype=torch.float64)
    loss_sum = torch.zeros((), dtype=torch.float64)
    clipped_sum = torch.zeros((), dtype=torch.float64)
    drift_sum = torch.zeros((), dtype=torch.float64)
    parts = _per_micro_batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        temperature=temperature,
        micro_batch_size=micro_batch_size,
        chunk=chunk,
    )
    for rows, logprobs_of in parts:
        with torch.no_grad():
            if callable(reference) and not isinstance(reference, torch.nn.Module):
                with reference():
                    ref_logp, _ = logprobs_of(model)
            else:
                ref_logp, _ = logprobs_of(reference)
        with activation_checkpointing(model, checkpoint_activations):
            logp, entropy = logprobs_of(model)
            mask = response_mask[rows].float()
            log_ratio_ref = ref_logp - logp
            k3 = torch.exp(log_ratio_ref) - log_ratio_ref - 1
            advantage = advantages[rows].to(logp)[:, None]
            if old_logprobs is None:
                policy_loss = -advantage * torch.exp(logp - logp.detach())
            else:
                old = old_logprobs[rows].to(logp)
                ratio = torch.exp(logp - old)
                unclipped, clipped = ratio * advantage, ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * advantage
                policy_loss = -torch.minimum(unclipped, clipped)
                clipped_sum += float(((clipped < unclipped).float() * mask).sum())
                drift_sum += float(((old - logp.detach()) * mask).sum())
            loss = ((policy_loss + kl_coef * k3) * weights[rows]).sum() / divisor
            value = float(loss.detach())
            if math.isfinite(value) and loss.requires_grad:
                loss.backward()
        loss_sum += value
        kl_sum += float((k3.detach() * mask).sum())
        ent_sum += float((entropy * mask).sum())
    return {
        "loss": float(loss_sum),
        "kl": float(kl_sum / n_tokens),
        "entropy": float(ent_sum / n_tokens),
        "clipfrac": float(clipped_sum / n_tokens),
        "ppo_kl": float(drift_sum / n_tokens),
    }


@torch.no_grad()
def policy_logprobs(
    model: Any,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    chunk: int | None = DEFAULT_CHUNK,
) -> torch.Tensor:
    """[B, R] fp32 log-probs of the responses under `model` as it is now, without grad, in
    micro-batches: the sampling policy's, kept for a step's later mini-batches."""
    parts = _per_micro_batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        temperature=temperature,
        micro_batch_size=micro_batch_size,
        chunk=chunk,
    )
    return torch.cat([logprobs_of(model)[0] for _, logprobs_of in parts])


def _per_micro_batch(
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    micro_batch_size: int | None,
    chunk: int | None,
) -> Iterator[tuple[slice, Any]]:
    """(rows, logprobs_of) per micro-batch: `logprobs_of(model)` is `token_logprobs` on those rows."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    for rows in micro_batches(input_ids.shape[0], micro_batch_size):
        yield (
            rows,
            functools.partial(
                token_logprobs,
                input_ids=input_ids[rows],
                attention_mask=attention_mask[rows],
                position_ids=positions[rows],
                response_ids=response_ids[rows],
                response_mask=response_mask[rows],
                temperature=temperature,
                chunk=chunk,
            ),
        )


def grpo_update(
    model: Any,
    reference: Any,
    optimizer: torch.optim.Optimizer,
    *,
    max_grad_norm: float = MAX_GRAD_NORM,
    parameters: list[torch.Tensor] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """One GRPO step with a plain torch optimizer: `accumulate_grpo_gradients` (keyword
    arguments as there), the gradient norm clipped to `max_grad_norm`, one step (none when
    the norm is not finite). Returns kl, entropy and the pre-clip grad norm. (The probe
    uses its fp32-master optimizer instead: `MasterAdam`, evals/probe/update.py.)"""
    params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    stats = accumulate_grpo_gradients(model, reference, **kwargs)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    if math.isfinite(grad_norm):
        optimizer.step()
    return {"kl": stats["kl"], "entropy": stats["entropy"], "grad_norm": grad_norm}
