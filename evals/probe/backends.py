"""Probe backends: the plug-in point for where the RL steps run.

A backend turns (model, tokenizer, config, prompts, reward) into per-step curves. The
built-in one ("builtin", evals/probe/grpo.py) runs GRPO in this process on the model
it is given. A cluster backend (e.g. launching verl or TRL on a merged checkpoint and
parsing their logs) subclasses ProbeBackend, registers under a name in
`evals.plugins.PROBE_BACKENDS` (`register_backend`), and is chosen with
`evals.probe.backend: <name>`; it may ignore `model` and read a checkpoint path
from its own settings. run_probe computes the stability metrics from the curves the
same way for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from core.registry import UnknownName
from evals.errors import EvalError
from evals.plugins import PROBE_BACKENDS
from evals.probe.config import ProbeConfig
from evals.probe.records import BackendRun, Prompt
from evals.rewards import Reward


class ProbeBackend(ABC):
    """Runs the probe's RL steps and returns its curves.

    Contract for `run`:
    - return a BackendRun whose curves have one point per step run (at least 1,
      at most config.steps), point 0 measured on the starting model;
    - stop early only when `evals.stability.length_collapsed` says so for
      config.collapse_threshold / collapse_patience, setting stopped_early and stop_reason;
    - raise EvalError for bad user input, before expensive work starts;
    - write nothing the caller must clean up;
    - `rollouts` (an evals.probe.vllm_rollout.VllmRollouts, for generator: vllm) samples
      the rollouts; the backend pushes its changed weights into it and leaves it holding
      the model's weights as they were given.
    - optional: a keyword `on_step` that `run` calls as `on_step(done, planned)` after each
      step; run_probe passes it only to a backend whose `run` takes it (progress lines).
    """

    name: str = ""
    # whether `run` honours config.reference (a KL reference other than the candidate);
    # run_probe and `sweep calibrate` refuse the setting for a backend that does not
    supports_reference: bool = False

    @abstractmethod
    def run(
        self,
        model: Any,
        tokenizer: Any,
        *,
        config: ProbeConfig,
        prompts: Sequence[Prompt],
        reward: Reward,
        rollouts: Any = None,
    ) -> BackendRun: ...


def register_backend(name: str, backend: str | Callable[[], ProbeBackend], *, replace: bool = False) -> None:
    """Register a backend class (or "module:Class" path) under `name` in
    `evals.plugins.PROBE_BACKENDS`; `evals.probe.backend: <name>` then chooses it. A taken
    name is a ValueError unless `replace`. `@PROBE_BACKENDS.register(name)` on the class
    does the same."""
    PROBE_BACKENDS.add(name, backend, replace=replace)


def get_backend(name: str) -> ProbeBackend:
    """A new instance of the backend registered as `name`; EvalError (listing the
    registered names) for a name no one registered."""
    try:
        factory = PROBE_BACKENDS.get(name)
    except UnknownName as exc:
        raise EvalError(str(exc)) from None
    return factory()


def check_reference_support(backend: ProbeBackend, config: ProbeConfig) -> None:
    """EvalError when config.reference is set and `backend` would ignore it."""
    if config.reference is not None and not backend.supports_reference:
        raise EvalError(
            f"evals.probe.reference: probe backend {config.backend!r} does not take a KL reference other "
            "than the candidate; remove the setting or use backend: builtin"
        )
