"""Merge methods as small registered functions (mergekit's style).

A method takes the per-model tensors of one parameter and their weights, plus an
optional `base` tensor (the shared ancestor, for task-vector methods), and returns the
merged tensor in float32. Its keyword-only parameters after `base` are its parameter
schema: `method_param_names("ties") == ["density"]`; their defaults are the defaults.
Each registers itself in `merge.plugins.METHODS`, the only list of method names:

    @METHODS.register("linear")
    def linear(tensors, weights, *, base=None): ...

Metadata: `needs_base=True` (the method merges task vectors against `base`; such a
method cannot run in stage 2, which has no base), `two_models=True` (exactly two inputs).

Every method is pure: same inputs, same output (DARE draws its masks from a CPU
generator seeded by its `seed` argument, so CPU and GPU builds agree).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from merge.plugins import METHODS, MergeFn


def needs_base(name: str) -> bool:
    """True when the method merges task vectors against the shared ancestor (`base`)."""
    return bool(METHODS.meta(name).get("needs_base", False))


def two_models(name: str) -> bool:
    """True when the method merges exactly two inputs."""
    return bool(METHODS.meta(name).get("two_models", False))


def stage2_methods() -> list[str]:
    """The methods stage 2 can run: it merges two models (stage-1 result, pretrained) and
    has no shared ancestor to pass as `base`, so every registered method that needs none."""
    return [name for name in METHODS.names() if not needs_base(name)]


def get_method(name: str) -> MergeFn:
    """The registered method; KeyError ("unknown merge method 'x'; known: ...") if none."""
    return METHODS.get(name)


def method_param_names(name: str) -> list[str]:
    """The method's own parameters (keyword-only, after `base`); [] for an unknown name."""
    if name not in METHODS:
        return []
    params = inspect.signature(METHODS.get(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "base"]


def method_defaults(name: str) -> dict[str, Any]:
    """Default value of each of the method's parameters."""
    params = inspect.signature(get_method(name)).parameters
    return {n: params[n].default for n in method_param_names(name)}


# ---------------------------------------------------------------- parameter checks


def _density(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return f"density must be a number in (0, 1] (the fraction of each task vector kept), got {value!r}"
    return None


def _variant(value: Any) -> str | None:
    if value not in ("linear", "ties"):
        return f"variant must be 'linear' or 'ties', got {value!r}"
    return None


def _seed(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"seed must be a non-negative integer, got {value!r}"
    return None


def _eps(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        return f"eps must be a number in [0, 1) (|cos| > 1 - eps falls back to linear), got {value!r}"
    return None


# Parameter name -> check returning a message, or None when the value is fine.
PARAM_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "density": _density,
    "variant": _variant,
    "seed": _seed,
    "eps": _eps,
}


def param_problems(name: str, params: dict[str, Any] | None) -> list[str]:
    """Every problem with a method name and its parameters, as readable lines (empty: fine)."""
    if (unknown := METHODS.problem(name)) is not None:
        return [unknown]
    known = method_param_names(name)
    problems = []
    for key, value in (params or {}).items():
        if key not in known:
            problems.append(
                f"{key!r} is not a parameter of merge method {name} (its parameters: {', '.join(known) or 'none'})"
            )
        elif (check := PARAM_CHECKS.get(key)) and (msg := check(value)):
            problems.append(f"{name}: {msg}")
    return problems


# ---------------------------------------------------------------- methods


@METHODS.register("linear")
def linear(tensors: list[torch.Tensor], weights: list[float], *, base: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum, accumulated in float32. Weights are used as given (no normalization)."""
    out = tensors[0].to(torch.float32) * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
        out.add_(tensor.to(torch.float32), alpha=weight)
    return out


@METHODS.register("task_arithmetic", needs_base=True)
def task_arithmetic(
    tensors: list[torch.Tensor], weights: list[float], *, base: torch.Tensor | None = None
) -> torch.Tensor:
    """base + sum_i w_i (theta_i - base). Equals `linear` when the weights sum to one."""
    base32 = _require_base(base, "task_arithmetic")
    out = base32.clone()
    for tensor, weight in zip(tensors, weights, strict=True):
        out.add_(tensor.to(torch.float32) - base32, alpha=weight)
    return out


@METHODS.register("ties", needs_base=True)
def ties(
    tensors: list[torch.Tensor], weights: list[float], *, base: torch.Tensor | None = None, density: float = 0.5
) -> torch.Tensor:
    """TIES-merging: trim, elect sign, disjoint mean.

    1. trim: keep the `density` fraction of each task vector tau_i = theta_i - base with the
       largest magnitudes (exactly round(density * numel) entries), zero the rest;
    2. elect: per entry, sign of sum_i w_i * trimmed_i (a zero sum elects +);
    3. disjoint mean: sum of w_i * trimmed_i over the models whose trimmed entry has the
       elected sign, divided by the sum of their w_i (0 where no model agrees).
    Returns base + that mean.
    """
    base32 = _require_base(base, "ties")
    deltas = [_trim(tensor.to(torch.float32) - base32, density) for tensor in tensors]
    return base32 + _disjoint_mean(deltas, weights)


@METHODS.register("dare", needs_base=True)
def dare(
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    base: torch.Tensor | None = None,
    density: float = 0.5,
    variant: str = "linear",
    seed: int = 0,
) -> torch.Tensor:
    """DARE: drop each task-vector entry with probability 1 - density, rescale the kept by 1/density.

    Masks: `g = torch.Generator().manual_seed(seed)`; for model i in order,
    `keep_i = torch.rand(shape, generator=g) < density` (drawn on the CPU, so any device
    gives the same masks). variant "linear": base + sum_i w_i * tau_i'; variant "ties":
    base + TIES's sign election and disjoint mean over tau_i' (no magnitude trim).
    """
    base32 = _require_base(base, "dare")
    generator = torch.Generator().manual_seed(int(seed))
    deltas = []
    for tensor in tensors:
        keep = torch.rand(tensor.shape, generator=generator) < density
        delta = tensor.to(torch.float32) - base32
        deltas.append(delta * keep.to(delta.device) / density)
    if variant == "ties":
        return base32 + _disjoint_mean(deltas, weights)
    out = base32.clone()
    for delta, weight in zip(deltas, weights, strict=True):
        out.add_(delta, alpha=weight)
    return out


@METHODS.register("slerp", two_models=True)
def slerp(
    tensors: list[torch.Tensor], weights: list[float], *, base: torch.Tensor | None = None, eps: float = 5e-4
) -> torch.Tensor:
    """Spherical interpolation of two tensors with t = weights[1] (weights = [1 - t, t]).

    The angle comes from the flattened tensors' cosine; when |cos| > 1 - eps (nearly
    colinear, where slerp divides by ~0) or a tensor is all zeros, it falls back to the
    linear (1 - t) a + t b. Otherwise: sin((1-t) w)/sin w * a + sin(t w)/sin w * b.
    """
    if len(tensors) != 2:
        raise ValueError(f"slerp merges exactly two tensors, got {len(tensors)}")
    a, b = (t.to(torch.float32) for t in tensors)
    t = float(weights[1])
    norm_a, norm_b = math.sqrt(_dot64(a, a)), math.sqrt(_dot64(b, b))
    if norm_a < 1e-12 or norm_b < 1e-12:
        return linear([a, b], [1.0 - t, t])
    cos = _dot64(a, b) / (norm_a * norm_b)
    cos = max(-1.0, min(1.0, cos))
    if abs(cos) > 1.0 - eps:
        return linear([a, b], [1.0 - t, t])
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return linear([a, b], [math.sin((1.0 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega])


# ---------------------------------------------------------------- helpers

DOT_CHUNK = 1 << 22  # elements per float64 block: 32 MB per operand, whatever the tensor's size


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """The dot product of two same-shaped tensors, accumulated in float64 over fresh blocks.

    An fp32 torch.dot on the CPU depends on where the data lie: its vectorized loop handles
    an unaligned head apart, so the same values at another offset sum in another order
    (measured: 3 different results over 8 offsets). A tensor read from a safetensors file
    sits wherever the header put it, a live model's tensor elsewhere, and slerp's angle
    then differed between the disk merge and the in-place build in the last bits. Each
    block is copied to a new (aligned) float64 buffer, so the sum depends on the values
    alone, and in float64 the rounding left is far below fp32's.
    """
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    total = 0.0
    for start in range(0, flat_a.numel(), DOT_CHUNK):
        block_a = flat_a[start : start + DOT_CHUNK].to(torch.float64, copy=True)
        block_b = flat_b[start : start + DOT_CHUNK].to(torch.float64, copy=True)
        total += float(torch.dot(block_a, block_b))
    return total


def _require_base(base: torch.Tensor | None, method: str) -> torch.Tensor:
    if base is None:
        raise ValueError(f"{method} needs the shared ancestor as base")
    return base.to(torch.float32)


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density * numel) largest-magnitude entries of delta, zero the rest.

    Entries tied with the smallest kept magnitude are kept in index order (the first
    ones), so the kept set is the same on every device: a candidate swept on a GPU and
    exported on a CPU get the same weights. (topk's choice among ties differs by device.)
    """
    n = delta.numel()
    keep = int(round(density * n))
    if keep >= n:
        return delta
    if keep <= 0:
        return torch.zeros_like(delta)
    flat = delta.flatten()
    magnitude = flat.abs()
    threshold = _kth_largest(magnitude, keep)
    mask = magnitude > threshold
    need = keep - int(mask.sum())
    if need > 0:  # entries equal to the threshold: the first `need` of them
        tied = magnitude == threshold
        counts = torch.cumsum(tied, 0, dtype=torch.int64 if n >= 2**31 else torch.int32)
        mask |= tied & (counts <= need)
    return (flat * mask).view_as(delta)


def _kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a flat tensor (a 0-d tensor on its device)."""
    index = values.numel() - k  # ascending position
    if values.device.type == "cpu":
        import numpy as np

        # numpy's introselect: ~10x torch.kthvalue / topk on CPU
        return torch.tensor(np.partition(values.numpy(), index)[index])
    return torch.kthvalue(values, index + 1).values


def _disjoint_mean(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    weighted = [delta * weight for delta, weight in zip(deltas, weights, strict=True)]
    total = weighted[0].clone()
    for w in weighted[1:]:
        total.add_(w)
    positive = total >= 0  # the elected sign: + where the weighted sum is >= 0, else -
    numerator = torch.zeros_like(total)
    denominator = torch.zeros_like(total)
    for delta, w, weight in zip(deltas, weighted, weights, strict=True):
        agrees = (delta > 0).eq_(positive).logical_and_(delta != 0)  # sign(delta) == elected sign
        numerator.add_(w * agrees)
        denominator.add_(agrees, alpha=weight)
    return torch.where(denominator.abs() > 1e-12, numerator / denominator, 0.0)
