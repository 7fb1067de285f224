"""Merge methods: the parameter schema, then hand-computed examples (the contract every
registered method keeps is in test_method_contract.py)."""

from __future__ import annotations

import math

import torch

from merge.methods import (
    get_method,
    method_defaults,
    method_param_names,
    needs_base,
    param_problems,
)


def call(name, tensors, weights, base=None, **params):
    kwargs = {"base": base} if needs_base(name) else {}
    return get_method(name)(tensors, weights, **kwargs, **(method_defaults(name) | params))


def test_parameter_names_are_the_schema_the_spec_validates():
    assert method_param_names("linear") == []
    assert method_param_names("task_arithmetic") == []
    assert method_param_names("ties") == ["density"]
    assert method_param_names("dare") == ["density", "variant", "seed"]
    assert method_param_names("slerp") == ["eps"]


def test_param_problems_name_the_bad_value():
    assert "not a parameter of merge method ties" in param_problems("ties", {"densty": 0.5})[0]
    assert "density must be a number in (0, 1]" in param_problems("dare", {"density": 0})[0]
    assert "variant must be 'linear' or 'ties'" in param_problems("dare", {"variant": "tie"})[0]
    assert "unknown merge method 'lerp'" in param_problems("lerp", {})[0]


# ---------------------------------------------------------------- hand-computed examples


def test_linear_and_task_arithmetic_by_hand():
    base, a, b = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(call("linear", [a, b], [0.25, 0.75]), torch.tensor([0.5, 1.5]))
    # 1 + 0.25*(1, 2) + 0.75*(-1, 0)
    torch.testing.assert_close(call("task_arithmetic", [a, b], [0.25, 0.75], base=base), torch.tensor([0.5, 1.5]))
    # weights not summing to one: task vectors scale, the base stays
    torch.testing.assert_close(call("task_arithmetic", [a, b], [0.5, 0.0], base=base), torch.tensor([1.5, 2.0]))


def test_ties_by_hand():
    base = torch.ones(4)
    tau_i = torch.tensor([1.0, 2.0, 3.0, -0.1])  # density 0.75 keeps 3 of 4: drops -0.1
    tau_r = torch.tensor([-5.0, 4.0, 0.2, -0.3])  # drops 0.2
    # weighted sum [-3.5, 3.5, 0.75, -0.225] elects signs [-, +, +, -]
    # entry 0: only R agrees -> -5; entry 1: both, (0.25*2 + 0.75*4) / 1 = 3.5;
    # entry 2: only I kept -> 3; entry 3: only R -> -0.3
    out = call("ties", [base + tau_i, base + tau_r], [0.25, 0.75], base=base, density=0.75)
    torch.testing.assert_close(out, base + torch.tensor([-5.0, 3.5, 3.0, -0.3]))


def test_ties_trim_keeps_exactly_the_count_and_breaks_ties_by_index():
    base = torch.zeros(6)
    # magnitudes 1, 3, 2, 2, 2, 0.5: density 0.5 keeps 3 = the 3 and the first two 2s
    tau = torch.tensor([1.0, -3.0, 2.0, -2.0, 2.0, 0.5])
    out = call("ties", [tau, tau], [0.5, 0.5], base=base, density=0.5)
    torch.testing.assert_close(out, torch.tensor([0.0, -3.0, 2.0, -2.0, 0.0, 0.0]))


def test_ties_trim_matches_a_stable_sort_on_bf16_deltas_full_of_ties():
    """bf16 task vectors repeat magnitudes often: the kept set is the stable-descending-sort top k."""
    from merge.methods import _trim

    g = torch.Generator().manual_seed(5)
    base = (torch.randn(20_000, generator=g) * 0.02).to(torch.bfloat16).float()
    tuned = (base + torch.randn(20_000, generator=g) * 0.002).to(torch.bfloat16).float()
    delta = tuned - base
    magnitude = delta.abs()
    assert magnitude.unique().numel() < 5_000  # many ties
    for density in (0.1, 0.37, 0.5, 0.9):
        keep = round(density * delta.numel())
        top = torch.sort(magnitude, descending=True, stable=True).indices[:keep]
        expected = torch.zeros_like(delta)
        expected[top] = delta[top]
        assert torch.equal(_trim(delta, density), expected)


def test_ties_with_full_density_and_agreeing_signs_is_the_weighted_mean_of_task_vectors():
    base = torch.zeros(3)
    out = call(
        "ties", [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])], [0.5, 0.5], base=base, density=1.0
    )
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 2.0]))


def test_dare_masks_follow_the_documented_generator():
    base = torch.zeros(6)
    tau_i = torch.tensor([1.0, -2.0, 3.0, 4.0, -5.0, 6.0])
    tau_r = torch.tensor([0.5, 0.5, 0.5, -0.5, -0.5, -0.5])
    g = torch.Generator().manual_seed(7)
    keep_i = torch.rand(6, generator=g) < 0.5
    keep_r = torch.rand(6, generator=g) < 0.5
    expected = 0.4 * tau_i * keep_i / 0.5 + 0.6 * tau_r * keep_r / 0.5
    out = call("dare", [tau_i, tau_r], [0.4, 0.6], base=base, density=0.5, seed=7)
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out, call("dare", [tau_i, tau_r], [0.4, 0.6], base=base, density=0.5, seed=8))


def test_dare_rescale_keeps_the_merge_unbiased_and_full_density_is_task_arithmetic():
    g = torch.Generator().manual_seed(3)
    base, a, b = (torch.randn(200_000, generator=g) for _ in range(3))
    ta = call("task_arithmetic", [a, b], [0.5, 0.5], base=base)
    torch.testing.assert_close(call("dare", [a, b], [0.5, 0.5], base=base, density=1.0), ta)
    dropped = call("dare", [a, b], [0.5, 0.5], base=base, density=0.3, seed=1)
    kept = ((dropped - base).abs() > 0).float().mean().item()
    assert 1 - 0.7**2 - 0.01 < kept < 1 - 0.7**2 + 0.01  # an entry survives unless both models drop it
    assert abs((dropped - ta).mean().item()) < 0.02  # E[keep/density] = 1


def test_dare_ties_variant_by_hand():
    base = torch.zeros(3)
    tau_i, tau_r = torch.tensor([2.0, -1.0, 4.0]), torch.tensor([-6.0, -3.0, 1.0])
    # density 1 keeps everything; signs elected from 0.5*tau_i + 0.5*tau_r = [-2, -2, 2.5]
    out = call("dare", [tau_i, tau_r], [0.5, 0.5], base=base, density=1.0, variant="ties")
    torch.testing.assert_close(out, torch.tensor([-6.0, -2.0, 2.5]))


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(call("slerp", [a, b], [0.5, 0.5]), torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    # a third of the way along the quarter circle: 30 degrees
    torch.testing.assert_close(
        call("slerp", [a, b], [2 / 3, 1 / 3]), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)])
    )
    # norms interpolate along the arc of the unnormalized vectors
    torch.testing.assert_close(call("slerp", [2 * a, 2 * b], [0.5, 0.5]), torch.tensor([math.sqrt(2), math.sqrt(2)]))


def test_slerp_depends_on_the_values_not_on_where_they_lie_in_memory():
    """The same two tensors at 8 offsets into a buffer (as a tensor read from a safetensors
    file sits wherever its header put it) merge to the same bits. An fp32 torch.dot gave 2
    different sums over these offsets, and the disk merge and the in-place build differed."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(83, 64, generator=gen)
    b = a + 0.03 * torch.randn(83, 64, generator=gen)  # a fine-tune of a: cos ~0.9996, the angle is small
    results = []
    for offset in range(8):
        x = torch.empty(a.numel() + 16)[offset : offset + a.numel()].view_as(a)
        y = torch.empty(b.numel() + 16)[offset : offset + b.numel()].view_as(b)
        x.copy_(a), y.copy_(b)
        results.append(call("slerp", [x, y], [0.3, 0.7], eps=1e-6))  # a real slerp, not the linear fallback
    assert all(torch.equal(r, results[0]) for r in results)


def test_slerp_falls_back_to_linear_when_nearly_colinear():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])  # cos = 1
    torch.testing.assert_close(call("slerp", [a, b], [0.75, 0.25]), torch.tensor([1.25, 2.5]))
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.01])  # 1 - cos = 5e-5
    linear = 0.5 * a + 0.5 * b
    torch.testing.assert_close(call("slerp", [a, b], [0.5, 0.5]), linear)  # default eps 5e-4: linear
    arc = call("slerp", [a, b], [0.5, 0.5], eps=1e-6)  # below the threshold: a real slerp
    assert not torch.equal(arc, linear)
    assert torch.linalg.vector_norm(arc) > torch.linalg.vector_norm(linear)  # the arc bulges out
