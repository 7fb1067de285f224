"""Resuming a long probe run: its state saved every so often, taken up again at the next start.

A 7B long run (`sweep calibrate`, a `sweep probe --steps 192`) takes hours; a lost node
or a stopped driver should not throw them away. With `Checkpointing(path)` the built-in
backend writes, after a step and at most every `every_s` seconds, everything the rest of
the run depends on:

- the trainable weights (the LoRA adapters, or every weight of a full update: fp32 masters
  where the live weight is bf16/fp16, the live weight itself where it is fp32) and Adam's
  moments;
- the sampler's torch.Generator state and the vLLM call count (the engine's seed);
- what was measured so far: the baseline, each step's samples, the curves.

At the next start with the same `path`, a checkpoint of the same run (the same probe
config and `tag`: the caller's name for the candidate) is loaded after set-up and the run
goes on at the step after it: the baseline is not measured again. On CPU the resumed run
is bit for bit the run that was never stopped (tests/evals/test_resume.py); on CUDA,
kernels that are not deterministic make it a run of the same distribution.

Size: 12 bytes per trainable parameter (fp32 weight or master, two moments): with
`update: lora` rank 16 on a 7B model about 0.5 GB; `update: full` would be 90 GB.
The write goes to a temporary file renamed over `path` (a crash mid-write leaves the
previous checkpoint; the next save removes the half-written file), with a small
`<path>.json` beside it saying how far the run got.
The backend deletes the checkpoint when the run ends (it diverged, stopped early or ran
all its steps); a run stopped by an exception (Ctrl-C, a timeout) keeps it.
A checkpoint of another run, or one that cannot be read, is set aside with a warning and
the run starts from step 0; a write that fails warns once and the run goes on without.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = 1  # bump when the saved state changes shape: an older checkpoint is then ignored


@dataclass
class Checkpointing:
    """Where a run's checkpoint goes and how often. `tag` names what the run starts from
    (the probe config is matched too): a checkpoint with another tag is not resumed."""

    path: Path
    every_s: float = 600.0
    tag: str = ""
    last_save: float = field(default_factory=time.monotonic)  # a first save every_s after the start
    broken: bool = False  # a write failed: warned once, no more tries
    resumed_at: int | None = None  # set when the run went on from this checkpoint: the steps it had done

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def info_path(self) -> Path:
        return info_path(self.path)

    def due(self) -> bool:
        return not self.broken and time.monotonic() - self.last_save >= self.every_s


def checkpointing(path: Path, every_s: float | None, tag: str) -> Checkpointing | None:
    """A Checkpointing at `path` saved every `every_s`, or None where `every_s` is None
    (the spec's `checkpoint_every_s: null`: the run keeps no checkpoint)."""
    return None if every_s is None else Checkpointing(path, every_s=every_s, tag=tag)


def info_path(path: Path) -> Path:
    """The small JSON beside a checkpoint: {"done": steps done, "planned": steps, "tag": ...}."""
    return Path(path).with_name(Path(path).name + ".json")


def read_info(path: Path) -> dict[str, Any] | None:
    """How far the checkpoint at `path` got, without loading it; None when there is none."""
    try:
        info = json.loads(info_path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and Path(path).exists() else None


def remove(path: Path) -> None:
    """Delete a checkpoint and its info (a finished run's), where there is one."""
    for each in (Path(path), info_path(path)):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # none there: nothing to delete
            each.unlink()


def identity(config: Any, tag: str) -> str:
    return json.dumps({"config": config.to_dict(), "tag": tag}, sort_keys=True)


def save(
    checkpointing: Checkpointing, *, config: Any, optimizer: Any, generator: Any, calls: int, progress: Any
) -> None:
    """Write the run's state after step `progress.step` (see the module doc); never raises."""
    state = {
        "format": FORMAT,
        "identity": identity(config, checkpointing.tag),
        "params": [
            None if master is not None else param.detach().to("cpu", copy=True)
            for param, master in zip(optimizer.params, optimizer.masters, strict=True)
        ],
        "masters": [None if master is None else master.detach().to("cpu", copy=True) for master in optimizer.masters],
        "adam": optimizer.adam.state_dict(),
        "generator": generator.get_state().cpu(),
        "calls": calls,
        "progress": {
            "done": progress.step + 1,
            "baseline": [_samples_out(s) for s in progress.baseline],
            "steps": [[_samples_out(s) for s in step] for step in progress.steps],
            "curves": progress.curves.to_dict(),
            "baseline_s": progress.baseline_s,
        },
    }
    path = checkpointing.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, path)
        info = {"done": progress.step + 1, "planned": config.steps, "tag": checkpointing.tag, "saved": time.time()}
        partial_info = path.with_name(f".{path.name}.{os.getpid()}.json.partial")
        partial_info.write_text(json.dumps(info))
        os.replace(partial_info, checkpointing.info_path)
        for stale in path.parent.glob(f".{path.name}.*.partial"):  # a write a killed process left half done
            stale.unlink(missing_ok=True)
    except OSError as exc:
        checkpointing.broken = True
        print(f"probe: could not write the checkpoint {path} ({exc}); the run goes on without", file=sys.stderr)
    checkpointing.last_save = time.monotonic()


def load(checkpointing: Checkpointing, *, config: Any) -> dict[str, Any] | None:
    """The saved state of this run, or None (no checkpoint, another run's, unreadable)."""
    path = checkpointing.path
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = (
            isinstance(state, dict)
            and state.get("format") == FORMAT
            and state.get("identity") == identity(config, checkpointing.tag)
        )
        why = "it is of another run (another candidate, seed or probe setting)"
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: start over, say why
        ok, why = False, f"it cannot be read: {type(exc).__name__}: {exc}"
    if not ok:
        print(f"probe: not resuming from {path}: {why}; the run starts from step 0", file=sys.stderr)
        return None
    return state


def restore(state: dict[str, Any], *, optimizer: Any, generator: Any, progress: Any) -> int:
    """Put a loaded state back (weights, moments, sampler, what was measured); returns the
    vLLM call count. `progress` gets the baseline, steps and curves."""
    from evals.probe.records import ProbeCurves

    with torch.no_grad():
        for param, value, master, saved in zip(
            optimizer.params, state["params"], optimizer.masters, state["masters"], strict=True
        ):
            if master is not None:
                master.copy_(saved)
                param.copy_(saved)  # the live weight is its master rounded, as after a step
            else:
                param.copy_(value)
    optimizer.adam.load_state_dict(state["adam"])
    generator.set_state(state["generator"])
    saved = state["progress"]
    progress.baseline = [_samples_in(s) for s in saved["baseline"]]
    progress.steps = [tuple(_samples_in(s) for s in step) for step in saved["steps"]]
    progress.curves = ProbeCurves.from_dict(saved["curves"])
    progress.baseline_s = float(saved["baseline_s"])
    progress.step = int(saved["done"]) - 1
    return int(state["calls"])


def _samples_out(samples: Any) -> list[Any]:
    return [samples.prompt, list(samples.lengths), list(samples.scores), list(samples.entropies)]


def _samples_in(row: Sequence[Any]) -> Any:
    from evals.probe.records import PromptSamples

    prompt, lengths, scores, entropies = row
    return PromptSamples(int(prompt), tuple(lengths), tuple(scores), tuple(entropies))
