"""The built-in probe backend: hand-written GRPO on the model in memory.

Before the first update (with `baseline_samples` > 0) it samples every prompt of its pool
(`prompt_pool` prompts, a seeded choice) that many times from the starting model: the
per-prompt baselines the stability metrics are normalized against (evals/probe/baseline.py).

Each step:
1. take `prompts_per_step` prompts (seeded shuffles of the pool, cycled) and sample
   `group_size` completions of each at `temperature` (plain softmax sampling, no
   top-k/top-p), stopping at eos or `max_new_tokens` (then counted as truncated);
2. score them with the reward; advantage = (r - group mean) / (group std + 1e-4);
3. one Adam update (one per mini-batch, `mini_batches`) on the loss (`loss_agg`)
       -A * exp(logp - logp.detach()) + kl_coef * k3(ref, logp),
   with k3 = exp(ref - logp) - (ref - logp) - 1 against the reference, and the
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

The parts live apart so that other rollout engines and log-prob kernels can replace
them one at a time: sampling in evals/probe/sampling.py, scoring (`_score`) here, the
update in evals/probe/update.py. `GRPOBackend.run` is set-up (`set_up`), the steps
(`_train`, one `_step` each) and tear-down (`tear_down`, which always runs); set-up and
tear-down, which put the reference, adapters and optimizer on the model and take them
off, are in evals/probe/policy.py.

Point t of the curves is measured on the completions sampled at step t, so point 0 is
the starting model (its KL is 0). Sampling draws from a torch.Generator seeded with
`config.seed` (LoRA's starting adapters too), and dropout is off (eval mode), so on
CPU the same seed gives the same curves (timings aside) in any process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from evals.errors import EvalError
from evals.probe.backends import ProbeBackend
from evals.probe.baseline import Baseline
from evals.probe.config import ProbeConfig
from evals.probe.logprobs import logits_postprocess_problem
from evals.probe.policy import ModuleState, Policy, set_up, tear_down
from evals.probe.records import BackendRun, ProbeCurves, Prompt, PromptSamples, curve_row
from evals.probe.resume import Checkpointing, load, remove, restore, save
from evals.probe.sampling import (
    Batch,
    Diverged,
    encode_prompt,
    eos_token_ids,
    opens_think,
    prompt_order,
    prompt_pool,
    sample_hf,
    sample_vllm,
)
from evals.probe.update import group_advantages, grpo_step
from evals.rewards import Reward, with_opened_think
from evals.stability import length_collapsed


class GRPOBackend(ProbeBackend):
    """Trains `model` in place and restores its weights, modes and flags at the end."""

    name = "builtin"
    supports_reference = True

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
        on_step: Callable[[int, int], None] | None = None,
        checkpoint: Checkpointing | None = None,
    ) -> BackendRun:
        """`on_trained(model)`, when given, is called once with the trained policy after the
        last step (not after a divergence), before the starting weights are restored: the
        hook that lets a caller evaluate what a long RL run made (bench/probe_validity.py,
        `sweep calibrate`). Under LoRA the adapters are still on the model then.
        `on_step(done, planned)`, when given, is called after each step (a long run's
        progress, `sweep calibrate`'s heartbeat). With `checkpoint`, the run's state is
        saved after a step every `checkpoint.every_s` seconds, and a run that finds its own
        checkpoint there goes on from it (evals/probe/resume.py); a run that ends deletes it
        (one stopped by an exception keeps it)."""
        if config.generator == "vllm" and rollouts is None:
            raise EvalError(
                "probe generator vllm: no vLLM engine given (run_probe(..., rollouts=VllmRollouts.build(...)))"
            )
        if config.generator == "hf":
            rollouts = None  # generator: hf samples with the HF loop whatever engine is given
        job = _Job.prepare(model, tokenizer, config=config, prompts=prompts, reward=reward, rollouts=rollouts)
        problem = logits_postprocess_problem(model)
        if problem:
            raise EvalError(f"probe: {problem}")
        saved = ModuleState.capture(model)
        policy = Policy()
        progress = _Progress(on_step=on_step)
        try:
            set_up(policy, model, config=config, rollouts=job.rollouts)
            if checkpoint is not None:
                _resume(job, policy, progress, checkpoint)
            _train(job, policy, progress, checkpoint)
            if on_trained is not None:
                on_trained(model)
        except Diverged as exc:
            progress.diverged, progress.stopped_early = True, True
            where = (
                "while measuring the baseline" if progress.step < 0 else f"at step {progress.step} of {config.steps}"
            )
            progress.stop_reason = f"diverged {where}: {exc}"
        finally:
            tear_down(policy, model, saved, rollouts=job.rollouts)
        if checkpoint is not None:  # the run ended (a divergence too): nothing to go on from
            remove(checkpoint.path)
        return progress.result()


@dataclass
class _Job:
    """What a run works from: its inputs, the encoded prompts, and the seeded streams (the
    sampler's, and the prompt pool and order, drawn on CPU whatever `steps` is)."""

    model: Any
    tokenizer: Any
    config: ProbeConfig
    prompts: Sequence[Prompt]
    reward: Reward
    rollouts: Any  # the vLLM engine that samples, or None: the HF loop
    encoded: list[list[int]]
    think_open: list[bool]  # per prompt: its chat template opened <think>
    eos_ids: set[int]
    pad_id: int
    device: torch.device
    generator: torch.Generator
    pool: list[int]
    order: list[int]  # prompt indices for every step, back to back
    calls: int = 0  # vLLM rollouts: sampling calls made so far (each call's number seeds the engine)

    @classmethod
    def prepare(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        config: ProbeConfig,
        prompts: Sequence[Prompt],
        reward: Reward,
        rollouts: Any,
    ) -> _Job:
        """Raises EvalError for prompts that encode to nothing or a tokenizer without eos."""
        eos_ids = eos_token_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        encoded = [encode_prompt(tokenizer, p.prompt) for p in prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise EvalError("probe prompts: a prompt encodes to no tokens")
        device = next(model.parameters()).device
        order_generator = torch.Generator().manual_seed(config.seed)  # prompt pool and order, on CPU
        pool = prompt_pool(len(prompts), config.prompt_pool, order_generator)
        return cls(
            model=model,
            tokenizer=tokenizer,
            config=config,
            prompts=prompts,
            reward=reward,
            rollouts=rollouts,
            encoded=encoded,
            think_open=[opens_think(tokenizer, ids) for ids in encoded],
            eos_ids=eos_ids,
            pad_id=pad_id,
            device=device,
            generator=torch.Generator(device=device).manual_seed(config.seed),
            pool=pool,
            order=prompt_order(pool, config.steps * config.prompts_per_step, order_generator),
        )

    def sample(self, ids: Sequence[int]) -> Batch:
        """One completion per entry of `ids` (prompt indices), by the engine or the HF loop."""
        if self.rollouts is not None:
            self.calls += 1
            return sample_vllm(
                self.rollouts,
                self.model,
                self.encoded,
                ids,
                config=self.config,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                call=self.calls - 1,
            )
        return sample_hf(
            self.model,
            [self.encoded[i] for i in ids],
            config=self.config,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            generator=self.generator,
        )

    def score(self, ids: Sequence[int], batch: Batch) -> torch.Tensor:
        return _score(self.reward, self.tokenizer, self.prompts, ids, batch, self.think_open)


@dataclass
class _Progress:
    """What the run measured so far, and how it ended."""

    curves: ProbeCurves = field(default_factory=ProbeCurves)
    baseline: list[PromptSamples] = field(default_factory=list)
    steps: list[tuple[PromptSamples, ...]] = field(default_factory=list)
    baseline_s: float = 0.0
    step: int = -1  # the step under way; -1 while measuring the baseline
    stopped_early: bool = False
    stop_reason: str | None = None
    diverged: bool = False
    on_step: Callable[[int, int], None] | None = None  # told (steps done, steps planned) after each

    def result(self) -> BackendRun:
        return BackendRun(
            curves=self.curves,
            stopped_early=self.stopped_early,
            stop_reason=self.stop_reason,
            diverged=self.diverged,
            baseline=tuple(self.baseline),
            steps=tuple(self.steps),
            baseline_s=self.baseline_s,
        )


def _resume(job: _Job, policy: Policy, progress: _Progress, checkpoint: Checkpointing) -> None:
    """Take up the run's own checkpoint, when there is one: its weights, moments, sampler
    and what it measured; the engine then samples from the restored policy."""
    state = load(checkpoint, config=job.config)
    if state is None:
        return
    assert policy.optimizer is not None  # set up first
    job.calls = restore(state, optimizer=policy.optimizer, generator=job.generator, progress=progress)
    checkpoint.resumed_at = progress.step + 1  # the caller's pace counts the steps from here
    _sync_engine(job, policy)


def _train(job: _Job, policy: Policy, progress: _Progress, checkpoint: Checkpointing | None = None) -> None:
    """The baseline (when asked for), then the steps until `steps` or a length collapse;
    a resumed run (progress.step >= 0) goes on at the step after its checkpoint's."""
    config = job.config
    first = progress.step + 1
    if config.baseline_samples and first == 0:
        t0 = time.perf_counter()
        progress.baseline = _measure_baseline(job.pool, config=config, sample=job.sample, score=job.score)
        progress.baseline_s = time.perf_counter() - t0
    base = Baseline(progress.baseline) if progress.baseline else None
    for step in range(first, config.steps):
        progress.step = step
        row, drawn = _step(job, policy, step)
        progress.steps.append(drawn)
        if base is not None:
            length, score_n, entropy = base.normalize(drawn)
            row |= {
                "response_length/normalized": length,
                "critic/score/normalized": score_n,
                "actor/entropy/normalized": entropy,
            }
        progress.curves = progress.curves.append(row)
        if checkpoint is not None and step + 1 < config.steps and checkpoint.due():
            assert policy.optimizer is not None
            save(
                checkpoint,
                config=config,
                optimizer=policy.optimizer,
                generator=job.generator,
                calls=job.calls,
                progress=progress,
            )
        if progress.on_step is not None:
            progress.on_step(step + 1, config.steps)
        stop_reason = _collapse_reason(progress.curves, base, config=config, step=step)
        if stop_reason is not None:
            progress.stopped_early, progress.stop_reason = True, stop_reason
            break


def _step(job: _Job, policy: Policy, step: int) -> tuple[dict[str, float], tuple[PromptSamples, ...]]:
    """Sample, score and update once; the step's curve row and its per-prompt samples."""
    config = job.config
    start = time.perf_counter()
    chosen = job.order[step * config.prompts_per_step : (step + 1) * config.prompts_per_step]
    group = [i for i in chosen for _ in range(config.group_size)]
    batch = job.sample(group)
    gen_s = time.perf_counter() - start
    scores_t = job.score(group, batch)
    advantages = group_advantages(scores_t, config.group_size).to(job.device)
    assert policy.optimizer is not None  # set up before the first step
    update = grpo_step(job.model, policy.reference, policy.optimizer, batch, advantages, config=config)
    if update["updated"]:  # the next step samples from the updated policy
        _sync_engine(job, policy)
    row = curve_row(batch, scores_t, **update, gen_s=gen_s, step_s=time.perf_counter() - start)
    return row, _per_prompt(chosen, config.group_size, batch, scores_t)


def _sync_engine(job: _Job, policy: Policy) -> None:
    """The vLLM engine (if one samples) takes the current policy: the adapters as a LoRA
    request, or the weights (merged with the adapters under LoRA)."""
    if job.rollouts is None:
        return
    if policy.as_requests:
        job.rollouts.set_adapter(policy.adapters)
    else:
        job.rollouts.push_weights(job.model, weights=policy.adapters.merged_weights() if policy.adapters else None)


def _collapse_reason(curves: ProbeCurves, base: Baseline | None, *, config: ProbeConfig, step: int) -> str | None:
    """Why the probe stops after `step`: a sequence-length collapse before the last step
    (evals.stability.length_collapsed on the normalized length with a baseline, else the
    raw mean length); None to go on."""
    if config.collapse_threshold is None or step + 1 >= config.steps:
        return None
    watched = curves.response_length_normalized if base is not None else curves.response_length_mean
    reference_length = base.pool_length if base is not None else None
    if not length_collapsed(
        watched, threshold=config.collapse_threshold, patience=config.collapse_patience, reference=reference_length
    ):
        return None
    initial = reference_length if reference_length is not None else watched[0]
    return (
        f"sequence-length collapse: mean response length below {config.collapse_threshold:g} x "
        f"the initial {initial:.1f} tokens for {config.collapse_patience} "
        f"steps (stopped after step {step} of {config.steps})"
    )


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
    chosen: Sequence[int], group_size: int, batch: Batch, scores: torch.Tensor
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
    batch: Batch,
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
