"""`demo:<member>` names a source checkpoint in every command that takes one (merge, eval,
probe), as it does in specs; a wrong name is one clear message, before any demo build."""

from __future__ import annotations

import json

import pytest
import torch

from sweep.cli import main
from tests.merge.helpers import merge_argv


@pytest.fixture
def no_build(monkeypatch):
    """Any attempt to build or open the demo family fails the test: checks must come first."""
    import sweep.demo.build

    def refuse(*args, **kwargs):
        raise AssertionError("the demo family was resolved before the input was checked")

    monkeypatch.setattr(sweep.demo.build, "active_family", refuse)


def demo_merge_argv(*, instruct="demo:instruct", reasoning="demo:reasoning", alpha=0.5, beta=0.5, out="OUT"):
    """`sweep merge` on demo members by name (`pretrained` is always demo:pretrained)."""
    trio = {"pretrained": "demo:pretrained", "instruct": instruct, "reasoning": reasoning}
    return merge_argv(trio, "--alpha", str(alpha), "--beta", str(beta), "--out", str(out))


def test_merge_takes_demo_members_by_name(demo_family, tmp_path, capsys):
    from tests.merge.helpers import closed_form, load_state

    out = tmp_path / "actor"
    code = main(demo_merge_argv(alpha=0.3, beta=0.8, out=out))
    assert code == 0, capsys.readouterr().err
    assert "alpha=0.3 beta=0.8" in capsys.readouterr().out
    record = json.loads((out / "merge_recipe.json").read_text())
    trio = {role: getattr(demo_family, role) for role in ("pretrained", "instruct", "reasoning")}
    assert record["sources"] == {role: str(path) for role, path in trio.items() if role != "pretrained"} | {
        "pretrained": str(trio["pretrained"])
    }
    expected = closed_form(trio, 0.3, 0.8, "model.norm.weight")
    torch.testing.assert_close(load_state(out)["model.norm.weight"].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            demo_merge_argv(instruct="demo:tasks"),
            "--instruct: 'demo:tasks' is not a demo checkpoint; use one of demo:pretrained, demo:instruct, demo:reasoning",
        ),
        (demo_merge_argv(reasoning="demo:reasonin"), "--reasoning: 'demo:reasonin' is not a demo checkpoint"),
        (demo_merge_argv(alpha=1.5), "alpha = 1.5 is outside [0, 1]"),
        (
            ["eval", "--model", "demo:probe_prompts", "--tasks", "x"],
            "--model: 'demo:probe_prompts' is not a demo checkpoint",
        ),
        (
            ["eval", "--model", "OUT", "--tasks", "x", "--include-path", "demo:reasoning"],
            "--include-path: 'demo:reasoning' is not a demo member for this; use one of demo:tasks",
        ),
        (
            ["probe", "--model", "demo:instruc", "--prompts", "PROMPTS"],
            "--model: 'demo:instruc' is not a demo checkpoint",
        ),
        (
            ["probe", "--model", "OUT", "--prompts", "PROMPTS", "--reference", "demo:tasks"],
            "--reference: 'demo:tasks' is not a demo checkpoint",
        ),
    ],
)
def test_a_bad_demo_name_or_recipe_fails_before_any_build(no_build, tmp_path, capsys, argv, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    argv = [str(tmp_path / "out") if a == "OUT" else str(prompts) if a == "PROMPTS" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_eval_and_probe_take_demo_members(demo_family, capsys):
    code = main(
        [
            "eval",
            "--model",
            "demo:reasoning",
            "--tasks",
            "toy_reasoning",
            "--include-path",
            "demo:tasks",  # as specs spell it
            "--limit",
            "2",
            "--json",
        ]
    )
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores and all(k.startswith("lm_eval/toy_reasoning/") for k in scores)
    code = main(
        [
            "probe",
            "--model",
            "demo:instruct",
            "--prompts",
            "demo:probe_prompts",
            "--steps",
            "2",
            "--prompts-per-step",
            "1",
            "--group-size",
            "2",
            "--max-new-tokens",
            "8",
            "--reference",
            "demo:reasoning",  # a KL reference by name too
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["reference"] == str(demo_family.reasoning) and data["curves"]["actor/kl"][0] > 0
