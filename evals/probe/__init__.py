"""The short RLHF probe: a few RL steps from a candidate, and its stability metrics.

    from evals.probe import ProbeConfig, run_probe
    config = ProbeConfig.from_dict(spec.evals.probe.model_dump())
    result = run_probe(model, tokenizer, config=config)
    result.metrics.as_metrics()   # {"probe/length_retention": 0.93, ...}

Importing this package is cheap (no torch); the built-in backend loads on first run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from evals.errors import EvalError
from evals.plugins import REWARD_RULES
from evals.probe.backends import ProbeBackend, check_reference_support, get_backend, register_backend
from evals.probe.baseline import bootstrap_noise, normalized_metrics, null_reward, reward_fall
from evals.probe.config import ProbeConfig, RewardConfig
from evals.probe.records import (
    CURVE_KEYS,
    BackendRun,
    ProbeCurves,
    ProbeResult,
    Prompt,
    PromptSamples,
    load_prompts,
)
from evals.rewards import Reward, build_reward, rule_needs_answer
from evals.stability import StabilityMetrics, diverged_metrics, stability_metrics

__all__ = [
    "CURVE_KEYS",
    "BackendRun",
    "ProbeBackend",
    "ProbeConfig",
    "ProbeCurves",
    "ProbeResult",
    "Prompt",
    "PromptSamples",
    "RewardConfig",
    "StabilityMetrics",
    "get_backend",
    "load_prompts",
    "register_backend",
    "run_probe",
    "score_run",
]


def run_probe(
    model: Any,
    tokenizer: Any,
    *,
    config: ProbeConfig,
    prompts: Sequence[Prompt] | None = None,
    reward: Reward | None = None,
    rollouts: Any = None,
    on_trained: Any = None,
    on_step: Any = None,
    checkpoint: Any = None,
) -> ProbeResult:
    """Run `config.steps` RL steps from `model` and measure its stability.

    model: a transformers causal LM in memory (any device); tokenizer: its tokenizer
    (prompts get its chat template when it has one). prompts: defaults to the jsonl file
    `config.prompts`. reward: a custom reward callable (see evals.rewards); defaults to
    the one config.reward names (a rule, or a reward model loaded here). rollouts: the
    vLLM engine (evals.probe.vllm_rollout.VllmRollouts) that samples when
    config.generator is vllm; it holds the model's starting weights again at the end.
    on_trained: `on_trained(model)` is called with the trained policy after the last step,
    before the weights are restored (built-in backend; e.g. to evaluate a long run).
    on_step: `on_step(done, planned)` after each step, for a backend whose `run` takes it
    (the built-in one does; for another it is left out).
    checkpoint: an evals.probe.resume.Checkpointing: the run's state is saved there every
    so often and a run that finds its own checkpoint goes on from it (built-in backend;
    another backend that does not take `checkpoint` runs without).

    What happens to `model` (built-in backend): it is trained in place (update: full,
    next to a frozen copy used for the KL; update: lora, fp32 adapters injected into it,
    with the adapters-off model as the reference; with config.reference, that model is
    the KL's reference, loaded once per process, and a full update keeps the starting
    weights in host memory) and handed back as it came: the same weights (copied back,
    or never touched under LoRA, even on error), its own modules (adapters removed), each submodule's train/eval mode and each
    parameter's requires_grad restored, gradients None, no optimizer state kept, no
    hooks added. Peak memory, update: full, is about two copies of the model, fp32
    masters and Adam's two moments; the memory plan (sweep/run/memory_plan.py) has the parts.
    Nothing is written to disk, but the checkpoint when one is given.

    Bad input (unreadable prompts, a rule that needs answers on prompts without one, an
    unknown backend or reward model path) raises EvalError before any step runs.
    """
    start = time.perf_counter()
    if not isinstance(config, ProbeConfig):
        raise TypeError(f"config must be a ProbeConfig, got {type(config).__name__}")
    prompts = list(prompts) if prompts is not None else load_prompts(config.prompts)
    if not prompts:
        raise EvalError("probe: no prompts")
    backend = get_backend(config.backend)
    check_reference_support(backend, config)
    if reward is None:
        rule = config.reward.rule if config.reward.model is None else None
        if rule is not None and rule in REWARD_RULES and rule_needs_answer(rule):
            missing = [i for i, p in enumerate(prompts) if p.answer is None]
            if missing:
                raise EvalError(
                    f"probe: reward rule {rule!r} needs an answer for every prompt; prompt {missing[0] + 1} has none ({len(missing)} in all)"
                )
        reward = build_reward(rule=rule, model=config.reward.model, device=_device_of(model), dtype=_dtype_of(model))
    if config.generator == "vllm" and rollouts is None:
        raise EvalError(
            "probe generator vllm: give the vLLM engine (rollouts=VllmRollouts...); `sweep probe --generator vllm` and the trial worker build one"
        )
    extra: dict[str, Any] = {"rollouts": rollouts} if rollouts is not None else {}
    if on_trained is not None:
        extra["on_trained"] = on_trained
    takes = inspect.signature(backend.run).parameters
    for name, value in (("on_step", on_step), ("checkpoint", checkpoint)):
        if value is not None and name in takes:
            extra[name] = value
    run = backend.run(model, tokenizer, config=config, prompts=prompts, reward=reward, **extra)
    metrics, curves = score_run(run, config=config, with_curves=True)
    wall_s = time.perf_counter() - start
    return ProbeResult(
        curves=curves,
        metrics=metrics,
        stopped_early=run.stopped_early,
        stop_reason=run.stop_reason,
        backend=config.backend,
        setup_s=max(0.0, wall_s - sum(run.curves.step_s)),
        wall_s=wall_s,
        diverged=run.diverged,
        baseline_s=run.baseline_s,
        baseline=run.baseline,
        steps=run.steps,
    )


def score_run(run: BackendRun, *, config: ProbeConfig, with_curves: bool = False):
    """The stability metrics of a backend's run, the same way for every backend.

    With a baseline: from the per-prompt normalized curves, against the pool's baseline
    means, with a bootstrap noise band (`noise_samples` replicates). Without: from the raw
    curves against their first point. Either way over the configured `steps` (a probe that
    stopped early never scores better than one that ran on). A diverged run gets the
    finite worst case (evals.stability.diverged_metrics). Returns the StabilityMetrics, or
    with `with_curves` (metrics, the run's curves plus the per-step noise curves).
    """
    metrics, curves = _score_run(run, config=config)
    if curves.updated:
        metrics = replace(metrics, update_share=sum(curves.updated) / len(curves.updated))
    return (metrics, curves) if with_curves else metrics


def _score_run(run: BackendRun, *, config: ProbeConfig) -> tuple[StabilityMetrics, ProbeCurves]:
    curves = run.curves
    if curves.steps == 0 and not run.diverged:
        raise EvalError(f"probe backend {config.backend!r} returned no steps")
    seen = None
    if curves.steps:
        if run.baseline and run.steps:
            seen = normalized_metrics(
                run.baseline, run.steps, kl=curves.kl, window=config.window, planned_steps=config.steps
            )
            if config.noise_samples and not run.diverged:
                noise, noise_curves = bootstrap_noise(
                    run.baseline,
                    run.steps,
                    window=config.window,
                    planned_steps=config.steps,
                    replicates=config.noise_samples,
                    seed=config.seed,
                )
                null = null_reward(
                    run.baseline, run.steps, window=config.window, replicates=config.noise_samples, seed=config.seed
                )
                fall = None if null is None else reward_fall(seen.reward_dip, null[0], noise.get("reward_dip"))
                seen = replace(seen, noise=noise, reward_fall=fall)
                curves = replace(curves, **{CURVE_KEYS[k]: tuple(v) for k, v in noise_curves.items()})
        else:
            seen = stability_metrics(
                curves.response_length_mean,
                curves.score_mean,
                kl=curves.kl,
                entropy=curves.entropy,
                window=config.window,
                planned_steps=config.steps,
            )
    if run.diverged:
        scores = [s for p in run.baseline for s in p.scores] + [s for step in run.steps for p in step for s in p.scores]
        scale = max(1.0, max(scores) - min(scores)) if scores else 1.0
        base_entropy = (
            sum(sum(p.entropies) / len(p.entropies) for p in run.baseline) / len(run.baseline) if run.baseline else None
        )
        return diverged_metrics(
            planned_steps=config.steps,
            window=config.window,
            reward_scale=scale,
            baseline_entropy=base_entropy,
            seen=seen,
        ), curves
    if seen is None:  # unreachable: no steps and no divergence raised above
        raise EvalError(f"probe backend {config.backend!r} returned steps without metrics")
    return replace(seen, stopped_early=run.stopped_early), curves


def _device_of(model: Any) -> str | None:
    try:
        return str(next(model.parameters()).device)
    except (AttributeError, StopIteration, TypeError):
        return None


def _dtype_of(model: Any) -> Any:
    """The model's parameter dtype (a reward model loads in it), or None when it has none."""
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration, TypeError):
        return None
