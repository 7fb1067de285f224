"""`python -m sweep merge`: writes a loadable checkpoint, exits 2 with one clear message on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from sweep.cli import main
from tests.merge.helpers import closed_form, load_state, merge_argv
from tests.tiny import make_tiny_checkpoint


def args(trio, out, *extra):
    return merge_argv(trio, "--out", str(out), *extra)


def test_merge_writes_a_checkpoint_and_a_summary(tiny_trio, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    code = main(args(tiny_trio, tmp_path / "m", "--alpha", "0.25", "--beta", "0.5", "--dtype", "bfloat16"))
    assert code == 0
    assert "alpha=0.25 beta=0.5" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.dtype == torch.bfloat16
    expected = closed_form(tiny_trio, 0.25, 0.5, "model.norm.weight")
    torch.testing.assert_close(model.model.norm.weight.double(), expected, rtol=0, atol=2**-8)


def test_method_parameters_reach_the_merge(tiny_trio, tmp_path):
    code = main(
        args(
            tiny_trio,
            tmp_path / "m",
            "--alpha",
            "0.5",
            "--beta",
            "1",
            "--method-stage1",
            "dare",
            "--stage1-param",
            "density=0.5",
            "--stage1-param",
            "variant=ties",
            "--method-stage2",
            "slerp",
            "--quiet",
        )
    )
    assert code == 0
    record = json.loads((tmp_path / "m" / "merge_recipe.json").read_text())
    assert record["plan"]["stage1"] == {"method": "dare", "params": {"density": 0.5, "variant": "ties", "seed": 0}}
    assert record["plan"]["stage2"]["method"] == "slerp"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such checkpoint folder"),
        ("mismatch", "tensor shapes differ between pretrained and reasoning"),
        ("ratio", "alpha = 1.5 is outside [0, 1]"),
        ("busy", "exists and is not empty"),
        ("param", "'densty' is not a parameter of merge method ties"),
        ("param_format", "write KEY=VALUE"),
        ("kernel_env", "SWEEP_MERGE_KERNEL must be one of auto, native, compiled, eager, got 'fastest'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(tiny_trio, tmp_path, capsys, monkeypatch, case, expected):
    trio = dict(tiny_trio)
    extra = ["--alpha", "0.5", "--beta", "0.5"]
    out = tmp_path / "m"
    if case == "missing":
        trio["instruct"] = tmp_path / "no-such-model"
    elif case == "mismatch":
        trio["reasoning"] = make_tiny_checkpoint(tmp_path / "wide", hidden=64)
    elif case == "ratio":
        extra = ["--alpha", "1.5", "--beta", "0.5"]
    elif case == "busy":
        out.mkdir()
        (out / "old.txt").write_text("x")
    elif case == "param":
        extra += ["--method-stage1", "ties", "--stage1-param", "densty=0.5"]
    elif case == "param_format":
        extra += ["--method-stage1", "ties", "--stage1-param", "0.5"]
    elif case == "kernel_env":
        from merge import kernels

        monkeypatch.setattr(kernels, "_mode", "fastest")  # as SWEEP_MERGE_KERNEL=fastest sets it at import
    capsys.readouterr()  # drop what making the inputs printed
    code = main(args(trio, out, *extra))
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and err.startswith("sweep merge: error:")
    assert "Traceback" not in err
    if case != "busy":
        assert not out.exists()  # refused before anything was written


def test_extrapolation_and_force_are_opt_in(tiny_trio, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(args(tiny_trio, out, "--alpha", "1.5", "--beta", "1", "--allow-extrapolation", "--quiet")) == 0
    assert main(args(tiny_trio, out, "--alpha", "0", "--beta", "1", "--quiet")) == 2
    assert main(args(tiny_trio, out, "--alpha", "0", "--beta", "1", "--force", "--quiet")) == 0
    assert torch.equal(load_state(out)["model.norm.weight"], load_state(tiny_trio["reasoning"])["model.norm.weight"])


def test_a_plugin_module_names_the_merge_method(tiny_trio, tmp_path, monkeypatch, capsys):
    """`--plugin MODULE` imports a user's module first, so the merge method it registers is
    usable by name: here one that keeps stage 1's first input (the instruct model), whatever
    alpha says, so the result is beta*I + (1-beta)*P and not the linear merge at alpha."""
    from merge.plugins import METHODS

    (tmp_path / "cli_merge_plugin.py").write_text(
        "import torch\n"
        "from merge.plugins import METHODS\n"
        "@METHODS.register('cli_first')\n"
        "def first(tensors, weights, *, base=None):\n"
        "    return tensors[0].to(torch.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = ["--alpha", "0.25", "--beta", "0.5", "--method-stage1", "cli_first"]
    try:
        assert main(args(tiny_trio, tmp_path / "m", *extra, "--plugin", "cli_merge_plugin")) == 0
        norm = load_state(tmp_path / "m")["model.norm.weight"].double()
        torch.testing.assert_close(norm, closed_form(tiny_trio, 1.0, 0.5, "model.norm.weight"), rtol=0, atol=1e-6)
        assert not torch.allclose(norm, closed_form(tiny_trio, 0.25, 0.5, "model.norm.weight"))
    finally:
        METHODS.remove("cli_first")
    capsys.readouterr()
    assert main(args(tiny_trio, tmp_path / "n", *extra, "--plugin", "no_such_merge_plugin")) == 2
    err = capsys.readouterr().err
    assert "cannot import plug-in module 'no_such_merge_plugin': ModuleNotFoundError" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "n").exists()
