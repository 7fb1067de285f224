"""One trial: merge in place -> lm-eval search tasks -> RLHF probe -> metrics.

Runs inside a Ray worker. Everything that is expensive to set up (the three source
models' tensors, the live model, the tokenizer, lm-eval's task dict, the probe prompts)
lives in a per-process `WorkerState`, so with `reuse_actors=True` only a worker's first
trial pays load costs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.config import SweepSpec
from sweep.errors import SweepError
from sweep.study.records import TrialResult, clean_metric

if TYPE_CHECKING:
    from evals.probe import ProbeConfig
    from merge.plan import MergePlan


class TrialTimeout(SweepError):
    """The trial ran past budget.trial_timeout_s.

    Checked between phases and, inside lm-eval and the probe, before every forward pass
    of the live model (a forward pre-hook): a runaway generation stops within one
    decoding step of the deadline. Work that never calls the live model (a vLLM
    engine, a reward model) is checked only at phase boundaries.
    """


@dataclass
class WorkerState:
    """Per-process cache reused across the trials a worker runs."""

    key: str
    sources: Any  # merge.SourceCache
    model: Any  # the live torch model rebuilt in place for every trial
    tokenizer: Any
    evaluator: Any | None  # evals.lmeval.LmEvalRunner over the search tasks
    probe_config: Any | None  # evals.probe.ProbeConfig
    prompts: list | None
    reward: Any | None  # a loaded reward model scorer; None: the rule named in probe_config
    device: str
    load_s: float  # seconds spent building this state (paid by the worker's first trial)
    trials_run: int = 0


_STATE: dict[str, WorkerState] = {}


def state_key(spec: SweepSpec) -> str:
    """Worker state depends on models, merge and eval settings; not on the search space."""
    relevant = spec.model_dump(include={"models", "merge", "evals", "resources"})
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()[:16]


def choose_device(spec: SweepSpec) -> str:
    if spec.merge.device != "auto":
        return spec.merge.device
    import torch

    return "cuda" if spec.resources.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def worker_state(spec: SweepSpec) -> WorkerState:
    """The cached state for this spec, built on the first trial of the process."""
    key = state_key(spec)
    if key in _STATE:
        return _STATE[key]
    _STATE.clear()  # a different spec: drop the old models first (memory)
    start = time.perf_counter()
    sources, model, tokenizer, device = load_models(spec)

    probe_config = prompts = reward = None
    if spec.evals.probe is not None:
        from evals.probe import ProbeConfig, load_prompts

        probe_config = ProbeConfig.from_dict(spec.evals.probe.model_dump())
        prompts = load_prompts(probe_config.prompts)
        if probe_config.reward.model is not None:  # a reward model loads once per worker, not per trial
            from evals.rewards import build_reward

            # in the trial's dtype (the live model's: merge.dtype), as the memory plan counts it
            dtype = next(model.parameters()).dtype
            reward = build_reward(rule=None, model=probe_config.reward.model, device=device, dtype=dtype)

    evaluator = None
    if spec.evals.lm_eval is not None and spec.evals.lm_eval.search_tasks:
        from evals.lmeval import LmEvalRunner

        evaluator = LmEvalRunner(lm_eval_config(spec, spec.evals.lm_eval.search_tasks))

    state = WorkerState(
        key, sources, model, tokenizer, evaluator, probe_config, prompts, reward, device, time.perf_counter() - start
    )
    _STATE[key] = state
    return state


def load_models(spec: SweepSpec):
    """(source cache, live model, tokenizer, device): what every candidate build needs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import merge

    torch.set_num_threads(spec.resources.torch_threads)
    device = choose_device(spec)
    dtype = None if spec.merge.dtype == "auto" else getattr(torch, spec.merge.dtype)
    sources = merge.SourceCache.load(
        pretrained=spec.models.pretrained,
        instruct=spec.models.instruct,
        reasoning=spec.models.reasoning,
        # merge.source_device cpu: sources wait in (pinned) host memory, streamed per build
        device="cpu" if spec.merge.source_device == "cpu" else device,
        pin_memory=spec.merge.source_device == "cpu" and device == "cuda",
        vocab=spec.merge.vocab,
        dtype=dtype,
    )
    # The live model: instruct's architecture; its weights are overwritten every trial. Its
    # embedding tying follows the merge (a tied model cannot hold a tied+untied merge).
    config = AutoConfig.from_pretrained(spec.models.instruct)
    config.tie_word_embeddings = sources.tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(spec.models.instruct, config=config, dtype=dtype or "auto")
    model = model.to(device)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to's wrapper as unbound
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.models.tokenizer_path())
    return sources, model, tokenizer, device


def lm_eval_config(spec: SweepSpec, tasks: list[str]):
    from evals.lmeval_config import LmEvalConfig

    if spec.evals.lm_eval is None:
        raise SweepError("lm_eval_config: the spec has no evals.lm_eval section")
    settings = spec.evals.lm_eval.model_dump(exclude={"search_tasks", "report_tasks"})
    return LmEvalConfig(tasks=list(tasks), **settings)


def merge_plan(spec: SweepSpec, params: dict[str, float]) -> MergePlan:
    """The candidate's `merge.MergePlan`: the spec's models and merge section, the trial's
    alpha and beta, and its searched stage-1 parameters over the section's own."""
    from merge.plan import MergePlan

    searched = {k: v for k, v in params.items() if k not in ("alpha", "beta")}
    return MergePlan.from_config(
        spec.merge,
        models=spec.models.paths(),
        tokenizer_source=spec.models.tokenizer,
        alpha=params["alpha"],
        beta=params["beta"],
        params=searched,
    )


def build_candidate(spec: SweepSpec, params: dict[str, float], *, model, sources) -> None:
    """Overwrite `model`'s weights with the candidate at `params` (no disk, no second model)."""
    import merge

    merge.build_in_place(model, sources, merge_plan(spec, params))


def warm_worker(spec: SweepSpec) -> None:
    """Load this worker's state before its first job (sweep.run.pool's `warm`), and with
    generator vllm the probe's engine: a job's time limit then counts from its start, not
    from loading the models or building the engine."""
    state = worker_state(spec)
    if state.probe_config is not None and state.probe_config.generator == "vllm":
        _rollout_engine(state)


def run_trial(spec: SweepSpec, params: dict[str, float]) -> TrialResult:
    """Merge the candidate in place, score it, probe it. Raises on real errors."""
    started = time.perf_counter()
    state = worker_state(spec)
    # The clock starts once the worker is ready: loading the three models is the worker's
    # one-off cost, not the candidate's.
    deadline = time.perf_counter() + spec.budget.trial_timeout_s if spec.budget.trial_timeout_s else None
    timings: dict[str, float] = {"load_s": round(state.load_s if state.trials_run == 0 else 0.0, 3)}
    state.trials_run += 1

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        if deadline is not None and time.perf_counter() > deadline:
            raise TrialTimeout(f"trial passed its timeout of {spec.budget.trial_timeout_s:g} s before {name}")
        t0 = time.perf_counter()
        with _deadline_guard(state.model, deadline, spec.budget.trial_timeout_s, name):
            out = fn()
        timings[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        return out

    phase("merge", lambda: build_candidate(spec, params, model=state.model, sources=state.sources))
    metrics: dict[str, float | None] = {}
    evaluator, probe_config = state.evaluator, state.probe_config
    if evaluator is not None:
        scores = phase("lm_eval", lambda: evaluator.evaluate(state.model, state.tokenizer))
        metrics.update({s.name: clean_metric(s.value) for s in scores})
        # lm-eval's own stderr beside each score (`<name>_stderr`): the noise `sweep compare`
        # uses where no whole-number `limit` gives the binomial band (sweep.report.regression).
        metrics.update({s.name + "_stderr": clean_metric(s.stderr) for s in scores if s.stderr is not None})
    curves: dict[str, list[float]] = {}
    notes: dict[str, Any] = {}
    if probe_config is not None:
        checkpoint = _probe_checkpoint(spec, params, probe_config)
        try:
            probe = phase("probe", lambda: probe_on_worker(state, probe_config, checkpoint=checkpoint))
        finally:  # the probe deletes it when it ends; a trial that raised here (a timeout) has
            # nothing to go on from either. A lost worker never gets here
            if checkpoint is not None:
                from evals.probe.resume import remove

                remove(checkpoint.path)
        if checkpoint is not None and checkpoint.resumed_at:
            notes["probe_resumed_at"] = checkpoint.resumed_at  # the trial before it was lost got this far
        metrics.update({k: clean_metric(v) for k, v in probe.metrics.as_metrics().items()})
        curves = probe.curves.to_dict()
        notes["probe_stopped_early"] = bool(probe.stopped_early)
        if probe.diverged:  # a recorded outcome with worst-case metrics, not a failed trial
            notes["probe_diverged"] = True
        notes["probe_baseline_s"] = round(probe.baseline_s, 3)
        if probe.stop_reason:
            notes["probe_stop_reason"] = probe.stop_reason
    if deadline is not None and time.perf_counter() > deadline:
        raise TrialTimeout(f"trial took longer than its timeout of {spec.budget.trial_timeout_s:g} s")
    timings["total_s"] = round(time.perf_counter() - started, 3)
    return TrialResult(
        params=dict(params),
        metrics=metrics,
        curves=curves,
        timings=timings,
        worker={"host": socket.gethostname(), "pid": os.getpid(), "device": state.device},
        notes=notes,
    )


PROBE_CHECKPOINTS = "probe-checkpoints"  # <study_dir>/PROBE_CHECKPOINTS/<key>.pt: a trial's probe while it runs


def _probe_checkpoint(spec: SweepSpec, params: dict[str, float], config: ProbeConfig) -> Any:
    """Where a trial's probe saves its state every budget.checkpoint_every_s (None: never),
    keyed by the candidate and the probe's settings: the same point queued again after its
    worker was lost goes on from there (evals/probe/resume.py)."""
    from evals.probe.resume import checkpointing
    from sweep.study.fingerprint import candidate_key

    key = candidate_key(spec, params, probe=config.to_dict())
    return checkpointing(spec.study_dir / PROBE_CHECKPOINTS / f"{key}.pt", spec.budget.checkpoint_every_s, tag=key)


@contextmanager
def _deadline_guard(model: Any, deadline: float | None, timeout_s: float | None, phase: str):
    """Raise TrialTimeout at the first forward pass of `model` (a torch module) after `deadline`."""
    if deadline is None:
        yield
        return

    def check(module, args):
        if time.perf_counter() > deadline:
            raise TrialTimeout(f"trial passed its timeout of {timeout_s:g} s during {phase}")

    handle = model.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def probe_on_worker(
    state: WorkerState,
    config: ProbeConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint: Any = None,
):
    """The probe of the candidate built in `state.model`, as a trial runs it: the worker's
    prompts and reward model, and with generator vllm its engine (a trial, a nightly
    repeat, a calibration's long run). `on_step(done, planned)` after each step;
    `checkpoint` (evals.probe.resume.Checkpointing) saves and resumes the run."""
    from evals.probe import run_probe

    rollouts = _rollout_engine(state) if config.generator == "vllm" else None
    return run_probe(
        state.model,
        state.tokenizer,
        config=config,
        prompts=state.prompts,
        reward=state.reward,
        rollouts=rollouts,
        on_step=on_step,
        checkpoint=checkpoint,
    )


# The eval's engine is built without LoRA: vLLM 0.32 with LoRA on fails on log-likelihood
# (prompt_logprobs) requests, which lm-eval's multiple-choice tasks send (the CPU build:
# "einsum(): subscript b has size 4 for operand 1 which does not broadcast"; vllm issues
# 29955, 16668). A probe sharing it pushes merged LoRA weights instead of LoRA requests.
SHARED_ENGINE_LORA_NOTE = (
    "evals.probe.vllm_lora requests: the probe shares the eval's vLLM engine, which has LoRA off "
    "(vLLM with LoRA on fails on lm-eval's log-likelihood requests); the adapters go in as merged weights"
)
_ROLLOUTS: dict[str, Any] = {}  # state key -> the probe's VllmRollouts (when the eval has no engine to share)


def _rollout_engine(state: WorkerState) -> Any:
    """The vLLM engine the probe samples with: the eval's own (one engine per worker for
    eval and probe, when evals.lm_eval.backend is vllm), else one built once per worker
    on the model's checkpoint folder with the eval's vLLM engine arguments. The probe
    pushes the candidate in first and leaves it there at the end."""
    from evals.probe.vllm_rollout import VllmRollouts

    backend = getattr(state.evaluator, "backend", None)
    # the eval's engine (built now if the eval ran no task yet); None where its backend has none (hf)
    shared = backend.engine_for(state.model, state.tokenizer) if backend is not None else None
    if shared is not None:
        engine = _ROLLOUTS.get(state.key)
        if engine is None or engine.llm is not shared:
            _ROLLOUTS.clear()
            engine = _ROLLOUTS[state.key] = VllmRollouts(shared)
            config = state.probe_config
            if config is not None and config.update == "lora" and config.vllm_lora == "requests":
                if not engine.takes_lora(config.lora_rank):
                    print(SHARED_ENGINE_LORA_NOTE, file=sys.stderr)
        return engine
    if state.key not in _ROLLOUTS:
        _ROLLOUTS.clear()
        folder = getattr(state.model, "name_or_path", None)
        if not folder:
            from evals.errors import EvalError

            raise EvalError(
                "evals.probe.generator vllm: the live model has no checkpoint folder to build a vLLM engine on"
            )
        from evals.probe.vllm_rollout import probe_engine_args

        args = {**probe_engine_args(state.probe_config), **(getattr(backend, "engine_args", None) or {})}
        args.setdefault("dtype", str(next(state.model.parameters()).dtype).removeprefix("torch."))
        _ROLLOUTS[state.key] = VllmRollouts.build(folder, **args)
    return _ROLLOUTS[state.key]
