"""Merge methods as small registered functions (mergekit's style).

A method takes the per-model tensors of one parameter and their weights, plus an
optional `base` tensor (the shared ancestor, for task-vector methods), and returns the
merged tensor in float32. Its keyword-only parameters after `base` are its parameter
schema: `method_param_names("ties") == ["density"]`.

    @register("linear")
    def linear(tensors, weights, *, base=None): ...
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

MergeFn = Callable[..., torch.Tensor]
REGISTRY: dict[str, MergeFn] = {}

# Methods that need the shared ancestor as `base` (task vectors are theta_i - base).
NEEDS_BASE: set[str] = set()


def register(name: str, *, needs_base: bool = False) -> Callable[[MergeFn], MergeFn]:
    def wrap(fn: MergeFn) -> MergeFn:
        REGISTRY[name] = fn
        if needs_base:
            NEEDS_BASE.add(name)
        return fn

    return wrap


def get_method(name: str) -> MergeFn:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def method_param_names(name: str) -> list[str]:
    """The method's own parameters (keyword-only, after `base`)."""
    if name not in REGISTRY:
        return []
    params = inspect.signature(REGISTRY[name]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "base"]


@register("linear")
def linear(tensors: list[torch.Tensor], weights: list[float], *, base: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum, accumulated in float32. Weights are used as given (no normalization)."""
    out = tensors[0].to(torch.float32) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor.to(torch.float32), alpha=weight)
    return out
