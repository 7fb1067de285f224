"""`python -m sweep eval`: JSON and table output, clear errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from sweep.cli import main
from tests.evals.conftest import ANSWER_REGEX, THINK_DOCS, TRAINED


def test_eval_prints_json_scores(think_model, tiny_tasks, capsys):
    code = main(
        [
            "eval",
            "--model",
            str(think_model),
            "--tasks",
            "tiny_think,tiny_choice",
            "--include-path",
            str(tiny_tasks),
            "--answer-regex",
            ANSWER_REGEX,
            "--limit",
            "10",
            "--json",
        ]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {
        "lm_eval/tiny_think/exact_match,final",
        "lm_eval/tiny_choice/acc,none",
        "lm_eval/tiny_choice/acc_norm,none",
    }
    assert scores["lm_eval/tiny_think/exact_match,final"] == pytest.approx(TRAINED / 10)  # first 10 docs, 8 learnt
    assert all(isinstance(v, float) for v in scores.values())


def test_eval_prints_a_table(think_model, tiny_tasks, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                str(think_model),
                "--tasks",
                "tiny_think",
                "--include-path",
                str(tiny_tasks),
                "--answer-regex",
                ANSWER_REGEX,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "exact_match,final" in out and f"{TRAINED / len(THINK_DOCS):.4f}" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "tiny_thnik"], "unknown lm-eval task 'tiny_thnik' (did you mean 'tiny_think'?)"),
        (["--tasks", "tiny_think", "--limit", "2.5"], "--limit 2.5: give a whole number"),
        (
            ["--tasks", "tiny_think", "--answer-regex", "answer: (\\d+"],
            "answer_regex 'answer: (\\\\d+' is not a valid regular expression",
        ),
    ],
)
def test_eval_bad_input_exits_2_with_one_message(think_model, tiny_tasks, capsys, args, message):
    assert main(["eval", "--model", str(think_model), "--include-path", str(tiny_tasks), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_missing_model_or_task_folder_exits_2(tmp_path, tiny_tasks, think_model, capsys):
    assert (
        main(["eval", "--model", str(tmp_path / "nope"), "--tasks", "tiny_think", "--include-path", str(tiny_tasks)])
        == 2
    )
    assert "not an HF checkpoint folder" in capsys.readouterr().err
    assert (
        main(["eval", "--model", str(think_model), "--tasks", "tiny_think", "--include-path", str(tmp_path / "tasks")])
        == 2
    )
    assert f"--include-path {tmp_path / 'tasks'}: not a folder" in capsys.readouterr().err
