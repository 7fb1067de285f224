"""Real vLLM eval backend == HF backend, candidate after candidate swapped into one engine.

Scores (a generate_until and a multiple-choice task) must be equal; beyond the scores,
greedy generations must agree token for token and log-likelihoods to fp32 rounding.
A swapped engine must equal a fresh engine built on the merged checkpoint.
"""

from __future__ import annotations

import pytest
import torch

from evals.answers import think_end_token
from evals.errors import EvalError
from evals.lmeval import LmEvalConfig, LmEvalRunner
from evals.vllm_backend import VllmBackend
from tests.evals.conftest import ANSWER_REGEX, load

TASKS = ["tiny_think", "tiny_choice"]
CANDIDATES = [(0.0, 1.0), (1.0, 0.6), (0.5, 0.8), (0.3, 0.0)]  # (alpha, beta)
ENGINE = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "seed": 0}


def _config(tiny_tasks, backend, **vllm):
    return LmEvalConfig(
        tasks=TASKS,
        include_paths=[str(tiny_tasks)],
        batch_size=4,
        answer_regex=ANSWER_REGEX,
        backend=backend,
        vllm=vllm,
    )


def _requests(tokenizer):
    from lm_eval.api.instance import Instance

    loglik = [
        Instance(
            request_type="loglikelihood",
            doc={},
            arguments=(f"{a}+{b}=", f"<think>{a}+{b}</think>answer: {a + b}"),
            idx=i,
        )
        for i, (a, b) in enumerate([(3, 4), (9, 3), (1, 1), (7, 7)])
    ]
    gen = [
        Instance(
            request_type="generate_until",
            doc={},
            idx=i,
            arguments=(f"{a}+{b}=", {"until": ["\n"], "max_gen_toks": 30, "do_sample": False, "temperature": 0.0}),
        )
        for i, (a, b) in enumerate([(3, 4), (2, 9), (8, 8)])
    ]
    return loglik, gen


def test_vllm_scores_equal_hf_scores_for_candidates_swapped_into_one_engine(trio, tiny_tasks, tmp_path):
    from lm_eval.models.huggingface import HFLM

    import merge

    sources = merge.SourceCache.load(
        pretrained=trio["pretrained"], instruct=trio["instruct"], reasoning=trio["reasoning"]
    )
    model, tokenizer = load(trio["instruct"])
    model.eval()
    hf_runner = LmEvalRunner(_config(tiny_tasks, "hf"))
    backend = VllmBackend(_config(tiny_tasks, "vllm", model=str(trio["engine_base"]), **ENGINE))
    vllm_runner = LmEvalRunner(_config(tiny_tasks, "vllm"), backend=backend)
    loglik, gen = _requests(tokenizer)
    seen_scores = set()
    for alpha, beta in CANDIDATES:
        merge.build_in_place(model, sources, alpha=alpha, beta=beta)
        hf_scores = hf_runner.evaluate(model, tokenizer)
        vllm_scores = vllm_runner.evaluate(model, tokenizer)
        assert [(s.name, s.value) for s in vllm_scores] == [(s.name, s.value) for s in hf_scores], (alpha, beta)
        seen_scores.add(tuple(s.value for s in hf_scores))
        hf_lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=4, think_end_token=think_end_token(tokenizer, "</think>")
        )
        vllm_lm = backend._lm
        hf_ll, vllm_ll = hf_lm.loglikelihood(loglik), vllm_lm.loglikelihood(loglik)
        assert [g for _, g in vllm_ll] == [g for _, g in hf_ll]
        torch.testing.assert_close(
            torch.tensor([v for v, _ in vllm_ll]), torch.tensor([v for v, _ in hf_ll]), rtol=0, atol=2e-4
        )
        assert vllm_lm.generate_until(gen) == hf_lm.generate_until(gen), (alpha, beta)
    assert backend.reloads == len(CANDIDATES) and len(seen_scores) >= 2  # the candidates really differ

    # a fresh engine on the last candidate, saved: the same scores and log-likelihoods.
    # One engine per process (docs/evals.md): the swapped engine's answers are taken
    # first, since building the fresh one shuts the swapped one down.
    swapped = (
        backend._lm.loglikelihood(loglik),
        backend._lm.generate_until(gen),
        vllm_runner.evaluate(model, tokenizer),
    )
    merged = tmp_path / "merged"
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    fresh = VllmBackend(_config(tiny_tasks, "vllm", model=str(merged), **ENGINE))
    fresh_lm = fresh.lm_for(model, tokenizer)
    fresh_scores = LmEvalRunner(_config(tiny_tasks, "vllm"), backend=fresh).evaluate(model, tokenizer)
    assert (fresh_lm.loglikelihood(loglik), fresh_lm.generate_until(gen), fresh_scores) == swapped
    with pytest.raises(EvalError, match="shut down because another was built"):
        backend.lm_for(model, tokenizer)
