"""The built-in probe backend: hand-written GRPO on the model in memory.

Before the first update (with `baseline_samples` > 0) it samples every prompt of its pool
(`prompt_pool` prompts, a seeded choice) that many times from the starting model: the
per-prompt baselines the stability metrics are normalized against (evals/probe/baseline.py).

Each step:
1. take `prompts_per_step` prompts (seeded shuffles of the pool, cycled) and sample
   `group_size` completions of each at `temperature` (plain softmax sampling, no
   top-k/top-p), stopping at eos or `max_new_tokens` (then counted as truncated);
2. score them with the reward; advantage = (r - group mean) / (group std + 1e-4);
3. one Adam update on the token-mean loss
       -A * exp(logp - logp.detach()) + kl_coef * k3(ref, logp),
   with k3 = exp(ref - logp) - (ref - logp) - 1 against the starting model, and the
   gradient norm clipped to 1.0 (verl's and TRL's default). The update runs in
   micro-batches of `micro_batch_size` rollouts with gradient accumulation, log-probs and
   entropy in chunks of `logprob_chunk` tokens, optionally with activation checkpointing
   (evals/probe/logprobs.py): the same gradient as the full batch, to rounding.

`update: full` trains every weight against a frozen deep copy of the starting model.
`update: lora` trains fp32 LoRA adapters (rank `lora_rank`, every linear layer) injected
into the live model; the reference is the same model with the adapters off (no copy),
and the adapters are removed at the end (evals/probe/lora.py).

With `generator: vllm` the engine first takes the candidate's weights; after each update
it takes the new policy: all weights (`full`), or for `lora` a LoRA request per step
(`vllm_lora: requests`, where the engine was built with LoRA on) or the merged weights
(`vllm_lora: merged`, or an engine without LoRA). At the end it holds the candidate again.

Adam runs on fp32 master copies of every parameter that is not fp32 (a bf16 or fp16
model): the live weights are the masters rounded after each step, so updates smaller
than a bf16 step accumulate instead of rounding away. A non-finite loss, gradient, KL
or logit ends the probe as "diverged" (an outcome, not an error).

The three parts (`_sample`, `_score`, `_update`) are separate functions so that other
rollout engines and log-prob kernels can replace them one at a time.

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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from evals.errors import EvalError
from evals.probe.backends import ProbeBackend
from evals.probe.baseline import Baseline
from evals.probe.config import ProbeConfig
from evals.probe.logprobs import accumulate_grpo_gradients, logits_postprocess_problem
from evals.probe.lora import LoraAdapters
from evals.probe.records import BackendRun, ProbeCurves, Prompt, PromptSamples
from evals.rewards import THINK_START, Reward, with_opened_think
from evals.stability import length_collapsed

MAX_GRAD_NORM = 1.0  # verl's and TRL's default clip
ADVANTAGE_EPS = 1e-4  # keeps a group with identical rewards at advantage 0, not NaN


class _Diverged(Exception):
    """The policy's loss, gradient, KL or logits went non-finite."""


class GRPOBackend(ProbeBackend):
    """Trains `model` in place and restores its weights, modes and flags at the end."""

    name = "builtin"

    def run(
        self,
        model: Any,
        tokenizer: Any,
        *,
        config: ProbeConfig,
        prompts: Sequence[Prompt],
        reward: Reward,
        rollouts: Any = None,
        on_trained: Callable[[Any], None] | None = None,
    ) -> BackendRun:
        """`on_trained(model)`, when given, is called once with the trained policy after the
        last step (not after a divergence), before the starting weights are restored: the
        hook that lets a caller evaluate what a long RL run made (bench/probe_validity.py,
        `sweep calibrate`). Under LoRA the adapters are still on the model then."""
        if config.generator == "vllm" and rollouts is None:
            raise EvalError(
                "probe generator vllm: no vLLM engine given (run_probe(..., rollouts=VllmRollouts.build(...)))"
            )
        if config.generator == "hf":
            rollouts = None  # generator: hf samples with the HF loop whatever engine is given
        eos_ids = _eos_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        encoded = [_encode_prompt(tokenizer, p.prompt) for p in prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise EvalError("probe prompts: a prompt encodes to no tokens")
        think_open = [_opens_think(tokenizer, ids) for ids in encoded]
        params = list(model.parameters())
        device = params[0].device
        generator = torch.Generator(device=device).manual_seed(config.seed)
        order_generator = torch.Generator().manual_seed(config.seed)  # prompt pool and order, on CPU
        pool = _prompt_pool(len(prompts), config.prompt_pool, order_generator)
        order = _prompt_order(pool, config.steps * config.prompts_per_step, order_generator)
        calls = iter(range(1 << 62))  # vLLM rollouts: one call number per sampling step

        def sample(ids):
            if rollouts is not None:
                return _sample_vllm(
                    rollouts, model, encoded, ids, config=config, eos_ids=eos_ids, pad_id=pad_id, call=next(calls)
                )
            return _sample(
                model, [encoded[i] for i in ids], config=config, eos_ids=eos_ids, pad_id=pad_id, generator=generator
            )

        score = lambda ids, batch: _score(reward, tokenizer, prompts, ids, batch, think_open)  # noqa: E731

        problem = logits_postprocess_problem(model)
        if problem:
            raise EvalError(f"probe: {problem}")
        saved = _ModuleState.capture(model)
        adapters: LoraAdapters | None = None
        reference: Any = None
        optimizer = None
        curves = ProbeCurves()
        baseline: list[PromptSamples] = []
        steps: list[tuple[PromptSamples, ...]] = []
        stopped_early, stop_reason, diverged, baseline_s = False, None, False, 0.0
        step = -1
        as_requests = False  # LoRA adapters reach the vLLM engine as LoRA requests
        try:
            model.eval()  # no dropout: sampling and the update see the same policy
            if rollouts is not None:  # the engine may hold another candidate (or the eval's): start from this one
                rollouts.clear_adapter()
                rollouts.push_weights(model)
            if config.update == "lora":  # fp32 adapters on the live model; reference = adapters off
                adapters = LoraAdapters(model, rank=config.lora_rank)
                # the engine samples the adapted policy through LoRA requests where it can
                # (its base weights stay the candidate's), else through merged-weight pushes
                as_requests = (
                    rollouts is not None and config.vllm_lora == "requests" and rollouts.takes_lora(config.lora_rank)
                )
                reference, trainable = adapters.disabled, adapters.parameters
            else:  # frozen initial candidate, and every weight trains
                reference = copy.deepcopy(model).eval().requires_grad_(False)
                model.requires_grad_(True)
                trainable = params
            optimizer = MasterAdam(trainable, lr=config.learning_rate)
            if config.baseline_samples:
                t0 = time.perf_counter()
                baseline = _measure_baseline(pool, config=config, sample=sample, score=score)
                baseline_s = time.perf_counter() - t0
            base = Baseline(baseline) if baseline else None
            for step in range(config.steps):
                start = time.perf_counter()
                chosen = order[step * config.prompts_per_step : (step + 1) * config.prompts_per_step]
                group = [i for i in chosen for _ in range(config.group_size)]
                batch = sample(group)
                gen_s = time.perf_counter() - start
                scores_t = score(group, batch)
                grouped = scores_t.view(len(chosen), config.group_size)
                advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + ADVANTAGE_EPS)
                update = _update(model, reference, optimizer, batch, advantages.view(-1).to(device), config=config)
                if rollouts is not None:  # the next step samples from the updated policy
                    if as_requests:
                        rollouts.set_adapter(adapters)
                    else:
                        rollouts.push_weights(model, weights=adapters.merged_weights() if adapters else None)

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
                drawn = _per_prompt(chosen, config.group_size, batch, scores_t)
                steps.append(drawn)
                if base is not None:
                    length, score_n, entropy = base.normalize(drawn)
                    row |= {
                        "response_length/normalized": length,
                        "critic/score/normalized": score_n,
                        "actor/entropy/normalized": entropy,
                    }
                curves = curves.append(row)
                watched = curves.response_length_normalized if base is not None else curves.response_length_mean
                reference_length = base.pool_length if base is not None else None
                if config.collapse_threshold is not None and length_collapsed(
                    watched,
                    threshold=config.collapse_threshold,
                    patience=config.collapse_patience,
                    reference=reference_length,
                ):
                    stopped_early = step + 1 < config.steps
                    if stopped_early:
                        initial = reference_length if reference_length is not None else watched[0]
                        stop_reason = (
                            f"sequence-length collapse: mean response length below {config.collapse_threshold:g} x "
                            f"the initial {initial:.1f} tokens for {config.collapse_patience} "
                            f"steps (stopped after step {step} of {config.steps})"
                        )
                        break
            if on_trained is not None:
                on_trained(model)
        except _Diverged as exc:
            diverged, stopped_early = True, True
            where = "while measuring the baseline" if step < 0 else f"at step {step} of {config.steps}"
            stop_reason = f"diverged {where}: {exc}"
        finally:
            if optimizer is not None:
                optimizer.clear()
            model.zero_grad(set_to_none=True)
            if adapters is not None:  # the base weights never trained: drop the adapters
                adapters.remove()
            elif isinstance(reference, torch.nn.Module):
                with torch.no_grad():  # the caller gets back the weights it gave
                    for param, given in zip(model.parameters(), reference.parameters(), strict=True):
                        param.copy_(given)
            saved.restore(model)
            del reference
            if as_requests:  # the engine's weights never changed: drop the adapter
                rollouts.clear_adapter()
            elif rollouts is not None:  # the engine holds the given weights again
                rollouts.push_weights(model)
        return BackendRun(
            curves=curves,
            stopped_early=stopped_early,
            stop_reason=stop_reason,
            diverged=diverged,
            baseline=tuple(baseline),
            steps=tuple(steps),
            baseline_s=baseline_s,
        )


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


def _measure_baseline(pool: Sequence[int], *, config: ProbeConfig, sample, score) -> list[PromptSamples]:
    """`baseline_samples` completions of every pool prompt from the starting model, in
    batches no larger than a step's (so the baseline needs no more memory than a step)."""
    rows = [i for i in pool for _ in range(config.baseline_samples)]
    chunk = max(
        config.baseline_samples,
        (config.prompts_per_step * config.group_size) // config.baseline_samples * config.baseline_samples,
    )
    lengths: list[float] = []
    scores: list[float] = []
    entropies: list[float] = []
    for begin in range(0, len(rows), chunk):
        ids = rows[begin : begin + chunk]
        batch = sample(ids)
        scores += score(ids, batch).tolist()
        lengths += batch.lengths.float().tolist()
        entropies += batch.entropy.tolist()
    k = config.baseline_samples
    return [
        PromptSamples(
            prompt,
            tuple(lengths[j * k : (j + 1) * k]),
            tuple(scores[j * k : (j + 1) * k]),
            tuple(entropies[j * k : (j + 1) * k]),
        )
        for j, prompt in enumerate(pool)
    ]


def _per_prompt(
    chosen: Sequence[int], group_size: int, batch: _Batch, scores: torch.Tensor
) -> tuple[PromptSamples, ...]:
    lengths = batch.lengths.float().view(len(chosen), group_size).tolist()
    entropies = batch.entropy.view(len(chosen), group_size).tolist()
    grouped = scores.view(len(chosen), group_size).tolist()
    return tuple(
        PromptSamples(i, tuple(lengths[j]), tuple(grouped[j]), tuple(entropies[j])) for j, i in enumerate(chosen)
    )


def _score(
    reward: Reward,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    ids: Sequence[int],
    batch: _Batch,
    think_open: Sequence[bool],
) -> torch.Tensor:
    """Raw rewards of a batch (fp32, on CPU). A completion whose chat template opened
    `<think>` in the prompt is scored with that `<think>` put back in front of it, so
    answer and format rules see the whole think block."""
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in batch.completions]
    texts = [with_opened_think(text) if think_open[i] else text for i, text in zip(ids, texts, strict=True)]
    scores = reward(
        prompts=[prompts[i].prompt for i in ids], completions=texts, answers=[prompts[i].answer for i in ids]
    )
    scores_t = torch.tensor(scores, dtype=torch.float32)
    if scores_t.numel() != len(ids) or not torch.isfinite(scores_t).all():
        raise EvalError(
            f"probe reward returned {scores_t.numel()} scores for {len(ids)} completions, or non-finite ones"
        )
    return scores_t


class _ModuleState:
    """train/eval mode of every submodule and requires_grad of every parameter."""

    def __init__(self, training: list[bool], requires_grad: list[bool]):
        self.training, self.requires_grad = training, requires_grad

    @classmethod
    def capture(cls, model: torch.nn.Module) -> _ModuleState:
        return cls([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])

    def restore(self, model: torch.nn.Module) -> None:
        for module, training in zip(model.modules(), self.training, strict=True):
            module.training = training
        for param, flag in zip(model.parameters(), self.requires_grad, strict=True):
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
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def _opens_think(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the rendered prompt ends inside an opened `<think>` (as DeepSeek-R1-Distill's
    chat template does), so completions start mid-thought without the tag."""
    text = tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
    return text.rstrip().endswith(THINK_START)


def _prompt_pool(n_prompts: int, size: int | None, generator: torch.Generator) -> list[int]:
    """The prompts the probe uses: a seeded choice of `size` of them (all when None or more)."""
    if size is None or size >= n_prompts:
        return list(range(n_prompts))
    return sorted(torch.randperm(n_prompts, generator=generator)[:size].tolist())


def _prompt_order(pool: Sequence[int], needed: int, generator: torch.Generator) -> list[int]:
    """Prompt indices for the whole probe: seeded shuffles of the pool, back to back."""
    order: list[int] = []
    while len(order) < needed:
        order += [pool[j] for j in torch.randperm(len(pool), generator=generator).tolist()]
    return order[:needed]


class _Batch:
    def __init__(self, prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated, entropy):
        self.prompt_ids = prompt_ids  # [B, P] left-padded
        self.prompt_mask = prompt_mask  # [B, P]
        self.response_ids = response_ids  # [B, T] padded after eos
        self.response_mask = response_mask  # [B, T] 1 up to and including eos
        self.completions = completions  # token ids per completion, eos and padding cut
        self.lengths = lengths  # [B] response tokens, eos included
        self.truncated = truncated  # [B] reached max_new_tokens without eos
        self.entropy = entropy  # [B] mean entropy of the sampling distribution per response token, nats


def _cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    # transformers 5.24 renamed past_key_values to cache; accept both.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


@torch.no_grad()
def _sample(
    model, prompts: list[list[int]], *, config: ProbeConfig, eos_ids: set[int], pad_id: int, generator
) -> _Batch:
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
            raise _Diverged("non-finite logits while sampling")
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
    return _Batch(prompt_ids, prompt_mask, response_ids, response_mask, completions, lengths, truncated, entropy)


def policy_temperature(config: ProbeConfig) -> float:
    """The temperature of the policy's log-probs and entropy: the sampling temperature,
    or 1 for greedy rollouts (temperature 0, a deterministic check of the generators)."""
    return config.temperature if config.temperature > 0 else 1.0


def _sample_vllm(
    rollouts,
    model,
    encoded: Sequence[list[int]],
    ids: Sequence[int],
    *,
    config: ProbeConfig,
    eos_ids: set[int],
    pad_id: int,
    call: int,
) -> _Batch:
    """The rows `ids` (runs of one prompt: its group, or its baseline samples) sampled by
    the vLLM engine, one request with n = the run's length per prompt; entropies from the
    live model (chunked, no grad), as the HF loop measures them while sampling."""
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
        raise _Diverged("non-finite logits while sampling")
    return _Batch(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        got.completions,
        got.lengths.to(device),
        got.truncated.to(device),
        entropy,
    )


def _update(
    model, reference, optimizer: MasterAdam, batch: _Batch, advantages: torch.Tensor, *, config: ProbeConfig
) -> dict[str, float]:
    """One GRPO step through evals/probe/logprobs.py: micro-batches of `micro_batch_size`
    rollouts with gradient accumulation, log-probs and entropy in chunks of
    `logprob_chunk` tokens (never [B, T, V] in fp32), optional activation checkpointing.
    `reference` is the frozen copy (full) or a context factory under which `model` is the
    reference (LoRA: adapters off). Returns the KL, entropy (at the sampling temperature)
    and grad norm. Raises _Diverged (before any weight changes) on a non-finite loss, KL
    or gradient."""
    optimizer.zero_grad()
    stats = accumulate_grpo_gradients(
        model,
        reference,
        input_ids=torch.cat([batch.prompt_ids, batch.response_ids], 1),
        attention_mask=torch.cat([batch.prompt_mask, batch.response_mask], 1),
        response_ids=batch.response_ids,
        response_mask=batch.response_mask,
        advantages=advantages,
        kl_coef=config.kl_coef,
        temperature=policy_temperature(config),
        micro_batch_size=config.micro_batch_size,
        chunk=config.logprob_chunk,
        checkpoint_activations=config.activation_checkpointing,
    )
    if not math.isfinite(stats["loss"]) or not math.isfinite(stats["kl"]):
        raise _Diverged(f"non-finite {'loss' if not math.isfinite(stats['loss']) else 'KL'}")
    grad_norm = optimizer.step(MAX_GRAD_NORM)
    if not math.isfinite(grad_norm):
        raise _Diverged("non-finite gradient")
    return {"kl": stats["kl"], "entropy": stats["entropy"], "grad_norm": grad_norm}
