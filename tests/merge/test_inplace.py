"""SourceCache + build_in_place: the candidate written into a live model equals the disk merge."""

from __future__ import annotations

import pytest
import torch

from merge import SourceCache, build_in_place, merge_checkpoints
from merge.errors import MergeError
from tests.merge.helpers import bf16_ulp, closed_form, load_state, make_untied_finetune
from tests.tiny import make_tiny_checkpoint

RECIPES = [
    ("linear", {}, "linear", {}),
    ("task_arithmetic", {}, "linear", {}),
    ("ties", {"density": 0.4}, "linear", {}),
    ("dare", {"density": 0.5, "variant": "ties", "seed": 3}, "slerp", {}),
    ("slerp", {"eps": 1e-6}, "slerp", {"eps": 1e-6}),
]


@pytest.fixture(scope="module")
def source_cache(tiny_trio):
    return SourceCache.load(**tiny_trio)


def live_model(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


@pytest.mark.parametrize("stage1, params1, stage2, params2", RECIPES)
def test_in_place_build_equals_the_disk_merge(tiny_trio, source_cache, tmp_path, stage1, params1, stage2, params2):
    recipe = dict(
        alpha=0.35, beta=0.75, stage1_method=stage1, stage1_params=params1, stage2_method=stage2, stage2_params=params2
    )
    model = live_model(tiny_trio["instruct"])
    build_in_place(model, source_cache, **recipe)
    disk = load_state(merge_checkpoints(**tiny_trio, out=tmp_path / "m", **recipe))
    for name, value in model.state_dict().items():
        stored = disk.get(name, disk["model.embed_tokens.weight"] if name == "lm_head.weight" else None)
        assert torch.equal(value, stored), name


def test_build_overwrites_the_same_storage_and_keeps_ties(tiny_trio, source_cache):
    model = live_model(tiny_trio["pretrained"])
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    ids = torch.tensor([[5, 6, 7]])
    build_in_place(model, source_cache, alpha=1.0, beta=1.0)
    at_instruct = model(ids).logits.clone()
    build_in_place(model, source_cache, alpha=0.0, beta=1.0)
    at_reasoning = model(ids).logits.clone()
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == pointers  # no second model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(at_instruct, live_model(tiny_trio["instruct"])(ids).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(at_reasoning, live_model(tiny_trio["reasoning"])(ids).logits, rtol=0, atol=1e-6)


def test_bf16_live_model_from_an_fp32_cache_is_within_one_bf16_ulp(tiny_trio, source_cache):
    model = live_model(tiny_trio["instruct"], dtype=torch.bfloat16)
    build_in_place(model, source_cache, alpha=0.2, beta=0.9)
    for name, value in model.state_dict().items():
        key = "model.embed_tokens.weight" if name == "lm_head.weight" else name
        expected = closed_form(tiny_trio, 0.2, 0.9, key)
        assert value.dtype == torch.bfloat16
        assert ((value.double() - expected).abs() <= bf16_ulp(expected) + 1e-9).all(), name


def test_cache_dtype_option_halves_its_memory(tiny_trio, source_cache):
    small = SourceCache.load(**tiny_trio, dtype="bfloat16")
    assert {t.dtype for triple in small.tensors.values() for t in triple} == {torch.bfloat16}
    assert small.nbytes * 2 == source_cache.nbytes


def test_mixed_tied_sources_need_an_untied_live_model(tiny_trio, tmp_path):
    untied = make_untied_finetune(tmp_path / "instruct", base=tiny_trio["pretrained"], seed=4)
    trio = dict(tiny_trio, instruct=untied)
    cache = SourceCache.load(**trio)
    assert not cache.tie_word_embeddings
    with pytest.raises(MergeError, match="tie_word_embeddings=False"):
        build_in_place(live_model(tiny_trio["pretrained"]), cache, alpha=0.5, beta=0.5)
    model = live_model(untied)
    build_in_place(model, cache, alpha=0.5, beta=0.5)
    torch.testing.assert_close(
        model.lm_head.weight.double(), closed_form(trio, 0.5, 0.5, "lm_head.weight"), rtol=0, atol=1e-6
    )


def test_untied_live_model_from_tied_sources_gets_the_merged_embedding_as_head(tiny_trio, source_cache, tmp_path):
    untied = make_untied_finetune(tmp_path / "u", base=tiny_trio["pretrained"], seed=6)
    model = live_model(untied)
    build_in_place(model, source_cache, alpha=0.5, beta=0.5)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_a_model_of_another_shape_is_refused_before_writing(source_cache, tmp_path):
    wide = live_model(make_tiny_checkpoint(tmp_path / "wide", hidden=64))
    before = {n: p.clone() for n, p in wide.state_dict().items()}
    with pytest.raises(MergeError, match="does not match the source cache") as info:
        build_in_place(wide, source_cache, alpha=0.5, beta=0.5)
    assert "model shape [" in str(info.value)
    assert all(torch.equal(before[n], p) for n, p in wide.state_dict().items())


def test_bad_ratios_are_refused_unless_extrapolating(tiny_trio, source_cache):
    model = live_model(tiny_trio["instruct"])
    with pytest.raises(MergeError, match="beta = 1.2 is outside"):
        build_in_place(model, source_cache, alpha=0.5, beta=1.2)
    build_in_place(model, source_cache, alpha=0.5, beta=1.2, allow_extrapolation=True)
    torch.testing.assert_close(
        model.model.norm.weight.double(), closed_form(tiny_trio, 0.5, 1.2, "model.norm.weight"), rtol=0, atol=1e-6
    )


def test_cache_load_refuses_incompatible_models(tiny_trio, tmp_path):
    wide = make_tiny_checkpoint(tmp_path / "wide", hidden=64)
    with pytest.raises(MergeError, match="tensor shapes differ"):
        SourceCache.load(**dict(tiny_trio, reasoning=wide))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_build_matches_the_cpu_build(tiny_trio, source_cache):
    cuda_cache = SourceCache.load(**tiny_trio, device="cuda")
    model = live_model(tiny_trio["instruct"]).to("cuda")
    for stage1, params1, stage2, params2 in RECIPES:
        recipe = dict(
            alpha=0.35,
            beta=0.75,
            stage1_method=stage1,
            stage1_params=params1,
            stage2_method=stage2,
            stage2_params=params2,
        )
        build_in_place(model, cuda_cache, **recipe)
        cpu_model = live_model(tiny_trio["instruct"])
        build_in_place(cpu_model, source_cache, **recipe)
        for (name, value), cpu_value in zip(model.state_dict().items(), cpu_model.state_dict().values(), strict=True):
            torch.testing.assert_close(value.cpu(), cpu_value, rtol=1e-5, atol=1e-6, msg=name)


def test_device_auto_picks_cuda_only_when_there_is_one(tiny_trio):
    cache = SourceCache.load(**tiny_trio, device="auto")
    assert cache.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MergeError, match="CUDA is not available"):
            SourceCache.load(**tiny_trio, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_sources_stream_to_a_cuda_model_and_equal_the_on_device_build(tiny_trio):
    """merge.source_device: cpu on a GPU trial: pinned host cache, streamed per tensor."""
    host_cache = SourceCache.load(**tiny_trio, device="cpu", pin_memory=True)
    cuda_cache = SourceCache.load(**tiny_trio, device="cuda")
    assert all(t.is_pinned() for triple in host_cache.tensors.values() for t in triple)
    streamed, on_device = live_model(tiny_trio["instruct"]).to("cuda"), live_model(tiny_trio["instruct"]).to("cuda")
    for stage1, params1, stage2, params2 in RECIPES:
        recipe = dict(
            alpha=0.35,
            beta=0.75,
            stage1_method=stage1,
            stage1_params=params1,
            stage2_method=stage2,
            stage2_params=params2,
        )
        build_in_place(streamed, host_cache, **recipe)
        build_in_place(on_device, cuda_cache, **recipe)
        for (name, a), b in zip(streamed.state_dict().items(), on_device.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_pin_memory_is_ignored_without_cuda_and_the_build_is_unchanged(tiny_trio, source_cache):
    pinned = SourceCache.load(**tiny_trio, device="cpu", pin_memory=True)
    assert pinned.device.type == "cpu"
    a, b = live_model(tiny_trio["instruct"]), live_model(tiny_trio["instruct"])
    build_in_place(a, pinned, alpha=0.3, beta=0.7)
    build_in_place(b, source_cache, alpha=0.3, beta=0.7)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
