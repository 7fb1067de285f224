"""merge_checkpoints: closed form, dtypes, shards, tied embeddings, vocab policy, pickle, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merge import merge_checkpoints
from merge.disk import RECORD_NAME, MergeRecord
from merge.errors import MergeError
from tests.merge.helpers import bf16_ulp, closed_form, load_state, make_pickle_copy, make_untied_finetune
from tests.tiny import make_tiny_checkpoint, make_trio

FP32_EPS = 2.0**-24


@pytest.fixture(scope="module")
def bf16_sharded_trio(tmp_path_factory):
    """bf16 trio whose inputs are split into several shards each (with an index)."""
    return make_trio(tmp_path_factory.mktemp("bf16"), dtype=torch.bfloat16, max_shard_size="20KB")


@pytest.fixture(scope="module")
def mixed_tied_trio(tiny_trio, tmp_path_factory):
    """pretrained and reasoning tie their embeddings; instruct has its own lm_head."""
    untied = make_untied_finetune(tmp_path_factory.mktemp("untied") / "instruct", base=tiny_trio["pretrained"], seed=5)
    return {"pretrained": tiny_trio["pretrained"], "instruct": untied, "reasoning": tiny_trio["reasoning"]}


def generate_text(folder: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("12+3=", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 6
    return tokenizer.decode(out[0])


def test_two_stage_linear_equals_the_closed_form_within_fp32_rounding(tiny_trio, tmp_path):
    out = merge_checkpoints(**tiny_trio, alpha=0.3, beta=0.7, out=tmp_path / "m")
    merged = load_state(out)
    states = {role: load_state(path) for role, path in tiny_trio.items()}
    assert set(merged) == set(states["pretrained"])
    for name, value in merged.items():
        assert value.dtype == torch.float32
        expected = closed_form(tiny_trio, 0.3, 0.7, name)
        scale = sum(
            w * states[r][name].double().abs()
            for r, w in (("instruct", 0.21), ("reasoning", 0.49), ("pretrained", 0.3))
        )
        assert ((value.double() - expected).abs() <= 4 * FP32_EPS * scale + 1e-30).all(), name


def test_bf16_sharded_inputs_give_bf16_within_one_ulp_and_a_loadable_sharded_checkpoint(bf16_sharded_trio, tmp_path):
    assert (bf16_sharded_trio["instruct"] / "model.safetensors.index.json").exists()
    out = merge_checkpoints(**bf16_sharded_trio, alpha=0.6, beta=0.85, out=tmp_path / "m", max_shard_size="30KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    merged = load_state(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())
    states = {role: load_state(path) for role, path in bf16_sharded_trio.items()}
    for name, value in merged.items():
        assert value.dtype == torch.bfloat16
        expected = closed_form(bf16_sharded_trio, 0.6, 0.85, name)
        # one bf16 ulp, plus the fp32 accumulation's rounding where terms cancel to ~0
        scale = sum(
            w * states[r][name].double().abs()
            for r, w in (("instruct", 0.51), ("reasoning", 0.34), ("pretrained", 0.15))
        )
        assert ((value.double() - expected).abs() <= bf16_ulp(expected) + 4 * FP32_EPS * scale).all(), name
    assert generate_text(out)


def test_dtype_option_writes_the_requested_dtype(tiny_trio, tmp_path):
    out = merge_checkpoints(**tiny_trio, alpha=0.5, beta=1.0, out=tmp_path / "m", dtype="bfloat16")
    assert {t.dtype for t in load_state(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_config_tokenizer_and_chat_template_come_from_instruct_and_the_recipe_is_recorded(tiny_trio, tmp_path):
    out = merge_checkpoints(
        **tiny_trio, alpha=0.5, beta=0.9, out=tmp_path / "m", stage1_method="ties", stage1_params={"density": 0.4}
    )
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_trio["instruct"] / name).read_bytes(), name
    record = MergeRecord.from_dict(json.loads((out / RECORD_NAME).read_text()))
    assert record.plan.stage1.method == "ties" and record.plan.stage1.params == {"density": 0.4}
    assert record.sources["reasoning"] == str(tiny_trio["reasoning"].absolute())
    assert generate_text(out)


def test_tied_models_give_a_tied_checkpoint_without_a_stored_head(tiny_trio, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_checkpoints(**tiny_trio, alpha=0.5, beta=0.5, out=tmp_path / "m")
    assert "lm_head.weight" not in load_state(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_mixing_tied_and_untied_gives_an_untied_head_merged_from_each_models_real_head(mixed_tied_trio, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_checkpoints(**mixed_tied_trio, alpha=0.4, beta=0.8, out=tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    merged = load_state(out)
    head = closed_form(mixed_tied_trio, 0.4, 0.8, "lm_head.weight")  # tied roles contribute their embedding
    embed = closed_form(mixed_tied_trio, 0.4, 0.8, "model.embed_tokens.weight")
    torch.testing.assert_close(merged["lm_head.weight"].double(), head, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged["model.embed_tokens.weight"].double(), embed, rtol=0, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.lm_head.weight.double(), head, rtol=0, atol=1e-6)
    # config taken from a tied model (pretrained): the output still says untied
    out2 = merge_checkpoints(**mixed_tied_trio, alpha=0.4, beta=0.8, out=tmp_path / "m2", tokenizer_source="pretrained")
    assert json.loads((out2 / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.fixture(scope="module")
def vocab_trio(tiny_trio, tmp_path_factory):
    """instruct has 3 more vocabulary rows (added special tokens) than the others."""
    bigger = make_tiny_checkpoint(tmp_path_factory.mktemp("vocab") / "instruct", seed=9, vocab_extra=3)
    return {"pretrained": tiny_trio["pretrained"], "instruct": bigger, "reasoning": tiny_trio["reasoning"]}


def test_vocab_mismatch_is_refused_with_the_options_named(vocab_trio, tmp_path):
    with pytest.raises(MergeError) as info:
        merge_checkpoints(**vocab_trio, alpha=0.5, beta=0.5, out=tmp_path / "m")
    assert "vocabulary size mismatch" in str(info.value)
    assert "truncate" in str(info.value) and "pad" in str(info.value)
    assert not (tmp_path / "m").exists()  # refused before writing anything


def test_vocab_truncate_keeps_the_common_rows(vocab_trio, tmp_path):
    small = json.loads((vocab_trio["pretrained"] / "config.json").read_text())["vocab_size"]
    out = merge_checkpoints(
        **vocab_trio, alpha=0.5, beta=0.5, out=tmp_path / "m", vocab="truncate", tokenizer_source="pretrained"
    )
    embed = load_state(out)["model.embed_tokens.weight"]
    assert embed.shape[0] == small
    assert json.loads((out / "config.json").read_text())["vocab_size"] == small
    torch.testing.assert_close(
        embed.double(), closed_form(vocab_trio, 0.5, 0.5, "model.embed_tokens.weight", rows=small), rtol=0, atol=1e-6
    )
    assert generate_text(out)


def test_vocab_pad_borrows_the_new_rows_from_the_model_that_has_them(vocab_trio, tmp_path):
    small = json.loads((vocab_trio["pretrained"] / "config.json").read_text())["vocab_size"]
    out = merge_checkpoints(**vocab_trio, alpha=0.5, beta=0.5, out=tmp_path / "m", vocab="pad")
    embed = load_state(out)["model.embed_tokens.weight"]
    instruct = load_state(vocab_trio["instruct"])["model.embed_tokens.weight"]
    assert embed.shape[0] == small + 3
    assert json.loads((out / "config.json").read_text())["vocab_size"] == small + 3
    torch.testing.assert_close(embed[small:], instruct[small:], rtol=0, atol=1e-6)  # weights sum to one
    torch.testing.assert_close(
        embed[:small].double(),
        closed_form(vocab_trio, 0.5, 0.5, "model.embed_tokens.weight", rows=small),
        rtol=0,
        atol=1e-6,
    )


def test_pickle_checkpoints_are_refused_unless_allowed(tiny_trio, tmp_path):
    pickled = make_pickle_copy(tiny_trio["reasoning"], tmp_path / "reasoning_bin")
    trio = dict(tiny_trio, reasoning=pickled)
    with pytest.raises(MergeError, match="only pickle .bin weights found"):
        merge_checkpoints(**trio, alpha=0.5, beta=0.5, out=tmp_path / "m")
    out = merge_checkpoints(**trio, alpha=0.5, beta=0.5, out=tmp_path / "m", allow_pickle=True)
    reference = merge_checkpoints(**tiny_trio, alpha=0.5, beta=0.5, out=tmp_path / "ref")
    for name, value in load_state(reference).items():
        assert torch.equal(load_state(out)[name], value), name


def test_every_input_problem_is_reported_at_once_before_any_work(tiny_trio, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(MergeError) as info:
        merge_checkpoints(
            pretrained=tiny_trio["pretrained"],
            instruct=tmp_path / "nowhere",
            reasoning=tiny_trio["reasoning"],
            alpha=1.5,
            beta=0.5,
            out=busy,
        )
    message = str(info.value)
    assert "alpha = 1.5 is outside [0, 1]" in message
    assert f"instruct: {tmp_path / 'nowhere'}: no such checkpoint folder" in message
    assert "exists and is not empty" in message and "--force" in message
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_mismatched_models_are_refused(tiny_trio, tmp_path):
    wider = make_tiny_checkpoint(tmp_path / "wide", hidden=64)
    with pytest.raises(MergeError, match="tensor shapes differ"):
        merge_checkpoints(**dict(tiny_trio, reasoning=wider), alpha=0.5, beta=0.5, out=tmp_path / "m")


def test_force_replaces_an_old_checkpoint_and_its_stale_shards(tiny_trio, tmp_path):
    out = tmp_path / "m"
    merge_checkpoints(**tiny_trio, alpha=0.5, beta=0.5, out=out, max_shard_size="30KB")
    assert (out / "model.safetensors.index.json").exists()
    merge_checkpoints(**tiny_trio, alpha=1.0, beta=1.0, out=out, force=True)  # one shard now
    assert not (out / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert torch.equal(load_state(out)["model.norm.weight"], load_state(tiny_trio["instruct"])["model.norm.weight"])


def test_output_may_not_be_an_input(tiny_trio):
    with pytest.raises(MergeError, match="is the instruct checkpoint"):
        merge_checkpoints(**tiny_trio, alpha=0.5, beta=0.5, out=tiny_trio["instruct"], force=True)


def test_progress_reports_bytes_up_to_the_total(tiny_trio, tmp_path):
    seen = []
    merge_checkpoints(
        **tiny_trio, alpha=0.5, beta=0.5, out=tmp_path / "m", progress=lambda done, total: seen.append((done, total))
    )
    assert seen and seen == sorted(seen)
    done, total = seen[-1]
    weights = sum(f.stat().st_size for role in tiny_trio.values() for f in role.glob("*.safetensors"))
    assert done == total and total > weights  # read (three inputs) plus written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stage1", ["linear", "ties"])
def test_cuda_disk_merge_matches_the_cpu_merge(tiny_trio, tmp_path, stage1):
    cpu = load_state(merge_checkpoints(**tiny_trio, alpha=0.3, beta=0.7, out=tmp_path / "cpu", stage1_method=stage1))
    gpu = load_state(
        merge_checkpoints(**tiny_trio, alpha=0.3, beta=0.7, out=tmp_path / "gpu", stage1_method=stage1, device="cuda")
    )
    for name, value in cpu.items():
        torch.testing.assert_close(gpu[name], value, rtol=1e-5, atol=1e-6, msg=name)
