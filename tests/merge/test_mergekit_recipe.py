"""The mergekit recipe text (no mergekit needed): the settings each method needs to match
ours, and `sweep merge --print-mergekit`. The round trip through mergekit itself is in
test_mergekit_roundtrip.py."""

from __future__ import annotations

import json

import pytest
import yaml

from merge.mergekit_recipe import STAGE1_NAME, inputs_out_dtype, mergekit_recipe
from merge.plan import MergePlan
from sweep.cli import main
from tests.merge.helpers import merge_argv

SOURCES = {"instruct": "/m/I", "reasoning": "/m/R", "pretrained": "/m/P"}


def recipe(stage1="linear", p1=None, stage2="linear", p2=None, *, alpha=0.3, beta=0.8, out_dtype="bfloat16", **kwargs):
    plan = MergePlan.create(
        alpha=alpha,
        beta=beta,
        stage1_method=stage1,
        stage1_params=p1,
        stage2_method=stage2,
        stage2_params=p2,
        **SOURCES,
        **kwargs,
    )
    text = mergekit_recipe(plan, out_dtype=out_dtype)
    return text, list(yaml.safe_load_all(text))


def test_both_linear_is_one_pass_with_the_fused_weights():
    text, docs = recipe(alpha=0.3, beta=0.8)
    (doc,) = docs
    assert doc["merge_method"] == "linear" and doc["parameters"] == {"normalize": False}
    assert [(m["model"], m["parameters"]["weight"]) for m in doc["models"]] == [
        ("/m/I", 0.3 * 0.8),
        ("/m/R", (1 - 0.3) * 0.8),
        ("/m/P", 1 - 0.8),
    ]
    assert (doc["dtype"], doc["out_dtype"]) == ("float32", "bfloat16")  # load fp32, cast once: our single rounding
    assert "# run: mergekit-yaml mergekit.yaml OUT" in text and "# match: bit-identical" in text


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16", "float16"])
def test_two_stages_chain_through_a_float32_intermediate(out_dtype):
    text, (stage1, stage2) = recipe("task_arithmetic", out_dtype=out_dtype)
    assert stage1["name"] == STAGE1_NAME and (stage1["dtype"], stage1["out_dtype"]) == ("float32", "float32")
    assert stage1["merge_method"] == "task_arithmetic" and stage1["base_model"] == "/m/P"
    assert [m["parameters"]["weight"] for m in stage1["models"]] == [0.3, 1 - 0.3]
    assert "name" not in stage2 and (stage2["dtype"], stage2["out_dtype"]) == ("float32", out_dtype)
    assert [(m["model"], m["parameters"]["weight"]) for m in stage2["models"]] == [
        (STAGE1_NAME, 0.8),
        ("/m/P", 1 - 0.8),
    ]
    assert "mergekit-multi mergekit.yaml --intermediate-dir TMP --out-path OUT" in text


def test_slerp_is_based_on_instruct_with_t_one_minus_alpha():
    _, (stage1, stage2) = recipe("slerp", stage2="slerp", alpha=0.25, beta=0.6)
    assert stage1["merge_method"] == "slerp" and stage1["base_model"] == "/m/I"
    assert [m["model"] for m in stage1["models"]] == ["/m/I", "/m/R"] and stage1["parameters"] == {"t": 0.75}
    assert stage2["base_model"] == STAGE1_NAME and stage2["parameters"] == {"t": 1 - 0.6}


def test_a_slerp_eps_mergekit_cannot_express_is_noted():
    text, _ = recipe("slerp", {"eps": 0.01})
    assert "stage 1 slerp eps = 0.01" in text and "0.9995" in text
    assert "slerp eps" not in recipe("slerp")[0]


def test_ties_normalizes_and_dare_rescales_by_lambda():
    text, (ties, _) = recipe("ties", {"density": 0.4})
    assert ties["merge_method"] == "ties" and ties["parameters"] == {"normalize": True}
    assert [m["parameters"] for m in ties["models"]] == [
        {"weight": 0.3, "density": 0.4},
        {"weight": 1 - 0.3, "density": 0.4},
    ]
    assert "int(density * numel)" in text
    text, (dare, _) = recipe("dare", {"density": 0.25})
    assert dare["merge_method"] == "dare_linear" and dare["parameters"] == {"rescale": False, "lambda": 4.0}
    assert "DARE has no exact mergekit equivalent" in text and "# match: statistics only" in text
    _, (dare_ties, _) = recipe("dare", {"density": 0.5, "variant": "ties"})
    assert dare_ties["merge_method"] == "dare_ties" and dare_ties["parameters"] == {
        "normalize": True,
        "rescale": False,
        "lambda": 2.0,
    }


def test_notes_for_what_mergekit_does_its_own_way():
    assert "vocabulary policy 'pad'" in recipe(vocab="pad")[0]
    assert "ours come from reasoning, mergekit's from instruct" in recipe(tokenizer_source="reasoning")[0]
    assert "tokenizer and config" not in recipe()[0]
    assert "ours come from instruct, mergekit's from pretrained" in recipe("ties")[0]  # ties' base model donates


def test_out_dtype_must_be_resolved():
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        recipe(out_dtype="auto")
    assert inputs_out_dtype(["BF16", "BF16", "I64"]) == "bfloat16"
    assert inputs_out_dtype(["BF16", "F32"]) == "float32"


def _merge_args(trio, *extra):
    return merge_argv(trio, "--alpha", "0.3", "--beta", "0.8", *extra)


def test_print_mergekit_after_a_merge(tiny_trio, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_merge_args(tiny_trio, "--out", str(out), "--print-mergekit", "--method-stage1", "ties")) == 0
    captured = capsys.readouterr()
    stage1, stage2 = yaml.safe_load_all(captured.out)  # stdout is the recipe alone
    assert (
        stage1["base_model"] == str(tiny_trio["pretrained"]) and stage2["out_dtype"] == "float32"
    )  # auto: the inputs' fp32
    assert "merged ties+linear" in captured.err
    assert json.loads((out / "merge_recipe.json").read_text())["plan"]["stage1"]["method"] == "ties"


def test_print_mergekit_alone_merges_nothing(tiny_trio, tmp_path, capsys):
    assert main(_merge_args(tiny_trio, "--print-mergekit", "--dtype", "bfloat16")) == 0
    (doc,) = yaml.safe_load_all(capsys.readouterr().out)
    assert doc["out_dtype"] == "bfloat16" and doc["models"][0]["model"] == str(tiny_trio["instruct"])
    assert main(_merge_args(tiny_trio, "--print-mergekit", "--alpha", "2")) == 2  # the same checks as a merge
    assert "alpha = 2.0 is outside [0, 1]" in capsys.readouterr().err
    missing = dict(tiny_trio, reasoning=tmp_path / "nope")
    assert main(_merge_args(missing, "--print-mergekit")) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    assert main(_merge_args(tiny_trio)) == 2
    assert "--out DIR is required" in capsys.readouterr().err
