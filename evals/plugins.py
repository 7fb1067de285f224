"""The evals' registries: the only lists of lm-eval backends, probe backends and reward rules.

- LM_BACKENDS: name -> an `evals.lm_backends.LmBackend` class, built from an LmEvalConfig.
- PROBE_BACKENDS: name -> a zero-argument factory of an `evals.probe.backends.ProbeBackend`.
- REWARD_RULES: name -> a rule function (prompts=, completions=, answers=) -> rewards;
  metadata `needs_answer` (every prompt then needs an expected answer).

Built-in entries are named lazily, so listing names imports neither torch nor lm-eval.
"""

from __future__ import annotations

from typing import Any

from core.registry import Registry

LM_BACKENDS: Registry[Any] = Registry(
    "lm-eval backend", builtins={"hf": "evals.lm_backends:HfBackend", "vllm": "evals.vllm_backend:VllmBackend"}
)
PROBE_BACKENDS: Registry[Any] = Registry("probe backend", builtins={"builtin": "evals.probe.grpo:GRPOBackend"})
REWARD_RULES: Registry[Any] = Registry(
    "reward rule",
    builtins={
        "exact_match": "evals.rewards:exact_match",
        "format": "evals.rewards:format_check",
        "exact_match+format": "evals.rewards:exact_match_and_format",
        "concise": "evals.rewards:concise",
    },
)
