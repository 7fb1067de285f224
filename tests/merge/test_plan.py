"""The BAI recipe record: validation, fused weights, JSON round trip, per-tensor seeds."""

from __future__ import annotations

import json

import pytest
import torch

from merge.errors import MergeError
from merge.plan import MergePlan, tensor_seed


def test_both_linear_fuse_into_three_weights():
    plan = MergePlan.create(alpha=0.25, beta=0.8)
    assert plan.fused_weights == pytest.approx((0.2, 0.6, 0.2))
    assert MergePlan.create(alpha=0.25, beta=0.8, stage1_method="ties").fused_weights is None


def test_every_recipe_problem_is_reported_at_once():
    with pytest.raises(MergeError) as info:
        MergePlan.create(alpha=1.5, beta=-0.1, stage1_method="ties", stage1_params={"density": 2}, stage2_method="dare")
    message = str(info.value)
    assert "alpha = 1.5 is outside [0, 1]" in message
    assert "beta = -0.1 is outside [0, 1]" in message
    assert "density must be a number in (0, 1]" in message
    assert "stage 2 merges two models" in message and "linear or slerp" in message


def test_extrapolation_is_allowed_when_asked():
    plan = MergePlan.create(alpha=1.2, beta=1.1, allow_extrapolation=True)
    assert plan.fused_weights == pytest.approx((1.32, -0.22, -0.1))


def test_record_round_trips_through_json_with_defaults_filled_in():
    plan = MergePlan.create(
        alpha=0.5, beta=0.9, stage1_method="dare", stage1_params={"density": 0.3}, stage2_method="slerp"
    )
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["stage1"]["params"] == {"density": 0.3, "variant": "linear", "seed": 0}
    assert data["stage2"] == {"method": "slerp", "params": {"eps": 5e-4}}
    assert MergePlan.from_dict(data) == plan


def test_two_stage_methods_compose_as_documented():
    g = torch.Generator().manual_seed(0)
    i, r, p = (torch.randn(50, generator=g) for _ in range(3))
    plan = MergePlan.create(alpha=0.3, beta=0.6, stage1_method="task_arithmetic", stage2_method="slerp")
    from merge.methods import slerp

    mid = p + 0.3 * (i - p) + 0.7 * (r - p)
    torch.testing.assert_close(plan.merge_tensor(i, r, p), slerp([mid, p], [0.6, 0.4]))


def test_dare_masks_differ_between_tensors_but_repeat_between_builds():
    g = torch.Generator().manual_seed(0)
    i, r, p = (torch.randn(1000, generator=g) for _ in range(3))
    plan = MergePlan.create(alpha=0.5, beta=1.0, stage1_method="dare", stage1_params={"density": 0.5, "seed": 1})
    first = plan.merge_tensor(i, r, p, name="a.weight")
    assert torch.equal(first, plan.merge_tensor(i, r, p, name="a.weight"))
    assert not torch.equal(first, plan.merge_tensor(i, r, p, name="b.weight"))
    assert tensor_seed(1, "a.weight") == tensor_seed(1, "a.weight") != tensor_seed(2, "a.weight")
