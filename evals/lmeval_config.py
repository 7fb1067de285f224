"""lm-eval's settings: how to evaluate, shared by the spec and the runner.

`LmEvalSettings` holds every setting but the task list. `LmEvalConfig` (what
`evals.lmeval.LmEvalRunner` takes) adds `tasks`; the spec's `evals.lm_eval` section adds
`search_tasks` and `report_tasks`. Backend names come from `evals.plugins.LM_BACKENDS`.
Nothing here imports lm-eval or torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from core.config import RaisesUserError, Section, registered
from evals.errors import EvalError
from evals.plugins import LM_BACKENDS


class LmEvalSettings(Section):
    """How to evaluate (every field but the tasks).

    include_paths: local folders of task YAML files, searched before lm-eval's own tasks.
    limit: docs per task (>= 1, whole) or a fraction of each task's docs (< 1); None: all.
    batch_size: requests per forward/generate batch.
    num_fewshot: few-shot examples per prompt; None keeps each task's own setting (0 if
      unset). A task whose YAML says num_fewshot: 0 keeps 0, as in lm-eval.
    apply_chat_template: wrap prompts in the tokenizer's chat template (few-shot examples
      become turns, as the lm_eval CLI does).
    max_gen_toks: tokens generated per answer in generate_until tasks; None: the task's.
    think_end, answer_regex: reasoning tasks are scored on the final answer: the text after
      the last think_end (None: no cutting), then answer_regex's first group.
    allow_test_split: allow well-known benchmark test splits as search tasks (the sweep
      checks it, see evals.lmeval.test_split_problems).
    vllm: extra vLLM engine arguments (backend vllm; see evals.vllm_backend).
    """

    backend: str = "hf"  # a name in evals.plugins.LM_BACKENDS
    include_paths: list[str] = Field(default_factory=list)  # local YAML task folders (or demo:tasks)
    limit: Annotated[float, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    num_fewshot: Annotated[int, Field(ge=0)] | None = None
    apply_chat_template: bool = False
    max_gen_toks: Annotated[int, Field(ge=1)] | None = None
    think_end: str | None = "</think>"
    answer_regex: str | None = None
    allow_test_split: bool = False
    vllm: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _registered(cls, backend: str) -> str:
        return registered(LM_BACKENDS, backend)

    @field_validator("answer_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
        return value


class LmEvalConfig(LmEvalSettings, metaclass=RaisesUserError):
    """What to evaluate and how: lm-eval task or group names (the spec's search_tasks or
    report_tasks) plus the settings. Built outside a spec, a bad field raises EvalError."""

    model_config = ConfigDict(frozen=True)
    user_error: ClassVar[type[EvalError]] = EvalError  # what calling the class raises
    what: ClassVar[str] = "lm-eval config"

    tasks: list[str]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LmEvalConfig:
        return cls(**data)

    @property
    def lm_eval_limit(self) -> int | float | None:
        """The limit as lm-eval takes it: a whole number of docs, or a fraction below 1."""
        if self.limit is None or self.limit < 1:
            return self.limit
        return int(self.limit)
