"""The contract every registered merge method keeps (Optuna's shared sampler suite, for
merge methods): it runs over `METHODS`, so a new method is held to it without being named
here. The `check_*` functions take a method's name; test_plugin_method.py runs them on a
method registered from a test file.

A method returns float32 (it accumulates there; the caller rounds once into the output
dtype). `needs_base` methods get the shared ancestor as `base`; `two_models` ones get
exactly two inputs.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from merge.errors import MergeError
from merge.mergekit_recipe import mergekit_recipe, writer_for
from merge.methods import (
    PARAM_CHECKS,
    get_method,
    method_defaults,
    method_param_names,
    needs_base,
    param_problems,
    stage2_methods,
    two_models,
)
from merge.plan import MergePlan
from merge.plugins import METHODS

SOURCES = {"instruct": "/m/I", "reasoning": "/m/R", "pretrained": "/m/P"}


def call(name, tensors, weights, base=None, **params):
    kwargs = {"base": base} if needs_base(name) else {}
    return get_method(name)(tensors, weights, **kwargs, **(method_defaults(name) | params))


def two_or_three(name):
    return 2 if two_models(name) else 3


# ---------------------------------------------------------------- the checks


def check_identity_on_one_input(name, dtype=torch.float32):
    """One input at weight 1 comes back unchanged (a two-model method: the other at weight 0;
    a task-vector method: over its own base, a zero task vector), and rounds back to the
    input's dtype bit for bit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g).to(dtype)
    if two_models(name):
        tensors, weights = [x.clone(), torch.randn(7, 5, generator=g).to(dtype)], [1.0, 0.0]
    else:
        tensors, weights = [x.clone()], [1.0]
    out = call(name, tensors, weights, base=x.clone())
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x.float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(out.to(dtype), x)


def check_identity_when_every_input_is_the_same(name):
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    n = two_or_three(name)
    out = call(name, [x.clone() for _ in range(n)], [1.0 / n] * n, base=x.clone())
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


def check_constant_kept_by_weights_summing_to_one(name, dtype=torch.float32):
    c = torch.full((4, 6), 0.375, dtype=dtype)
    weights = [0.3, 0.7] if two_or_three(name) == 2 else [0.2, 0.5, 0.3]
    out = call(name, [c.clone() for _ in weights], weights, base=c.clone())
    torch.testing.assert_close(out, c.float(), rtol=1e-6, atol=1e-6)


def check_float32_of_the_input_shape(name, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(3, 8, generator=g).to(dtype) for _ in range(two_or_three(name))]
    base = torch.randn(3, 8, generator=g).to(dtype)
    out = call(name, tensors, [1.0 / len(tensors)] * len(tensors), base=base)
    assert out.dtype == torch.float32 and out.shape == (3, 8)


def check_no_nan(name, kind):
    n = two_or_three(name)
    if kind == "zeros":
        tensors, base = [torch.zeros(16) for _ in range(n)], torch.zeros(16)
    else:
        g = torch.Generator().manual_seed(2)
        tensors, base = [torch.randn(16, generator=g) * 1e30 for _ in range(n)], torch.randn(16, generator=g) * 1e30
    out = call(name, tensors, [1.0 / n] * n, base=base)
    assert torch.isfinite(out).all()


def check_mergekit_export(name):
    """A method with a mergekit mapping exports in every stage it may run in; one without
    gives one MergeError naming it."""
    stages = [("stage1_method", "stage 1")] + ([("stage2_method", "stage 2")] if name in stage2_methods() else [])
    for keyword, stage in stages:
        plan = MergePlan.create(alpha=0.3, beta=0.8, **{keyword: name}, **SOURCES)
        if writer_for(name) is None:
            with pytest.raises(MergeError) as info:
                mergekit_recipe(plan, out_dtype="bfloat16")
            assert f"{stage}: merge method {name!r} has no mergekit equivalent" in str(info.value)
            continue
        docs = list(yaml.safe_load_all(mergekit_recipe(plan, out_dtype="bfloat16")))
        assert all(doc["merge_method"] and doc["models"] for doc in docs), name
        assert docs[-1]["out_dtype"] == "bfloat16"


# ---------------------------------------------------------------- every registered method


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_on_one_input(name, dtype):
    check_identity_on_one_input(name, dtype)


@pytest.mark.parametrize("name", METHODS.names())
def test_identity_when_every_input_is_the_same(name):
    check_identity_when_every_input_is_the_same(name)


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_summing_to_one_keep_a_constant_tensor_constant(name, dtype):
    check_constant_kept_by_weights_summing_to_one(name, dtype)


@pytest.mark.parametrize("name", METHODS.names())
def test_returns_float32_of_the_input_shape_from_bf16_inputs(name):
    check_float32_of_the_input_shape(name)


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("kind", ["zeros", "large"])
def test_no_nan_on_zero_or_large_tensors(name, kind):
    check_no_nan(name, kind)


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_are_valid_and_every_parameter_is_checked(name):
    assert param_problems(name, method_defaults(name)) == []
    assert all(p in PARAM_CHECKS for p in method_param_names(name))


@pytest.mark.parametrize("name", METHODS.names())
def test_mergekit_export(name):
    check_mergekit_export(name)


def test_every_built_in_method_has_a_mergekit_mapping():
    for name in ("linear", "task_arithmetic", "ties", "dare", "slerp"):
        assert writer_for(name) is not None, name


def test_stage_2_runs_the_methods_without_a_base():
    assert stage2_methods() == ["linear", "slerp"]
    assert [name for name in METHODS.names() if needs_base(name)] == ["dare", "task_arithmetic", "ties"]
