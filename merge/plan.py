"""The BAI recipe as a typed record: which methods, which ratios, which weights.

    stage 1:  mid   = M1([instruct, reasoning], [alpha, 1 - alpha], base=pretrained)
    stage 2:  actor = M2([mid, pretrained],     [beta,  1 - beta])

With both stages linear this is one weighted sum over (instruct, reasoning, pretrained)
with weights [alpha*beta, (1-alpha)*beta, 1-beta]: `MergePlan.fused_weights`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from merge.errors import MergeError
from merge.methods import NEEDS_BASE, STAGE2_METHODS, get_method, method_defaults, param_problems

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
    """A validated two-stage BAI recipe. Build it with `MergePlan.create`."""

    alpha: float  # instruct share of stage 1
    beta: float  # stage-1 share of stage 2
    stage1: Stage = field(default_factory=Stage)
    stage2: Stage = field(default_factory=Stage)

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
        allow_extrapolation: bool = False,
    ) -> MergePlan:
        """Check ratios, methods and parameters; raise one MergeError listing every problem."""
        problems = []
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"{name} must be a number, got {value!r}")
            elif not allow_extrapolation and not 0.0 <= value <= 1.0:
                problems.append(
                    f"{name} = {value} is outside [0, 1] (to merge beyond the models, allow extrapolation: --allow-extrapolation)"
                )
        problems += [f"stage 1: {p}" for p in param_problems(stage1_method, stage1_params)]
        if stage2_method not in STAGE2_METHODS:
            problems.append(
                f"stage 2 merges two models (stage-1 result, pretrained): use {' or '.join(STAGE2_METHODS)}, not {stage2_method!r}"
            )
        else:
            problems += [f"stage 2: {p}" for p in param_problems(stage2_method, stage2_params)]
        if problems:
            raise MergeError.collected("invalid merge recipe", problems)
        return cls(
            alpha=float(alpha),
            beta=float(beta),
            stage1=Stage(stage1_method, method_defaults(stage1_method) | dict(stage1_params or {})),
            stage2=Stage(stage2_method, method_defaults(stage2_method) | dict(stage2_params or {})),
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
        kwargs = {"base": base} if self.stage1.method in NEEDS_BASE else {}
        mid = get_method(self.stage1.method)([instruct, reasoning], [self.alpha, 1.0 - self.alpha], **kwargs, **p1)
        return get_method(self.stage2.method)([mid, base], [self.beta, 1.0 - self.beta], **self.stage2.params)

    def to_dict(self) -> dict[str, Any]:
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
