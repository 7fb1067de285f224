"""The built-in probe backend: hand-written GRPO on the model in memory.

Each step:
1. take `prompts_per_step` prompts (a seeded shuffle, cycled) and sample `group_size`
   completions of each at `temperature` (plain softmax sampling, no top-k/top-p),
   stopping at eos or `max_new_tokens` (then counted as truncated);
2. score them with the reward; advantage = (r - group mean) / (group std + 1e-4);
3. one Adam update on the token-mean loss
       -A * exp(logp - logp.detach()) + kl_coef * k3(ref, logp),
   with k3 = exp(ref - logp) - (ref - logp) - 1 against a frozen copy of the starting
   model, and the gradient norm clipped to 1.0 (verl's and TRL's default).

Point t of the curves is measured on the completions sampled at step t, so point 0 is
the starting model (its KL is 0). Sampling draws from a torch.Generator seeded with
`config.seed`, and dropout is off (eval mode), so on CPU the same seed gives the same
curves (timings aside).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from typing import Any, Sequence

import torch

from evals.errors import EvalError
from evals.probe.backends import ProbeBackend
from evals.probe.records import BackendRun, ProbeConfig, ProbeCurves, Prompt
from evals.rewards import Reward
from evals.stability import length_collapsed

MAX_GRAD_NORM = 1.0  # verl's and TRL's default clip
ADVANTAGE_EPS = 1e-4  # keeps a group with identical rewards at advantage 0, not NaN


class GRPOBackend(ProbeBackend):
    """Trains `model` in place and restores its weights, modes and flags at the end."""

    name = "builtin"

    def run(self, model: Any, tokenizer: Any, *, config: ProbeConfig, prompts: Sequence[Prompt], reward: Reward) -> BackendRun:
        eos_ids = _eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        encoded = [_encode_prompt(tokenizer, p.prompt) for p in prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise EvalError("probe prompts: a prompt encodes to no tokens")
        params = list(model.parameters())
        device = params[0].device
        generator = torch.Generator(device=device).manual_seed(config.seed)
        order_generator = torch.Generator().manual_seed(config.seed)  # prompt order, on CPU
        order = _prompt_order(len(prompts), config.steps * config.prompts_per_step, order_generator)

        reference = copy.deepcopy(model).eval().requires_grad_(False)  # frozen initial candidate
        saved = _ModuleState.capture(model)
        optimizer = None
        curves = ProbeCurves()
        stopped_early, stop_reason = False, None
        try:
            model.eval()  # no dropout: sampling and the update see the same policy
            model.requires_grad_(True)
            optimizer = torch.optim.Adam(params, lr=config.learning_rate)
            for step in range(config.steps):
                start = time.perf_counter()
                chosen = order[step * config.prompts_per_step : (step + 1) * config.prompts_per_step]
                group = [i for i in chosen for _ in range(config.group_size)]
                batch = _sample(model, [encoded[i] for i in group], config=config, eos_ids=eos_ids, pad_id=pad_id, generator=generator)
                gen_s = time.perf_counter() - start
                texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in batch.completions]
                scores = reward(
                    prompts=[prompts[i].prompt for i in group],
                    completions=texts,
                    answers=[prompts[i].answer for i in group],
                )
                scores_t = torch.tensor(scores, dtype=torch.float32)
                if scores_t.numel() != len(group) or not torch.isfinite(scores_t).all():
                    raise EvalError(f"probe reward returned {scores_t.numel()} scores for {len(group)} completions, or non-finite ones")
                grouped = scores_t.view(len(chosen), config.group_size)
                advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + ADVANTAGE_EPS)
                update = _update(model, reference, optimizer, batch, advantages.view(-1).to(device), config=config)

                lengths = batch.lengths.float()
                row = {
                    "response_length/mean": lengths.mean().item(),
                    "response_length/min": lengths.min().item(),
                    "response_length/max": lengths.max().item(),
                    "response_length/clip_ratio": batch.truncated.float().mean().item(),
                    "critic/score/mean": scores_t.mean().item(),
                    "critic/score/std": scores_t.std(unbiased=False).item(),
                    "actor/kl": update["kl"],
                    "actor/entropy": update["entropy"],
                    "actor/grad_norm": update["grad_norm"],
                    "timing/gen_s": gen_s,
                    "timing/step_s": time.perf_counter() - start,
                }
                curves = curves.append(row)
                if config.collapse_threshold is not None and length_collapsed(
                    curves.response_length_mean, threshold=config.collapse_threshold, patience=config.collapse_patience
                ):
                    stopped_early = step + 1 < config.steps
                    if stopped_early:
                        stop_reason = (
                            f"sequence-length collapse: mean response length below {config.collapse_threshold:g} x "
                            f"the initial {curves.response_length_mean[0]:.1f} tokens for {config.collapse_patience} "
                            f"steps (stopped after step {step} of {config.steps})"
                        )
                        break
        finally:
            if optimizer is not None:
                optimizer.state.clear()
            model.zero_grad(set_to_none=True)
            with torch.no_grad():  # the caller gets back the weights it gave
                for param, initial in zip(model.parameters(), reference.parameters()):
                    param.copy_(initial)
            saved.restore(model)
            del reference
        return BackendRun(curves=curves, stopped_early=stopped_early, stop_reason=stop_reason)


class _ModuleState:
    """train/eval mode of every submodule and requires_grad of every parameter."""

    def __init__(self, training: list[bool], requires_grad: list[bool]):
        self.training, self.requires_grad = training, requires_grad

    @classmethod
    def capture(cls, model: torch.nn.Module) -> "_ModuleState":
        return cls([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])

    def restore(self, model: torch.nn.Module) -> None:
        for module, training in zip(model.modules(), self.training):
            module.training = training
        for param, flag in zip(model.parameters(), self.requires_grad):
            param.requires_grad_(flag)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    if not ids:
        raise EvalError("probe: the tokenizer has no eos token, so completions could never end")
    return ids


def _encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of the prompt, in the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def _prompt_order(n_prompts: int, needed: int, generator: torch.Generator) -> list[int]:
    """Prompt indices for the whole probe: seeded shuffles of all prompts, back to back."""
    order: list[int] = []
    while len(order) < needed:
        order += torch.randperm(n_prompts, generator=generator).tolist()
    return order[:needed]


class _Batch:
    def __init__(self, prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated):
        self.prompt_ids = prompt_ids  # [B, P] left-padded
        self.prompt_mask = prompt_mask  # [B, P]
        self.response_ids = response_ids  # [B, T] padded after eos
        self.response_mask = response_mask  # [B, T] 1 up to and including eos
        self.completions = completions  # token ids per completion, eos and padding cut
        self.lengths = lengths  # [B] response tokens, eos included
        self.truncated = truncated  # [B] reached max_new_tokens without eos


def _cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    # transformers 5.24 renamed past_key_values to cache; accept both.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


@torch.no_grad()
def _sample(model, prompts: list[list[int]], *, config: ProbeConfig, eos_ids: set[int], pad_id: int, generator) -> _Batch:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, width - len(ids) :] = torch.tensor(ids)
        prompt_mask[row, width - len(ids) :] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    eos = torch.tensor(sorted(eos_ids), device=device)

    cache = DynamicCache(config=model.config)  # the config sets up sliding-window layers where a model has them
    cache_kw = _cache_kwargs(model, cache)
    mask = prompt_mask
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **cache_kw).logits[:, -1]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    for t in range(config.max_new_tokens):
        probs = torch.softmax(logits.float() / config.temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        alive.append(~finished)
        tokens.append(token)
        finished = finished | torch.isin(token, eos)
        if bool(finished.all()) or t + 1 == config.max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
        positions = mask.sum(1, keepdim=True) - 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True, **cache_kw).logits[:, -1]

    response_ids = torch.stack(tokens, 1)
    response_mask = torch.stack(alive, 1).long()
    lengths = response_mask.sum(1)
    truncated = ~finished
    completions = []
    for row in range(len(prompts)):
        ids = response_ids[row, : lengths[row]].tolist()
        if ids and ids[-1] in eos_ids:
            ids = ids[:-1]
        completions.append(ids)
    return _Batch(prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated)


def _update(model, reference, optimizer, batch: _Batch, advantages: torch.Tensor, *, config: ProbeConfig) -> dict[str, float]:
    """One GRPO step. Returns the KL, entropy (at the sampling temperature) and grad norm."""
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    response_len = batch.response_ids.shape[1]
    token_mask = batch.response_mask.float()
    n_tokens = token_mask.sum().clamp(min=1)

    def token_logprobs(module) -> tuple[torch.Tensor, torch.Tensor]:
        # logits at position i predict token i + 1: keep the response_len positions before the end
        logits = module(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=response_len + 1).logits
        logp_all = torch.log_softmax(logits[:, :-1].float() / config.temperature, dim=-1)
        return logp_all.gather(-1, batch.response_ids[..., None]).squeeze(-1), logp_all

    with torch.no_grad():
        ref_logp, _ = token_logprobs(reference)
    logp, logp_all = token_logprobs(model)
    log_ratio_ref = ref_logp - logp
    k3 = torch.exp(log_ratio_ref) - log_ratio_ref - 1  # >= 0, unbiased estimate of KL(policy || ref)
    policy_loss = -advantages[:, None] * torch.exp(logp - logp.detach())  # gradient: -A * grad logp
    loss = ((policy_loss + config.kl_coef * k3) * token_mask).sum() / n_tokens

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM).item()
    if math.isfinite(grad_norm):
        optimizer.step()
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return {
            "kl": float((k3.detach() * token_mask).sum() / n_tokens),
            "entropy": float((entropy * token_mask).sum() / n_tokens),
            "grad_norm": grad_norm,
        }
