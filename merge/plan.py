"""One candidate's merge, whole: `MergePlan` goes from the spec to the trial, the disk
merge, the in-place build and the mergekit export.

    stage 1:  mid   = M1([instruct, reasoning], [alpha, 1 - alpha], base=pretrained)
    stage 2:  actor = M2([mid, pretrained],     [beta,  1 - beta])

With both stages linear this is one weighted sum over (instruct, reasoning, pretrained)
with weights [alpha*beta, (1-alpha)*beta, 1-beta]: `MergePlan.fused_weights`. Beside the
recipe the plan names the checkpoints it reads, the output dtype, the vocabulary policy
and the tokenizer source (what a disk merge and its mergekit recipe need).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from merge.errors import MergeError
from merge.methods import get_method, method_defaults, needs_base, param_problems, stage2_methods

# Order of the sources everywhere in merge/: the order of the fused weights.
ROLES = ("instruct", "reasoning", "pretrained")


@dataclass(frozen=True)
class Stage:
    """One merge stage: a registered method and its parameters (defaults filled in)."""

    method: str = "linear"
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params)}


@dataclass(frozen=True)
class MergePlan:
    """A two-stage BAI merge. Build it with `MergePlan.create` or `MergePlan.from_config`,
    which check it; the dataclass constructor checks nothing."""

    alpha: float  # instruct share of stage 1
    beta: float  # stage-1 share of stage 2
    stage1: Stage = field(default_factory=Stage)
    stage2: Stage = field(default_factory=Stage)
    models: dict[str, str] = field(default_factory=dict)  # role -> checkpoint folder (empty: a recipe alone)
    dtype: str = "auto"  # output dtype: auto (the inputs'), float32, bfloat16, float16
    vocab: str = "strict"  # vocabulary-size policy: strict, truncate, pad
    tokenizer_source: str = "instruct"  # a role or a folder: tokenizer, chat template, config
    allow_extrapolation: bool = False  # ratios may leave [0, 1]

    @classmethod
    def create(
        cls,
        *,
        alpha: float,
        beta: float,
        stage1_method: str = "linear",
        stage1_params: dict[str, Any] | None = None,
        stage2_method: str = "linear",
        stage2_params: dict[str, Any] | None = None,
        pretrained: str | Path | None = None,
        instruct: str | Path | None = None,
        reasoning: str | Path | None = None,
        dtype: str | torch.dtype | None = "auto",
        vocab: str = "strict",
        tokenizer_source: str | Path = "instruct",
        allow_extrapolation: bool = False,
        check: bool = True,
    ) -> MergePlan:
        """The plan from loose arguments, checked: one MergeError lists every problem of the
        ratios, methods and parameters (`check=False` skips that; `checked()` does it later).
        The folders, dtype and vocabulary policy are checked by whoever reads them."""
        given = {"pretrained": pretrained, "instruct": instruct, "reasoning": reasoning}
        plan = cls(
            alpha=alpha,
            beta=beta,
            stage1=Stage(stage1_method, dict(stage1_params or {})),
            stage2=Stage(stage2_method, dict(stage2_params or {})),
            models={role: str(path) for role, path in given.items() if path is not None},
            dtype="auto" if dtype is None else str(dtype).removeprefix("torch."),
            vocab=vocab,
            tokenizer_source=str(tokenizer_source),
            allow_extrapolation=allow_extrapolation,
        )
        return plan.checked() if check else plan

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        models: Mapping[str, str | Path],
        alpha: float,
        beta: float,
        params: Mapping[str, Any] | None = None,
        tokenizer_source: str | Path = "instruct",
    ) -> MergePlan:
        """One candidate's plan from a merge config section (`stage1`/`stage2` with `method`
        and `params`, `dtype`, `vocab`: the spec's `merge:`), the checkpoint folders by role,
        the candidate's ratios, and its searched stage-1 parameters (`params`, over the
        section's own). Checked as `create` checks."""
        return cls.create(
            alpha=alpha,
            beta=beta,
            stage1_method=config.stage1.method,
            stage1_params={**config.stage1.params, **(params or {})},
            stage2_method=config.stage2.method,
            stage2_params=dict(config.stage2.params),
            dtype=config.dtype,
            vocab=config.vocab,
            tokenizer_source=tokenizer_source,
            pretrained=models.get("pretrained"),
            instruct=models.get("instruct"),
            reasoning=models.get("reasoning"),
        )

    def problems(self) -> list[str]:
        """Every problem of the ratios, methods and parameters, as readable lines (empty: fine)."""
        problems = []
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"{name} must be a number, got {value!r}")
            elif not self.allow_extrapolation and not 0.0 <= value <= 1.0:
                problems.append(
                    f"{name} = {value} is outside [0, 1] (to merge beyond the models, allow extrapolation: --allow-extrapolation)"
                )
        problems += [f"stage 1: {p}" for p in param_problems(self.stage1.method, self.stage1.params)]
        allowed = stage2_methods()
        if self.stage2.method not in allowed:
            problems.append(
                f"stage 2 merges two models (stage-1 result, pretrained): use {' or '.join(allowed)}, not {self.stage2.method!r}"
            )
        else:
            problems += [f"stage 2: {p}" for p in param_problems(self.stage2.method, self.stage2.params)]
        return problems

    def checked(self) -> MergePlan:
        """This plan with the methods' default parameters filled in; MergeError listing
        every problem if it has any."""
        if problems := self.problems():
            raise MergeError.collected("invalid merge recipe", problems)
        return replace(
            self,
            alpha=float(self.alpha),
            beta=float(self.beta),
            stage1=Stage(self.stage1.method, method_defaults(self.stage1.method) | self.stage1.params),
            stage2=Stage(self.stage2.method, method_defaults(self.stage2.method) | self.stage2.params),
        )

    @property
    def fused_weights(self) -> tuple[float, float, float] | None:
        """(instruct, reasoning, pretrained) weights when both stages are linear, else None."""
        if self.stage1.method == "linear" and self.stage2.method == "linear":
            a, b = self.alpha, self.beta
            return (a * b, (1.0 - a) * b, 1.0 - b)
        return None

    def merge_tensor(
        self, instruct: torch.Tensor, reasoning: torch.Tensor, pretrained: torch.Tensor, *, name: str = ""
    ) -> torch.Tensor:
        """The candidate's value of one parameter, in float32, on the inputs' device.

        `name` seeds the per-tensor randomness of methods that take a `seed` (DARE), so
        that every tensor gets its own masks and every build of the same plan the same.
        """
        fused = self.fused_weights
        if fused is not None:
            return get_method("linear")([instruct, reasoning, pretrained], list(fused))
        p1 = dict(self.stage1.params)
        if "seed" in p1:
            p1["seed"] = tensor_seed(p1["seed"], name)
        base = pretrained.to(torch.float32)
        kwargs = {"base": base} if needs_base(self.stage1.method) else {}
        mid = get_method(self.stage1.method)([instruct, reasoning], [self.alpha, 1.0 - self.alpha], **kwargs, **p1)
        return get_method(self.stage2.method)([mid, base], [self.beta, 1.0 - self.beta], **self.stage2.params)

    def to_dict(self) -> dict[str, Any]:
        """The recipe (ratios, stages, fused weights); the folders, dtype, vocabulary policy
        and tokenizer source are the merge record's (`merge.disk.MergeRecord`)."""
        out: dict[str, Any] = {
            "alpha": self.alpha,
            "beta": self.beta,
            "stage1": self.stage1.to_dict(),
            "stage2": self.stage2.to_dict(),
        }
        if (fused := self.fused_weights) is not None:
            out["fused_weights"] = dict(zip(ROLES, fused, strict=True))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergePlan:
        return cls(
            alpha=float(data["alpha"]),
            beta=float(data["beta"]),
            stage1=Stage(data["stage1"]["method"], dict(data["stage1"]["params"])),
            stage2=Stage(data["stage2"]["method"], dict(data["stage2"]["params"])),
        )


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed: stable across runs and processes (crc32, not Python's hash)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
