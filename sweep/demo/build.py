"""Build (or reuse) the demo family: `ensure_family()` returns paths to its five members.

The family lives in one folder, by default `cache_root()/<key>` where the key names the
seed and a hash of the recipe, so a recipe change builds a new family beside the old one:

    <root>/family.json                   what was built, how, and how long it took
    <root>/{pretrained,instruct,reasoning}/   HF checkpoints (config, safetensors, tokenizer)
    <root>/tasks/                        lm-eval include path: 4 task YAMLs + data/*.jsonl
    <root>/probe_prompts.jsonl           {"prompt", "answer"} per line, for the RLHF probe

A build happens in a temporary sibling folder renamed into place at the end, under an
exclusive file lock (`<root>.lock`): a second process waits, then reuses the result.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import SweepError

# Bump when data generation or training code changes what a recipe produces (2: examples
# packed with attention kept inside each example; 3: traces with 0-3 verification passes;
# 4: an ancestor that mostly thinks without re-verifying, a reasoner that re-verifies once).
RECIPE_VERSION = 4
MANIFEST = "family.json"
CHECKPOINTS = ("pretrained", "instruct", "reasoning")


@dataclass(frozen=True)
class DemoFamily:
    """Absolute paths to the family's members."""

    pretrained: Path
    instruct: Path
    reasoning: Path
    tasks: Path  # lm-eval include path
    probe_prompts: Path  # jsonl

    @property
    def root(self) -> Path:
        return self.pretrained.parent

    @classmethod
    def at(cls, root: Path) -> DemoFamily:
        from sweep.demo.tasks import PROBE_FILE

        return cls(root / "pretrained", root / "instruct", root / "reasoning", root / "tasks", root / PROBE_FILE)

    def manifest(self) -> dict:
        """The build record in family.json (key, seed, recipe, timings)."""
        return json.loads((self.root / MANIFEST).read_text())


def family_key(*, seed: int, recipe=None) -> str:
    """`v<version>-seed<seed>-<hash of the recipe>`: changes with the recipe and the seed."""
    from sweep.demo.train import Recipe

    recipe = recipe or Recipe()
    blob = json.dumps({"version": RECIPE_VERSION, "recipe": recipe.to_json()}, sort_keys=True)
    return f"v{RECIPE_VERSION}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_family(
    *,
    root: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
    recipe=None,
    threads: int = 2,
) -> DemoFamily:
    """The demo family for `seed`: the cached copy in seconds, else a fresh build (~6 min).

    `root` is the family's own folder (default `cache_root()/<family_key>`). `force`
    rebuilds even when a family is there. `recipe` (a `train.Recipe`) and `threads`
    (torch threads during the build) are knobs for tests and experiments.
    Raises SweepError when `root` holds another recipe or seed and `force` is not given,
    or holds files that are not a demo family (never deleted, even with `force`).
    """
    from sweep.demo import cache_root

    progress = progress or _stderr
    key = family_key(seed=seed, recipe=recipe)
    root = Path(root).expanduser().resolve() if root is not None else cache_root() / key
    if not force and _ready(root, key):
        return DemoFamily.at(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{root.name}.lock", progress):
        if not force and _ready(root, key, repair=True):  # built by another process meanwhile
            return DemoFamily.at(root)
        if root.exists() and (not force or not _replaceable(root)):
            raise SweepError(_occupied_message(root))
        for stale in root.parent.glob(f".{root.name}.building-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        progress(
            f"Building the demo model family into {root} (first use: about 6 minutes on 2 cores; cached afterwards)"
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the family is meant to be shared read-only
        try:
            _build(tmp, final=root, key=key, seed=seed, recipe=recipe, threads=threads, progress=progress)
            if root.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
                os.rename(root, trash / "family")
                os.rename(tmp, root)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return DemoFamily.at(root)


def _ready(root: Path, key: str, *, repair: bool = False) -> bool:
    """Whether `root` holds a complete family with this key. With `repair`, re-point the
    task YAMLs at `root` when the folder was moved (their data_files are absolute)."""
    from sweep.demo.tasks import point_tasks_at, tasks_point_at

    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("key") != key:
        return False
    if not tasks_point_at(root / "tasks"):
        if not repair:
            return False
        point_tasks_at(root / "tasks", root / "tasks")
    return True


def _replaceable(root: Path) -> bool:
    """Only a demo family (or an empty folder) is ever deleted, even with force."""
    return (root / MANIFEST).exists() or (root.is_dir() and not any(root.iterdir()))


def _occupied_message(root: Path) -> str:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        return (
            f"{root} holds a demo family built as {manifest.get('key')} (another seed or recipe); "
            "pass --force to rebuild it there, or choose another --root"
        )
    except (OSError, json.JSONDecodeError):
        return (
            f"{root} exists and is not a demo family (no {MANIFEST}); choose another --root, or an empty or new folder"
        )


@contextmanager
def _locked(lock_file: Path, progress: Callable[[str], None]) -> Iterator[None]:
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"Another process is building the demo family; waiting for it ({lock_file})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(
    folder: Path, *, final: Path, key: str, seed: int, recipe, threads: int, progress: Callable[[str], None]
) -> None:
    """Train the three checkpoints and write tasks and prompts into `folder`."""
    import torch
    from transformers.utils import logging as hf_logging

    from sweep.demo import data, train
    from sweep.demo.tasks import PROBE_FILE, write_probe_prompts, write_tasks
    from sweep.demo.tokenizer import build_char_tokenizer

    recipe = recipe or train.Recipe()
    wall0, cpu0 = time.monotonic(), time.process_time()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars would drown the progress lines
    try:
        tokenizer = build_char_tokenizer()
        splits = data.make_splits(seed=seed)
        reserved = splits.reserved  # evaluation prompts never appear in training data
        write_tasks(folder / "tasks", splits, final_folder=final / "tasks")
        write_probe_prompts(folder / PROBE_FILE, splits)

        timings: dict[str, float] = {}
        model = train.new_model(recipe, tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        progress(f"  pretrained: {n_params / 1e6:.2f}M params, {recipe.pretrain.steps} steps")
        stages = [
            ("pretrained", None, recipe.pretrain, train.pretrain_rows(recipe, reserved)),
            ("instruct", "pretrained", recipe.instruct, train.instruct_rows(recipe, reserved)),
            ("reasoning", "pretrained", recipe.reasoning, train.reasoning_rows(recipe, reserved)),
        ]
        trained: dict[str, Any] = {}  # member name -> its trained model
        for name, parent, stage, rows in stages:
            t0 = time.monotonic()
            member = model if parent is None else copy.deepcopy(trained[parent])
            train.train(
                member,
                tokenizer,
                recipe=recipe,
                stage=stage,
                rows=rows,
                seed=f"{name}-{seed}",
                progress=progress,
                label=name,
            )
            trained[name] = member
            member.save_pretrained(folder / name)
            tokenizer.save_pretrained(folder / name)
            timings[name] = round(time.monotonic() - t0, 1)
    finally:
        torch.set_num_threads(previous_threads)
        if bars:
            hf_logging.enable_progress_bar()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    manifest = {
        "key": key,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "recipe": recipe.to_json(),
        "params": n_params,
        "threads": threads,
        "torch": torch.__version__,
        "build_wall_s": round(wall, 1),
        "build_cpu_s": round(cpu, 1),
        "stage_wall_s": timings,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks the build complete
    progress(f"Demo family built in {wall:.0f} s ({cpu:.0f} CPU s, {threads} threads)")
