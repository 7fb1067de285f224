"""The probe's GRPO update: group-normalized advantages and one clipped Adam step.

    advantages = group_advantages(scores, group_size)
    stats = grpo_step(model, reference, optimizer, batch, advantages, config=config)

The loss is -A * exp(logp - logp.detach()) + kl_coef * k3(ref, logp) per token,
k3 = exp(ref - logp) - (ref - logp) - 1 against the reference, aggregated as `loss_agg`
says (default the token mean over the batch; evals/probe/logprobs.py), accumulated over
micro-batches in evals/probe/logprobs.py; the gradient norm is clipped to 1.0 and
`MasterAdam` steps on fp32 master copies of low-precision weights.

A flat batch (no group's reward varies, so every advantage is 0) takes no update when
`skip_flat_batches` is on (the default): its gradient is the KL term's alone, yet Adam,
which normalizes by its moments, would take a full-size step on it. Over a long run
from a candidate whose groups are mostly all right those steps wear the candidate down
(docs/probe.md, "Flat batches"). The KL and entropy are still measured, without a
backward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch

from evals.probe.config import ProbeConfig
from evals.probe.logprobs import accumulate_grpo_gradients, policy_logprobs
from evals.probe.sampling import Batch, Diverged, policy_temperature

MAX_GRAD_NORM = 1.0  # verl's and TRL's default clip
ADVANTAGE_EPS = 1e-4  # keeps a group with identical rewards at advantage 0, not NaN
# |advantage| at or below this counts as 0. A group of identical rewards gives exactly 0; rewards
# that differ at all (0/1: |A| >= 0.5; by float32's 1e-7: ~1e-3) give more, so only no variance is flat
FLAT_ADVANTAGE = 1e-6


def is_flat(advantages: torch.Tensor) -> bool:
    """True when no advantage differs from 0: no group of the batch has reward variance."""
    return not bool((advantages.abs() > FLAT_ADVANTAGE).any())


def group_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + ADVANTAGE_EPS) per row of `scores` (prompt-major
    groups of `group_size` completions), flat like `scores`."""
    grouped = scores.view(-1, group_size)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + ADVANTAGE_EPS)).view(-1)


class MasterAdam:
    """Adam with fp32 master weights for every parameter that is not fp32.

    fp32 parameters are updated directly (as plain torch.optim.Adam would). For a bf16 or
    fp16 parameter an fp32 copy holds the exact weight: its gradient is the live
    gradient in fp32, Adam and the clip run on the copies, and the live weight is set to
    the copy rounded to its dtype. Extra memory: 4 bytes per low-precision parameter,
    beside Adam's 8. `clear()` drops the copies and every moment.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], *, lr: float):
        self.params = list(params)
        self.masters = [None if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        self.targets = [p if m is None else m for p, m in zip(self.params, self.masters, strict=True)]
        self.adam = torch.optim.Adam(self.targets, lr=lr)

    def zero_grad(self) -> None:
        for tensor in (*self.params, *(m for m in self.masters if m is not None)):
            tensor.grad = None

    def step(self, max_norm: float) -> float:
        """Clip the gradient norm to `max_norm` and take one step; returns the norm before
        clipping. Takes no step when the norm is non-finite (the caller decides what then)."""
        for param, master in zip(self.params, self.masters, strict=True):
            if master is not None:
                master.grad = None if param.grad is None else param.grad.detach().float()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.targets, max_norm).item()
        if not math.isfinite(grad_norm):
            return grad_norm
        self.adam.step()
        with torch.no_grad():
            for param, master in zip(self.params, self.masters, strict=True):
                if master is not None:
                    param.copy_(master)
        return grad_norm

    def clear(self) -> None:
        self.adam.state.clear()
        self.zero_grad()
        self.masters = [None] * len(self.params)
        self.targets = []


def grpo_step(
    model, reference, optimizer: MasterAdam, batch: Batch, advantages: torch.Tensor, *, config: ProbeConfig
) -> dict[str, float]:
    """One GRPO step through evals/probe/logprobs.py: `config.mini_batches` Adam steps, each
    on its share of the groups, in order; micro-batches of `micro_batch_size` rollouts with
    gradient accumulation, log-probs and entropy in chunks of `logprob_chunk` tokens (never
    [B, T, V] in fp32), optional activation checkpointing. The mini-batches after the first
    train on the sampling policy's log-probs (one no-grad pass before the first update)
    with PPO's clip. `reference` is the frozen copy (full) or a context factory under which
    `model` is the reference (LoRA: adapters off).

    Returns the KL and entropy (at the sampling temperature; token means over the
    batch, each mini-batch's read before its own update), the mean grad norm of the
    updates, `updated` (the share of mini-batches that took an update: a flat one takes
    none under `config.skip_flat_batches`), `pg_clipfrac` and `ppo_kl` (token means
    over the mini-batches after the first; 0 with one). Raises Diverged, before that
    mini-batch's update, on a non-finite loss, KL or gradient."""
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    rows = advantages.shape[0]
    parts = [
        slice(i * rows // config.mini_batches, (i + 1) * rows // config.mini_batches)
        for i in range(config.mini_batches)
    ]
    old = None
    if len(parts) > 1:  # the sampling policy's log-probs of the later mini-batches, before any update
        later = slice(parts[1].start, rows)
        old = torch.zeros_like(batch.response_mask, dtype=torch.float32)
        old[later] = policy_logprobs(
            model,
            input_ids=input_ids[later],
            attention_mask=attention_mask[later],
            response_ids=batch.response_ids[later],
            response_mask=batch.response_mask[later],
            temperature=policy_temperature(config),
            micro_batch_size=config.micro_batch_size,
            chunk=config.logprob_chunk,
        )
    reads, norms = [], []
    for index, part in enumerate(parts):
        stats, grad_norm = _mini_batch_step(
            model,
            reference,
            optimizer,
            batch,
            advantages,
            input_ids,
            attention_mask,
            part,
            old=None if index == 0 else old,
            config=config,
        )
        reads.append((float(batch.response_mask[part].sum()), stats))
        if grad_norm is not None:
            norms.append(grad_norm)

    def mean_of(key: str, read: list) -> float:
        """Token-weighted over the mini-batches; one mini-batch's figure as it is (bit for bit)."""
        if len(read) == 1:
            return read[0][1][key]
        tokens = sum(n for n, _ in read)
        return sum(n * stats[key] for n, stats in read) / tokens if tokens else 0.0

    return {
        "kl": mean_of("kl", reads),
        "entropy": mean_of("entropy", reads),
        "grad_norm": sum(norms) / len(norms) if norms else 0.0,
        "updated": len(norms) / len(parts),
        "pg_clipfrac": mean_of("clipfrac", reads[1:]),
        "ppo_kl": mean_of("ppo_kl", reads[1:]),
    }


def _mini_batch_step(
    model,
    reference,
    optimizer: MasterAdam,
    batch: Batch,
    advantages: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    part: slice,
    *,
    old: torch.Tensor | None,
    config: ProbeConfig,
) -> tuple[dict[str, float], float | None]:
    """The gradient of the rows `part` and one Adam step on it (none for a flat mini-batch
    under skip_flat_batches: a forward pass for its KL and entropy, no backward). Returns
    the read figures and the grad norm (None: no update)."""
    skip = config.skip_flat_batches and is_flat(advantages[part])
    optimizer.zero_grad()
    with torch.no_grad() if skip else contextlib.nullcontext():
        stats = accumulate_grpo_gradients(
            model,
            reference,
            input_ids=input_ids[part],
            attention_mask=attention_mask[part],
            response_ids=batch.response_ids[part],
            response_mask=batch.response_mask[part],
            advantages=advantages[part],
            kl_coef=config.kl_coef,
            temperature=policy_temperature(config),
            micro_batch_size=config.micro_batch_size,
            chunk=config.logprob_chunk,
            checkpoint_activations=config.activation_checkpointing,
            loss_agg=config.loss_agg,
            old_logprobs=None if old is None else old[part],
            clip_ratio=config.clip_ratio,
        )
    if not math.isfinite(stats["loss"]) or not math.isfinite(stats["kl"]):
        raise Diverged(f"non-finite {'loss' if not math.isfinite(stats['loss']) else 'KL'}")
    if skip:
        return stats, None
    grad_norm = optimizer.step(MAX_GRAD_NORM)
    if not math.isfinite(grad_norm):
        raise Diverged("non-finite gradient")
    return stats, grad_norm
