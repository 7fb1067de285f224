"""Probe backends: the plug-in point for where the RL steps run.

A backend turns (model, tokenizer, config, prompts, reward) into per-step curves. The
built-in one ("builtin", evals/probe/grpo.py) runs GRPO in this process on the model
it is given. A cluster backend (e.g. launching verl or TRL on a merged checkpoint and
parsing their logs) subclasses ProbeBackend, registers under a name, and is chosen
with `evals.probe.backend: <name>`; it may ignore `model` and read a checkpoint path
from its own settings. run_probe computes the stability metrics from the curves the
same way for every backend.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from evals.errors import EvalError
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
    """

    name: str = ""

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


# name -> "module:Class" (imported on first use, so torch loads only when a probe runs)
# or a ProbeBackend subclass registered at run time.
_BACKENDS: dict[str, str | Callable[[], ProbeBackend]] = {"builtin": "evals.probe.grpo:GRPOBackend"}


def register_backend(name: str, backend: str | Callable[[], ProbeBackend]) -> None:
    """Register a backend class (or "module:Class" path) under `name`."""
    _BACKENDS[name] = backend


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> ProbeBackend:
    try:
        entry = _BACKENDS[name]
    except KeyError:
        raise EvalError(f"unknown probe backend {name!r}; known: {', '.join(backend_names())}") from None
    if isinstance(entry, str):
        module_name, class_name = entry.split(":")
        entry = getattr(importlib.import_module(module_name), class_name)
    return entry()
