"""The merge's settings: the spec's `merge` section, one pydantic model per YAML mapping.

Method names come from `merge.plugins.METHODS`, so a method registered in a plug-in
module is usable from a spec at once. Importing this module imports no torch (asking the
registry for names imports nothing; stage 2's rule asks one method's metadata).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from core.config import Section, registered
from merge.plugins import METHODS


class StageConfig(Section):
    """One merge stage: a registered method and its parameters."""

    method: str = "linear"
    # Method parameters (e.g. ties: density; dare: density, variant, seed; slerp: eps).
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        return registered(METHODS, method)


class MergeConfig(Section):
    """Both stages, the output dtype and where the merge runs (see docs/merge.md)."""

    stage1: StageConfig = Field(default_factory=StageConfig)
    stage2: StageConfig = Field(default_factory=StageConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the inputs' dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the trial has a GPU
    # What to do when the vocabulary sizes differ: refuse, cut to the smallest, pad to the largest.
    vocab: Literal["strict", "truncate", "pad"] = "strict"
    # Where the three source models wait between builds: on the trial's device (same), or in
    # host memory (cpu; pinned on CUDA) streamed to the device tensor by tensor per build.
    source_device: Literal["cpu", "same"] = "same"

    @field_validator("stage2")
    @classmethod
    def _stage2_takes_two_models(cls, stage: StageConfig) -> StageConfig:
        # Stage 2 merges the stage-1 result with the pretrained model: no third model is
        # left to be the base of a task-vector method.
        if METHODS.meta(stage.method).get("needs_base"):
            raise ValueError(
                f"stage 2 merges two models (stage-1 result, pretrained): use a method without a base model, such as linear or slerp, not {stage.method}"
            )
        return stage
