"""The merge methods' registry: the only list of merge-method names.

A merge method is one function registered with `@METHODS.register(name, ...)` (mergekit's
decorator style: the signature is the parameter schema). Metadata: `needs_base` (the method
merges task vectors against the pretrained model), `two_models` (it takes exactly two
inputs, as stage 2 does). The built-in ones are named here lazily, so listing the names (as
validating a spec does) imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.registry import Registry

MergeFn = Callable[..., Any]  # (tensors, weights, *, base=None, **params) -> tensor

METHODS: Registry[MergeFn] = Registry(
    "merge method",
    builtins={
        "linear": "merge.methods:linear",
        "task_arithmetic": "merge.methods:task_arithmetic",
        "ties": "merge.methods:ties",
        "dare": "merge.methods:dare",
        "slerp": "merge.methods:slerp",
    },
)
