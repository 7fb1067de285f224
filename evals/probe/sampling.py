"""The probe's rollouts: prompts in, sampled completions out, as one padded batch.

Two samplers fill the same `Batch`: `sample_hf`, the HF per-token loop on the live model
(plain softmax sampling at the temperature, no top-k/top-p, from a seeded
torch.Generator), and `sample_vllm`, the vLLM engine's completions with their entropies
measured on the live model. The helpers around them encode prompts, pick the probe's
prompt pool and its order (seeded, independent of `steps`, so a probe is the prefix of a
longer run), and find the eos tokens.

A non-finite logit while sampling raises `Diverged` (the probe's outcome "diverged").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from evals.errors import EvalError
from evals.probe.config import ProbeConfig
from evals.rewards import THINK_START


class Diverged(Exception):
    """The policy's loss, gradient, KL or logits went non-finite."""


class Batch:
    def __init__(self, prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated, entropy):
        self.prompt_ids = prompt_ids  # [B, P] left-padded
        self.prompt_mask = prompt_mask  # [B, P]
        self.response_ids = response_ids  # [B, T] padded after eos
        self.response_mask = response_mask  # [B, T] 1 up to and including eos
        self.completions = completions  # token ids per completion, eos and padding cut
        self.lengths = lengths  # [B] response tokens, eos included
        self.truncated = truncated  # [B] reached max_new_tokens without eos
        self.entropy = entropy  # [B] mean entropy of the sampling distribution per response token, nats


def policy_temperature(config: ProbeConfig) -> float:
    """The temperature of the policy's log-probs and entropy: the sampling temperature,
    or 1 for greedy rollouts (temperature 0, a deterministic check of the generators)."""
    return config.temperature if config.temperature > 0 else 1.0


# ---------------------------------------------------------------- prompts


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a completion: the tokenizer's eos and the generation config's."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    if not ids:
        raise EvalError("probe: the tokenizer has no eos token, so completions could never end")
    return ids


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of the prompt, in the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def opens_think(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the rendered prompt ends inside an opened `<think>` (as DeepSeek-R1-Distill's
    chat template does), so completions start mid-thought without the tag."""
    text = tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
    return text.rstrip().endswith(THINK_START)


def prompt_pool(n_prompts: int, size: int | None, generator: torch.Generator) -> list[int]:
    """The prompts the probe uses: a seeded choice of `size` of them (all when None or more)."""
    if size is None or size >= n_prompts:
        return list(range(n_prompts))
    return sorted(torch.randperm(n_prompts, generator=generator)[:size].tolist())


def prompt_order(pool: Sequence[int], needed: int, generator: torch.Generator) -> list[int]:
    """Prompt indices for the whole probe: seeded shuffles of the pool, back to back."""
    order: list[int] = []
    while len(order) < needed:
        order += [pool[j] for j in torch.randperm(len(pool), generator=generator).tolist()]
    return order[:needed]


# ---------------------------------------------------------------- the HF loop


def _cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    # transformers 5.24 renamed past_key_values to cache; accept both.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


@torch.no_grad()
def sample_hf(
    model, prompts: list[list[int]], *, config: ProbeConfig, eos_ids: set[int], pad_id: int, generator
) -> Batch:
    """One completion per prompt (token ids) from the live model, KV-cached, token by
    token until eos or `max_new_tokens`; greedy at temperature 0."""
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
    logits = model(
        input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **cache_kw
    ).logits[:, -1]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    entropy_sum = torch.zeros(len(prompts), device=device)
    temperature = policy_temperature(config)
    for t in range(config.max_new_tokens):
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        if not bool(torch.isfinite(logp).all()):
            raise Diverged("non-finite logits while sampling")
        probs = logp.exp()
        entropy_sum += torch.where(finished, 0.0, -(probs * logp).sum(-1))
        if config.temperature == 0:  # greedy
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        alive.append(~finished)
        tokens.append(token)
        finished = finished | torch.isin(token, eos)
        if bool(finished.all()) or t + 1 == config.max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
        positions = mask.sum(1, keepdim=True) - 1
        logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True, **cache_kw
        ).logits[:, -1]

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
    entropy = (entropy_sum / lengths.clamp(min=1)).cpu()
    return Batch(prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated, entropy)


# ---------------------------------------------------------------- the vLLM engine


def sample_vllm(
    rollouts,
    model,
    encoded: Sequence[list[int]],
    ids: Sequence[int],
    *,
    config: ProbeConfig,
    eos_ids: set[int],
    pad_id: int,
    call: int,
) -> Batch:
    """The rows `ids` (runs of one prompt: its group, or its baseline samples) sampled by
    the vLLM engine, one request with n = the run's length per prompt; entropies from the
    live model (chunked, no grad), as the HF loop measures them while sampling. `call`
    numbers the sampling calls of one probe: the engine's seed is derived from it."""
    from evals.probe.logprobs import micro_batches, token_logprobs
    from evals.probe.vllm_rollout import make_batch

    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][0] == i:
            runs[-1] = (i, runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    sampled: dict[int, list[list[int]]] = {}
    for size in sorted({n for _, n in runs}):  # one call per run length (in the probe all runs are equal)
        chosen = [i for i, n in runs if n == size]
        got = rollouts.sample(
            [encoded[i] for i in chosen],
            group_size=size,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed * 1_000_003 + call,
            eos_ids=eos_ids,
            pad_id=pad_id,
        )
        for j, i in enumerate(chosen):
            for k in range(size):
                row = j * size + k
                sampled.setdefault(i, []).append(got.response_ids[row, : int(got.lengths[row])].tolist())
    responses = [sampled[i].pop(0) for i in ids]  # back into the order of `ids`
    got = make_batch(
        [encoded[i] for i in ids],
        responses,
        [""] * len(ids),
        eos_ids=eos_ids,
        pad_id=pad_id,
        max_new_tokens=config.max_new_tokens,
    )
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = got.prompt_ids.to(device), got.prompt_mask.to(device)
    response_ids, response_mask = got.response_ids.to(device), got.response_mask.to(device)
    input_ids, mask = torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1)
    entropy = torch.zeros(len(ids))
    with torch.no_grad():
        for rows in micro_batches(len(ids), config.micro_batch_size):
            _, ent = token_logprobs(
                model,
                input_ids=input_ids[rows],
                attention_mask=mask[rows],
                response_ids=response_ids[rows],
                response_mask=response_mask[rows],
                temperature=policy_temperature(config),
                chunk=config.logprob_chunk,
            )
            entropy[rows] = (ent.sum(1) / response_mask[rows].sum(1).clamp(min=1)).float().cpu()
    if not bool(torch.isfinite(entropy).all()):
        raise Diverged("non-finite logits while sampling")
    return Batch(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        got.completions,
        got.lengths.to(device),
        got.truncated.to(device),
        entropy,
    )
