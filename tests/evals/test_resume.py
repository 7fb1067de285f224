"""A probe run stopped part-way and started again with its checkpoint is the run that was
never stopped, bit for bit on CPU: the weights, Adam's moments, the sampler, the baseline
and the steps so far all come back. A checkpoint of another run, or a broken one, is not
taken up; a write that fails does not stop the run."""

from __future__ import annotations

import pytest

from evals.probe import run_probe
from evals.probe.resume import Checkpointing, read_info
from tests.evals.test_probe import PROMPTS, config, digit_share, load, without_timing

STEPS, STOP_AT = 8, 5


class Stopped(Exception):
    """Stands for what ends a run part-way: a lost node, a killed driver."""


def settings(**changes):
    base = dict(
        steps=STEPS,
        baseline_samples=2,
        prompt_pool=4,
        prompts_per_step=2,
        group_size=2,
        noise_samples=8,
        window=2,
        learning_rate=1e-2,
        skip_flat_batches=False,
    )
    return config(**(base | changes))


def run(tiny_dir, cfg, *, dtype="float32", **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = load(tiny_dir)
    if dtype != "float32":
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=getattr(torch, dtype))
    return run_probe(model, tokenizer, config=cfg, prompts=PROMPTS, reward=digit_share, **kwargs)


def stop_after(step):
    def on_step(done, planned):
        if done == step:
            raise Stopped(f"stopped after step {done} of {planned}")

    return on_step


def same_run(a, b):
    assert without_timing(a.curves) == without_timing(b.curves)
    assert a.baseline == b.baseline and a.steps == b.steps
    assert a.metrics == b.metrics


@pytest.mark.parametrize(
    "changes, dtype",
    [({}, "float32"), ({}, "bfloat16"), ({"update": "lora", "lora_rank": 4, "learning_rate": 3e-2}, "float32")],
    ids=["full-fp32", "full-bf16-masters", "lora"],
)
def test_a_stopped_run_resumed_from_its_checkpoint_is_the_run_never_stopped(tiny_dir, tmp_path, changes, dtype):
    cfg = settings(**changes)
    whole = run(tiny_dir, cfg, dtype=dtype)
    assert whole.curves.kl[-1] > 1e-4  # it learned: a resume that lost the weights would show
    path = tmp_path / "run.pt"
    (tmp_path / ".run.pt.999.partial").write_bytes(b"half a checkpoint, left by a process killed mid-write")
    with pytest.raises(Stopped):
        run(tiny_dir, cfg, dtype=dtype, checkpoint=Checkpointing(path, every_s=0), on_step=stop_after(STOP_AT))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "run.pt.json"]  # the half-written one is gone
    info = read_info(path)
    assert info is not None and info["done"] == STOP_AT and info["planned"] == STEPS
    # the size docs/probe.md quotes: 12 bytes per trainable parameter (fp32 weight or master,
    # two moments), plus what was measured so far
    model, _ = load(tiny_dir)
    if changes.get("update") == "lora":  # peft's all-linear: every linear layer but the output head
        linears = [m for name, m in model.named_modules() if type(m).__name__ == "Linear" and name != "lm_head"]
        trainable = sum(4 * (m.in_features + m.out_features) for m in linears)
    else:
        trainable = sum(p.numel() for p in model.parameters())
    assert 12 * trainable < path.stat().st_size < 12 * trainable * 1.1 + 100_000, (path.stat().st_size, trainable)
    told = []
    checkpoint = Checkpointing(path, every_s=0)
    resumed = run(tiny_dir, cfg, dtype=dtype, checkpoint=checkpoint, on_step=lambda d, p: told.append(d))
    assert checkpoint.resumed_at == STOP_AT and told == list(range(STOP_AT + 1, STEPS + 1))  # only the steps left
    assert not path.exists() and read_info(path) is None  # the run ended: its checkpoint is gone
    assert resumed.curves.steps == STEPS
    same_run(resumed, whole)


def test_a_checkpoint_of_another_run_or_a_broken_one_is_not_taken_up(tiny_dir, tmp_path, capfd):
    cfg = settings()
    whole = run(tiny_dir, cfg)
    path = tmp_path / "run.pt"
    with pytest.raises(Stopped):
        run(tiny_dir, cfg, checkpoint=Checkpointing(path, every_s=0, tag="trial 3"), on_step=stop_after(3))
    capfd.readouterr()
    told = []
    checkpoint = Checkpointing(path, tag="trial 4")
    other = run(tiny_dir, cfg, checkpoint=checkpoint, on_step=lambda d, p: told.append(d))
    assert "not resuming from" in capfd.readouterr().err and told[0] == 1 and checkpoint.resumed_at is None
    same_run(other, whole)

    path.write_bytes(b"cut short by a crash")
    broken = run(tiny_dir, cfg, checkpoint=Checkpointing(path, tag="trial 3"))
    err = capfd.readouterr().err
    assert "not resuming from" in err and "cannot be read" in err
    same_run(broken, whole)


def test_a_checkpoint_that_cannot_be_written_warns_once_and_the_run_goes_on(tiny_dir, tmp_path, capfd):
    cfg = settings()
    whole = run(tiny_dir, cfg)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint's folder should be")
    result = run(tiny_dir, cfg, checkpoint=Checkpointing(blocker / "run.pt", every_s=0))
    err = capfd.readouterr().err
    assert err.count("could not write the checkpoint") == 1
    same_run(result, whole)


def test_the_checkpoint_is_saved_no_more_often_than_asked(tiny_dir, tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(Stopped):
        run(tiny_dir, settings(), checkpoint=Checkpointing(path, every_s=3600), on_step=stop_after(STOP_AT))
    assert not path.exists() and read_info(path) is None
    assert not path.with_name(path.name + ".json").exists()
