"""The lm-eval adapter on real lm-eval, real tiny models and tiny local tasks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evals.errors import EvalError
from evals.lmeval import LmEvalConfig, LmEvalRunner, metric_problems, task_problems
from evals.scores import EvalScore, scores_from_results
from tests.evals.conftest import ANSWER_REGEX, THINK_DOCS, TRAINED, load

EM = "lm_eval/tiny_think/exact_match,final"


def config(tasks, tiny_tasks, **kwargs) -> LmEvalConfig:
    return LmEvalConfig(tasks=list(tasks), include_paths=[str(tiny_tasks)], batch_size=4, **kwargs)


def values(scores: list[EvalScore]) -> dict[str, float]:
    return {s.name: s.value for s in scores}


def test_scores_from_lm_eval_results_are_plain_floats_with_stable_names():
    import numpy as np

    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": np.float64(0.25),
                "exact_match_stderr,strict-match": 0.1,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
                "sample_len": 8,
            },
        }
    }
    scores = scores_from_results(results)
    assert [s.name for s in scores] == [
        "lm_eval/gsm8k/exact_match,flexible-extract",
        "lm_eval/gsm8k/exact_match,strict-match",
    ]
    assert scores[0] == EvalScore(name="lm_eval/gsm8k/exact_match,flexible-extract", value=0.5, stderr=None)
    assert type(scores[1].value) is float and scores[1].stderr == 0.1
    round_trip = [EvalScore.from_dict(json.loads(json.dumps(s.to_dict()))) for s in scores]
    assert round_trip == scores


def test_think_end_and_answer_regex_score_the_final_answer(think_model, tiny_tasks):
    model, tokenizer = load(think_model)
    expected = TRAINED / len(THINK_DOCS)  # the model learnt the first TRAINED docs only
    # The answer is cut after </think> (a special token: cut by token id), then
    # "answer: (\d+)" extracts the number before the task's own take_first filter.
    both = LmEvalRunner(config(["tiny_think"], tiny_tasks, answer_regex=ANSWER_REGEX)).evaluate(model, tokenizer)
    assert values(both) == {EM: pytest.approx(expected)}
    # Without the regex the text after </think> is "answer: 7", not "7".
    think_only = LmEvalRunner(config(["tiny_think"], tiny_tasks)).evaluate(model, tokenizer)
    assert values(think_only) == {EM: 0.0}
    # Without think_end the trace stays ("3+4answer: 7"): the regex still finds the
    # answer here, but a regex matching the trace's numbers would not.
    first_number = LmEvalRunner(config(["tiny_think"], tiny_tasks, think_end=None, answer_regex=r"(\d+)")).evaluate(
        model, tokenizer
    )
    assert values(first_number) == {EM: 0.0}
    cut_first = LmEvalRunner(config(["tiny_think"], tiny_tasks, answer_regex=r"(\d+)")).evaluate(model, tokenizer)
    assert values(cut_first) == {EM: pytest.approx(expected)}


def test_one_runner_scores_new_weights_in_the_same_model_object(think_model, random_model, tiny_tasks):
    """Trial after trial: weights change in place; the runner must not return stale scores."""
    import torch

    model, tokenizer = load(random_model)
    trained, _ = load(think_model)
    runner = LmEvalRunner(config(["tiny_think", "tiny_choice"], tiny_tasks, answer_regex=ANSWER_REGEX, num_fewshot=1))
    before = values(runner.evaluate(model, tokenizer))
    again = values(runner.evaluate(model, tokenizer))
    assert before == again  # deterministic, few-shot examples included
    with torch.no_grad():
        model.load_state_dict(trained.state_dict())
    after = values(runner.evaluate(model, tokenizer))
    assert before[EM] == 0.0 and after[EM] == pytest.approx(TRAINED / len(THINK_DOCS))
    assert set(after) == {EM, "lm_eval/tiny_choice/acc,none", "lm_eval/tiny_choice/acc_norm,none"}
    assert runner.backend.builds == 1  # one HFLM for the model object, reused
    model.train()  # the probe trains the same object: evaluate must hand it back in train mode
    runner.evaluate(model, tokenizer)
    assert model.training


def test_unknown_tasks_and_metrics_get_readable_messages(tiny_tasks, tmp_path):
    # all local: answered from the include path only (no built-in index)
    assert task_problems(["tiny_think", "tiny_choice"], [str(tiny_tasks)]) == []
    problems = task_problems(["tiny_thnik", "gsm8k"], [str(tiny_tasks)])  # gsm8k: lm-eval's own
    assert len(problems) == 1
    assert "unknown lm-eval task 'tiny_thnik'" in problems[0] and "did you mean 'tiny_think'" in problems[0]
    assert task_problems(["tiny_think"], [str(tmp_path / "missing")])[0].startswith("unknown lm-eval task 'tiny_think'")

    assert metric_problems([EM, "lm_eval/tiny_choice/acc_norm,none", "probe/length_retention"], [str(tiny_tasks)]) == []
    wrong_filter, no_filter = metric_problems(
        ["lm_eval/tiny_think/exact_match,none", "lm_eval/tiny_think/exact_match"], [str(tiny_tasks)]
    )
    assert "does not report 'exact_match,none'" in wrong_filter and EM in wrong_filter
    assert "lacks the filter part" in no_filter and EM in no_filter

    with pytest.raises(EvalError, match="did you mean 'tiny_choice'"):
        LmEvalRunner(config(["tiny_chioce"], tiny_tasks))


def test_builtin_test_split_tasks_are_flagged(tiny_tasks):
    from evals.lmeval import test_split_problems

    problems = test_split_problems(["gsm8k", "mmlu", "hellaswag", "tiny_think"], [str(tiny_tasks)])
    # mmlu: a group whose members score test; hellaswag scores validation; local tasks never count
    assert [p.split(" ")[0] for p in problems] == ["'gsm8k'", "'mmlu'"]
    assert problems[0].endswith("or set evals.lm_eval.allow_test_split: true")


def test_importing_evals_stays_light():
    code = (
        "import sys, evals, evals.lmeval, evals.scores, evals.answers, evals.vllm_backend\n"
        "heavy = [m for m in ('lm_eval', 'vllm', 'ray', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_think_end_is_passed_by_id_when_decoding_would_drop_it():
    """HFLM decodes with skip_special_tokens=True: a special </think> must be cut by id."""
    from tokenizers import AddedToken

    from evals.answers import think_end_token
    from sweep.demo.tokenizer import build_char_tokenizer

    special = build_char_tokenizer()
    special.add_special_tokens({"additional_special_tokens": [AddedToken("</think>", special=True, normalized=False)]})
    (think_id,) = special.encode("</think>", add_special_tokens=False)
    assert special.decode([think_id], skip_special_tokens=True) == ""
    assert think_end_token(special, "</think>") == think_id
    assert think_end_token(special, "answer:") == "answer:"  # several tokens: cut by text
    assert think_end_token(special, "</think>", backend="vllm") == "</think>"  # vLLM keeps special tokens in text
    assert think_end_token(special, None) is None


def test_config_is_built_from_the_spec_section_as_the_sweep_does():
    from sweep.config.schema import LmEvalSpec

    spec = LmEvalSpec(search_tasks=["a"], report_tasks=["b"], include_paths=["/t"], limit=24, answer_regex="x(\\d)")
    dumped = spec.model_dump()
    config = LmEvalConfig(
        tasks=spec.search_tasks, **{k: v for k, v in dumped.items() if k not in ("search_tasks", "report_tasks")}
    )
    assert config.tasks == ["a"] and config.lm_eval_limit == 24 and isinstance(config.lm_eval_limit, int)
    assert {k: v for k, v in config.to_dict().items() if k != "tasks"} == {
        k: v for k, v in dumped.items() if k not in ("search_tasks", "report_tasks")
    }
    assert LmEvalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
