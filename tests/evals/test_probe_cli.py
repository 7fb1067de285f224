"""`python -m sweep probe`: tables, JSON, and one clear message with exit 2 for bad input."""

from __future__ import annotations

import json
import re

import pytest

from sweep.cli import main

FAST = ["--steps", "3", "--max-new-tokens", "8", "--group-size", "2", "--prompts-per-step", "2"]


def test_prints_curves_table_and_metrics(tiny_dir, prompts_file, capsys):
    code = main(["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--reward-rule", "format", *FAST])
    out, err = capsys.readouterr()
    assert code == 0
    # a line a step on stderr, with the time it has left at its pace so far
    steps = [line for line in err.splitlines() if line.startswith("probe: ")]
    assert [re.fullmatch(r"probe: \d+ s \(step (\d)/3, about \d+ s left\)", line)[1] for line in steps] == [
        "1",
        "2",
        "3",
    ]
    lines = out.splitlines()
    assert lines[0].split() == ["step", "len", "min", "max", "clip", "score", "std", "kl", "entropy", "grad", "step_s"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
    assert "probe/length_retention" in out and "probe/reward_recovery_step" in out
    assert "3 steps" in out


def test_json_output_is_one_object(tiny_dir, prompts_file, capsys):
    code = main(["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--json", "--seed", "3", *FAST])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(data["curves"]["response_length/mean"]) == 3
    assert set(data["probe_metrics"]) >= {"probe/length_retention", "probe/reward_dip", "probe/stopped_early"}
    assert data["config"]["seed"] == 3 and data["config"]["reward"]["rule"] == "exact_match"


def test_settings_come_from_the_spec(tiny_dir, prompts_file, tmp_path, capsys):
    spec = tmp_path / "space.yaml"
    spec.write_text(
        f"name: t\nmodels: {{pretrained: {tiny_dir}, instruct: {tiny_dir}, reasoning: {tiny_dir}}}\n"
        f"evals:\n  probe: {{prompts: {prompts_file.name}, steps: 4, max_new_tokens: 8, reward: {{rule: format}}}}\n"
        "objectives: [{metric: probe/length_retention, direction: maximize}]\n"
    )
    prompts_file_copy = tmp_path / prompts_file.name  # relative to the spec's folder
    prompts_file_copy.write_text(prompts_file.read_text())
    assert main(["probe", "--model", str(tiny_dir), "--spec", str(spec), "--json", "--steps", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["steps"] == 2  # the flag overrides the spec
    assert data["config"]["max_new_tokens"] == 8 and data["config"]["reward"]["rule"] == "format"
    assert data["config"]["prompts"] == str(prompts_file_copy)
    assert data["config"]["reference"] is None and data["curves"]["actor/kl"][0] == 0


def test_reference_flag_sets_the_kl_reference(tiny_dir, prompts_file, tmp_path, capsys):
    """--reference DIR: the KL term is against DIR's model from step 0 (not 0 there);
    `--reference candidate` sets the model itself back over a spec's reference."""
    from tests.tiny import make_tiny_checkpoint

    sft = make_tiny_checkpoint(tmp_path / "sft", seed=7, base=tiny_dir, noise=0.2)
    base = ["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--json", *FAST]
    assert main([*base, "--reference", str(sft)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["reference"] == str(sft) and data["curves"]["actor/kl"][0] > 0.05
    assert main([*base, "--reference", "candidate"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["reference"] is None and data["curves"]["actor/kl"][0] == 0


def test_update_flags_override_the_spec(tiny_dir, prompts_file, capsys):
    """--loss-agg and --mini-batches reach the probe's config (their arithmetic is
    tests/evals/test_logprobs.py's); a value not in the list exits 2 naming the choices."""
    base = ["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--json", *FAST]
    assert main([*base, "--loss-agg", "seq-mean-token-mean", "--mini-batches", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["loss_agg"] == "seq-mean-token-mean" and data["config"]["mini_batches"] == 2
    assert len(data["curves"]["actor/pg_clipfrac"]) == len(data["curves"]["actor/ppo_kl"]) == 3
    with pytest.raises(SystemExit) as info:
        main([*base, "--loss-agg", "sum"])
    assert info.value.code == 2 and "seq-mean-token-sum-norm" in capsys.readouterr().err


def test_a_plugin_module_names_the_rule_and_the_backend(tiny_dir, prompts_file, tmp_path, monkeypatch, capsys):
    """`--plugin MODULE` imports a user's module first, so the reward rule and the probe backend
    it registers are usable by name (the registries are the one list of names, as for a
    spec's plugins:); the built-in backend runs the RL under the plug-in rule."""
    from evals.plugins import PROBE_BACKENDS, REWARD_RULES

    (tmp_path / "cli_probe_plugin.py").write_text(
        "from evals.probe import register_backend\n"
        "from evals.rewards import register_rule\n"
        "from tests.evals.test_plugins import _EchoBackend\n"
        "register_backend('cli_echo', _EchoBackend)\n"
        "@register_rule('cli_quarter')\n"
        "def quarter(*, prompts, completions, answers):\n"
        "    return [0.25 for _ in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--json", *FAST]
    try:
        assert main([*base, "--plugin", "cli_probe_plugin", "--reward-rule", "cli_quarter"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["config"]["reward"]["rule"] == "cli_quarter" and data["config"]["backend"] == "builtin"
        assert data["curves"]["critic/score/mean"] == [0.25, 0.25, 0.25]
        assert (
            main([*base, "--plugin", "cli_probe_plugin", "--backend", "cli_echo", "--reward-rule", "cli_quarter"]) == 0
        )
        data = json.loads(capsys.readouterr().out)
        assert data["backend"] == "cli_echo" and data["curves"]["response_length/mean"] == [10.0, 10.0, 10.0]
    finally:
        PROBE_BACKENDS.remove("cli_echo")
        REWARD_RULES.remove("cli_quarter")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "{missing}"], "prompts file {missing}: not found"),
        (["--prompts", "{prompts}", "--steps", "1"], "steps must be a whole number >= 2"),
        ([], "give --prompts FILE or --spec SPEC"),
        (
            ["--prompts", "{prompts}", "--checkpoint", "{missing}", "--checkpoint-every", "-5"],
            "--checkpoint-every must be 0 (every step) or more seconds, got -5",
        ),
        (["--prompts", "{prompts}", "--model", "{missing}"], "--model {missing}: no such checkpoint folder"),
        (
            ["--prompts", "{prompts}", "--reward-rule", "nope"],
            "--reward-rule: unknown reward rule 'nope'; known: concise, exact_match, exact_match+format, format",
        ),
        (
            ["--prompts", "{prompts}", "--plugin", "no_such_plugin_module", "--backend", "nope"],
            "cannot import plug-in module 'no_such_plugin_module': ModuleNotFoundError: No module named "
            "'no_such_plugin_module'; --backend: unknown probe backend 'nope'; known: builtin",
        ),
        (
            ["--prompts", "{prompts}", "--reference", "{missing}"],
            "--reference {missing}: no such checkpoint folder (config.json missing)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_message(tiny_dir, prompts_file, tmp_path, capsys, args, message):
    missing = tmp_path / "missing"
    fill = {"missing": missing, "prompts": prompts_file}
    argv = ["probe", "--model", str(tiny_dir)] + [a.format(**fill) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_probe_stopped_with_ctrl_c_goes_on_from_its_checkpoint(tiny_dir, prompts_file, tmp_path, capsys):
    """`--checkpoint FILE`: a run stopped part-way (SIGINT, as Ctrl-C sends it) and run again
    goes on from its last checkpoint and prints what the run never stopped prints."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    args = ["probe", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--json", "--seed", "2", *FAST]
    args += ["--steps", "40", "--learning-rate", "1e-2"]
    assert main(args) == 0
    whole = json.loads(capsys.readouterr().out)

    checkpoint = tmp_path / "probe.pt"
    resumable = [*args, "--checkpoint", str(checkpoint), "--checkpoint-every", "0"]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", *resumable], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # stop it once it has taken 3 steps
        if "(step 3/40" in line:
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and checkpoint.exists()

    assert main(resumable) == 0
    out, err = capsys.readouterr()
    went_on = re.search(rf"probe: went on from {re.escape(str(checkpoint))} after step (\d+)", err)
    assert went_on and 3 <= int(went_on[1]) < 40, err
    steps = [int(m[1]) for m in re.finditer(r"\(step (\d+)/40", err)]
    assert steps == list(range(int(went_on[1]) + 1, 41))  # only the steps after the checkpoint ran
    resumed = json.loads(out)
    untimed = [key for key in whole["curves"] if key.startswith("timing/")]
    for data in (whole, resumed):
        for key in untimed:
            del data["curves"][key]
    assert resumed["curves"] == whole["curves"] and resumed["probe_metrics"] == whole["probe_metrics"]
    assert not checkpoint.exists()  # the run is whole: a run with the same file starts anew
