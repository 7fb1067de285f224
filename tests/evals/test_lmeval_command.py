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
        (["--tasks", "tiny_think", "--backend", "vlm"], "--backend: unknown lm-eval backend 'vlm'; known: hf, vllm"),
        (
            ["--tasks", "tiny_think", "--plugin", "no_such_module_xyz"],
            "cannot import plug-in module 'no_such_module_xyz'",
        ),
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


def test_eval_uses_an_lm_eval_backend_a_plugin_module_registers(think_model, tiny_tasks, tmp_path, monkeypatch, capsys):
    """A registered backend is usable from the one-off command, not only from a spec."""
    (tmp_path / "my_eval_backend.py").write_text(
        "from pathlib import Path\n"
        "from evals.lm_backends import HfBackend\n"
        "from evals.plugins import LM_BACKENDS\n"
        "MARK = Path(__file__).with_name('used')\n\n"
        "@LM_BACKENDS.register('marked_hf')\n"
        "class MarkedHf(HfBackend):\n"
        "    def lm_for(self, model, tokenizer):\n"
        "        MARK.write_text('yes')\n"
        "        return super().lm_for(model, tokenizer)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["eval", "--model", str(think_model), "--tasks", "tiny_think", "--include-path", str(tiny_tasks)]
    args += ["--answer-regex", ANSWER_REGEX, "--limit", "10", "--json", "--backend", "marked_hf"]
    try:
        assert main([*args, "--plugin", "my_eval_backend"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["lm_eval/tiny_think/exact_match,final"] == pytest.approx(TRAINED / 10)
        assert (tmp_path / "used").read_text() == "yes"
    finally:
        from evals.plugins import LM_BACKENDS

        LM_BACKENDS.remove("marked_hf")
