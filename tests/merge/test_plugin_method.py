"""A merge method registered from this file, and no other, is usable by name: it keeps the
method contract, and a MergePlan naming it runs through the disk merge and the in-place
build on tiny real checkpoints. Its export as a mergekit recipe is a MergeError naming it,
until it registers a mergekit mapping too."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from merge import SourceCache, build_in_place, merge_checkpoints
from merge.disk import RECORD_NAME, MergeRecord
from merge.errors import MergeError
from merge.mergekit_recipe import mergekit_recipe, recipe_for_merged
from merge.plan import MergePlan
from merge.plugins import METHODS
from tests.merge import test_method_contract as contract
from tests.merge.helpers import closed_form, load_state

NAME = "weighted_mean"


@pytest.fixture
def weighted_mean():
    """sum_i w_i t_i / sum_i w_i, counting its calls; removed from METHODS afterwards."""
    calls = []

    @METHODS.register(NAME)
    def weighted_mean(tensors, weights, *, base=None):
        calls.append(len(tensors))
        out = torch.zeros_like(tensors[0], dtype=torch.float32)
        for tensor, weight in zip(tensors, weights, strict=True):
            out.add_(tensor.to(torch.float32), alpha=weight)
        return out / sum(weights)

    yield calls
    METHODS.remove(NAME)


def test_it_keeps_the_method_contract(weighted_mean):
    for dtype in (torch.float32, torch.bfloat16):
        contract.check_identity_on_one_input(NAME, dtype)
        contract.check_constant_kept_by_weights_summing_to_one(NAME, dtype)
    contract.check_identity_when_every_input_is_the_same(NAME)
    contract.check_float32_of_the_input_shape(NAME)
    for kind in ("zeros", "large"):
        contract.check_no_nan(NAME, kind)
    contract.check_mergekit_export(NAME)  # no mapping: the MergeError naming it


def test_a_plan_from_a_config_section_runs_it_on_disk_and_in_place(weighted_mean, tiny_trio, tmp_path):
    section = SimpleNamespace(
        stage1=SimpleNamespace(method=NAME, params={}),
        stage2=SimpleNamespace(method=NAME, params={}),
        dtype="auto",
        vocab="strict",
    )
    plan = MergePlan.from_config(section, models=tiny_trio, alpha=0.3, beta=0.7)
    out = merge_checkpoints(plan, out=tmp_path / "m")
    assert weighted_mean, "the registered method was not called"
    merged = load_state(out)
    for name, value in merged.items():  # weights summing to one: the closed form of linear
        torch.testing.assert_close(value.double(), closed_form(tiny_trio, 0.3, 0.7, name), rtol=1e-5, atol=1e-6)
    record = MergeRecord.from_dict(json.loads((out / RECORD_NAME).read_text()))
    assert (record.plan.stage1.method, record.plan.stage2.method) == (NAME, NAME)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_trio["instruct"])
    build_in_place(model, SourceCache.load(**tiny_trio), plan)
    for name, value in model.state_dict().items():
        stored = merged.get(name, merged["model.embed_tokens.weight"] if name == "lm_head.weight" else None)
        assert torch.equal(value, stored), name


def test_its_export_names_it_until_it_has_a_mergekit_mapping(weighted_mean, tiny_trio, tmp_path):
    out = merge_checkpoints(**tiny_trio, alpha=0.5, beta=0.5, stage1_method=NAME, out=tmp_path / "m")
    with pytest.raises(MergeError, match=f"stage 1: merge method '{NAME}' has no mergekit equivalent"):
        recipe_for_merged(out)

    def as_mergekit(models, weights, base, params, stage, notes):
        return {
            "merge_method": "linear",
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, weights, strict=True)],
            "parameters": {"normalize": True},
        }

    METHODS.add(NAME, METHODS.get(NAME), replace=True, mergekit=as_mergekit)
    stage1, _ = yaml.safe_load_all(recipe_for_merged(out))
    assert stage1["merge_method"] == "linear" and stage1["parameters"] == {"normalize": True}
    plan = MergePlan.create(alpha=0.5, beta=0.5, stage2_method=NAME, pretrained="/P", instruct="/I", reasoning="/R")
    assert "stage 2: weighted_mean" in mergekit_recipe(plan, out_dtype="float32")
