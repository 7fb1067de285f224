"""Done-when check: the adapter's numbers equal the lm_eval CLI's for the same checkpoint.

The CLI (~27 s) runs once per test session on the checkpoint saved to disk; the adapter
scores the same weights loaded into a live model object that first held other weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals.answers import think_end_token
from evals.lmeval import LmEvalConfig, LmEvalRunner
from tests.evals.conftest import ANSWER_REGEX, load

NUM_FEWSHOT = 1  # tiny_think fixes num_fewshot: 0 in its YAML and keeps it; tiny_choice gets 1
BATCH_SIZE = 4


def run_lm_eval_cli(
    *,
    model_dir: Path,
    tasks: list[str],
    include_path: Path,
    out: Path,
    extra_model_args: str = "",
    extra: list[str] = (),
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Run `python -m lm_eval run` offline on CPU; return its results JSON."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32{extra_model_args}",
        "--tasks",
        ",".join(tasks),
        "--include_path",
        str(include_path),
        "--batch_size",
        str(batch_size),
        "--device",
        "cpu",
        "--output_path",
        str(out),
        *extra,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = out.rglob("results_*.json")
    return json.loads(result_file.read_text())


@pytest.fixture(scope="session")
def cli_results(think_model, tiny_tasks, tmp_path_factory) -> dict:
    _, tokenizer = load(think_model)
    think_end = think_end_token(tokenizer, "</think>")  # what the adapter gives HFLM (id or text)
    return run_lm_eval_cli(
        model_dir=think_model,
        tasks=["tiny_think_regex", "tiny_choice"],  # tiny_think_regex: tiny_think + the documented regex step
        include_path=tiny_tasks,
        out=tmp_path_factory.mktemp("lm_eval_cli"),
        extra_model_args=f",think_end_token={think_end}",
        extra=["--num_fewshot", str(NUM_FEWSHOT), "--gen_kwargs", "do_sample=False,temperature=0"],
    )


def test_adapter_equals_lm_eval_cli_on_the_same_checkpoint(cli_results, think_model, random_model, tiny_tasks):
    import torch

    model, tokenizer = load(random_model)
    runner = LmEvalRunner(
        LmEvalConfig(
            tasks=["tiny_think", "tiny_choice"],
            include_paths=[str(tiny_tasks)],
            batch_size=BATCH_SIZE,
            num_fewshot=NUM_FEWSHOT,
            answer_regex=ANSWER_REGEX,
        )
    )
    runner.evaluate(model, tokenizer)  # a previous candidate in the same object
    trained, _ = load(think_model)
    with torch.no_grad():
        model.load_state_dict(trained.state_dict())
    ours = {s.name: s for s in runner.evaluate(model, tokenizer)}

    cli = cli_results["results"]
    expected = {
        "lm_eval/tiny_think/exact_match,final": (
            cli["tiny_think_regex"]["exact_match,final"],
            cli["tiny_think_regex"]["exact_match_stderr,final"],
        ),
        "lm_eval/tiny_choice/acc,none": (cli["tiny_choice"]["acc,none"], cli["tiny_choice"]["acc_stderr,none"]),
        "lm_eval/tiny_choice/acc_norm,none": (
            cli["tiny_choice"]["acc_norm,none"],
            cli["tiny_choice"]["acc_norm_stderr,none"],
        ),
    }
    assert set(ours) == set(expected)
    for name, (value, stderr) in expected.items():
        assert ours[name].value == value, name
        assert ours[name].stderr == pytest.approx(stderr, abs=1e-12), name
    assert 0 < ours["lm_eval/tiny_think/exact_match,final"].value < 1  # real numbers, not all-zero
    assert cli_results["n-shot"]["tiny_choice"] == NUM_FEWSHOT and cli_results["n-shot"]["tiny_think_regex"] == 0
