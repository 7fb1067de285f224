"""Done-when check on the demo family: the adapter equals the lm_eval CLI, with the demo spec's settings.

The CLI scores the reasoning checkpoint from disk; the adapter scores the same weights
loaded in place into a live model object that held the instruct weights before.
"""

from __future__ import annotations

import pytest

from evals.answers import think_end_token
from evals.lmeval import LmEvalConfig, LmEvalRunner
from tests.evals.conftest import load
from tests.evals.test_lmeval_cli import run_lm_eval_cli

TASKS = ["toy_reasoning", "toy_instruct"]
# search_spaces/demo.yaml's evals.lm_eval settings
LIMIT, BATCH_SIZE, MAX_GEN_TOKS = 24, 24, 160


@pytest.fixture(scope="module")
def demo_cli_results(demo_family, tmp_path_factory) -> dict:
    _, tokenizer = load(demo_family.reasoning)
    think_end = think_end_token(tokenizer, "</think>")
    return run_lm_eval_cli(
        model_dir=demo_family.reasoning,
        tasks=TASKS,
        include_path=demo_family.tasks,
        out=tmp_path_factory.mktemp("lm_eval_cli_demo"),
        extra_model_args=f",think_end_token={think_end}",
        extra=[
            "--limit",
            str(LIMIT),
            "--apply_chat_template",
            "--gen_kwargs",
            f"do_sample=False,temperature=0,max_gen_toks={MAX_GEN_TOKS}",
        ],
        batch_size=BATCH_SIZE,
    )


def test_adapter_equals_lm_eval_cli_on_a_demo_checkpoint(demo_family, demo_cli_results):
    import torch

    model, tokenizer = load(demo_family.instruct)
    runner = LmEvalRunner(
        LmEvalConfig(
            tasks=TASKS,
            include_paths=[str(demo_family.tasks)],
            limit=LIMIT,
            batch_size=BATCH_SIZE,
            apply_chat_template=True,
            max_gen_toks=MAX_GEN_TOKS,
        )
    )
    instruct_scores = {s.name: s.value for s in runner.evaluate(model, tokenizer)}  # the previous candidate
    reasoning, _ = load(demo_family.reasoning)
    with torch.no_grad():
        model.load_state_dict(reasoning.state_dict())
    ours = {s.name: s for s in runner.evaluate(model, tokenizer)}

    cli = demo_cli_results["results"]
    assert set(ours) == {f"lm_eval/{t}/exact_match,final" for t in TASKS}
    for task in TASKS:
        score = ours[f"lm_eval/{task}/exact_match,final"]
        assert score.value == cli[task]["exact_match,final"], task
        assert score.stderr == pytest.approx(cli[task]["exact_match_stderr,final"], abs=1e-12), task
    # New weights in the same object give new numbers (nothing stale from the previous candidate).
    assert {n: s.value for n, s in ours.items()} != instruct_scores
