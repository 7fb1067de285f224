"""The demo family on disk: the shipped copy, checksums, and rebuilds from the recipe.

The project ships one family (`sweep/demo/family/`, ~10 MB), so every machine runs the
same three models: a training run of a thousand steps lands elsewhere on another CPU,
whose kernels round differently. `demo:` names resolve to the shipped family, checked
against its checksums, unless `$SWEEP_DEMO_DIR` names a rebuilt family. A family folder:

    <root>/family.json                   key, label, seed, recipe, build record, gate table
    <root>/SHA256SUMS                    sha256 of every other file (`sha256sum -c SHA256SUMS`)
    <root>/{pretrained,instruct,reasoning}/   HF checkpoints (config, safetensors, tokenizer)
    <root>/tasks/                        lm-eval include path: 4 task YAMLs, their loader, data/*.jsonl
    <root>/probe_prompts.jsonl           {"prompt", "answer"} per line, for the RLHF probe

`build_family` trains one from the recipe (`sweep demo build --rebuild`). A build happens
in a temporary sibling folder renamed into place at the end, under an exclusive file
lock (`<root>.lock`): a second process waits, then reuses the result. Its key names the
recipe and seed; its label adds a digest of the weights it produced, so a rebuild whose
weights differ from the shipped ones never passes for them.
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
# 4: an ancestor that mostly thinks without re-verifying, a reasoner that re-verifies once;
# 5: an ancestor trained until it has every skill, on more arithmetic, so that rebuilds on
# other seeds and thread counts pass the gate, not only the one that was measured).
RECIPE_VERSION = 5
MANIFEST = "family.json"
CHECKSUMS = "SHA256SUMS"
CHECKPOINTS = ("pretrained", "instruct", "reasoning")
SHIPPED_ROOT = Path(__file__).resolve().with_name("family")
ENV_DIR = "SWEEP_DEMO_DIR"


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
        """The build record in family.json (key, label, seed, recipe, timings, gate)."""
        return json.loads((self.root / MANIFEST).read_text())

    @property
    def label(self) -> str:
        """`<key>-w<weights digest>`: names these weights, not only the recipe that made them."""
        return str(self.manifest()["label"])

    @property
    def shipped(self) -> bool:
        return self.root == SHIPPED_ROOT


def family_key(*, seed: int, recipe=None) -> str:
    """`v<version>-seed<seed>-<hash of the recipe>`: changes with the recipe and the seed."""
    from sweep.demo.train import Recipe

    recipe = recipe or Recipe()
    blob = json.dumps({"version": RECIPE_VERSION, "recipe": recipe.to_json()}, sort_keys=True)
    return f"v{RECIPE_VERSION}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def weights_digest(root: Path) -> str:
    """sha256 over the members' model.safetensors files, in member order (hex)."""
    h = hashlib.sha256()
    for member in CHECKPOINTS:
        h.update(member.encode())
        h.update(_sha256(root / member / "model.safetensors").encode())
    return h.hexdigest()


def family_label(key: str, digest: str) -> str:
    return f"{key}-w{digest[:8]}"


# ---------------------------------------------------------------- checksums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listed_files(root: Path) -> list[Path]:
    """Every file of a family but the checksum list (and Python's byte-code caches)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != CHECKSUMS and "__pycache__" not in p.relative_to(root).parts
    )


def write_checksums(root: Path) -> None:
    """`SHA256SUMS` in sha256sum's format: `<hex>  <path relative to root>` per file."""
    lines = [f"{_sha256(p)}  {p.relative_to(root).as_posix()}" for p in _listed_files(root)]
    (root / CHECKSUMS).write_text("\n".join(lines) + "\n")


def checksum_problems(root: Path) -> list[str]:
    """What in `root` differs from its SHA256SUMS: missing, changed or unlisted files."""
    listing = root / CHECKSUMS
    if not listing.is_file():
        return [f"{listing}: no checksum list"]
    expected: dict[str, str] = {}
    for line in listing.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.strip()] = digest
    problems = []
    for name, digest in expected.items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _sha256(path) != digest:
            problems.append(f"{name}: sha256 differs from SHA256SUMS")
    for path in _listed_files(root):
        if path.relative_to(root).as_posix() not in expected:
            problems.append(f"{path.relative_to(root).as_posix()}: not in SHA256SUMS")
    return problems


# ---------------------------------------------------------------- which family `demo:` names mean

_announced: set[Path] = set()  # rebuilt families already named on stderr by this process


def shipped_family() -> DemoFamily:
    """The family shipped with sweep, after checking every file against its checksum.

    Raises SweepError naming each file that differs (a checkout without the weights, an
    edited file) and how to restore them."""
    return _checked(SHIPPED_ROOT, restore="git checkout -- sweep/demo/family (or reinstall sweep)")


def open_family(root: Path) -> DemoFamily:
    """A family folder made by `build_family` (checked against its checksums)."""
    root = Path(root).expanduser().resolve()
    if not (root / MANIFEST).is_file():
        raise SweepError(
            f"{root} holds no demo family (no {MANIFEST}); build one there with "
            f"`python -m sweep demo build --rebuild --root {root}`"
        )
    return _checked(root, restore=f"rebuild it: python -m sweep demo build --rebuild --force --root {root}")


def active_family(progress: Callable[[str], None] | None = None) -> DemoFamily:
    """The family `demo:` names resolve to: `$SWEEP_DEMO_DIR` when set (a rebuilt family
    folder; said once per process on stderr, with its label), else the shipped one."""
    env = os.environ.get(ENV_DIR)
    if not env:
        return shipped_family()
    family = open_family(Path(env))
    if family.root not in _announced:
        _announced.add(family.root)
        shipped = (
            json.loads((SHIPPED_ROOT / MANIFEST).read_text())["label"] if (SHIPPED_ROOT / MANIFEST).exists() else "?"
        )
        note = "the shipped family itself" if family.label == shipped else f"not the shipped family {shipped}"
        (progress or _stderr)(f"demo: {ENV_DIR} selects the family at {family.root} ({family.label}; {note})")
    return family


def _checked(root: Path, *, restore: str) -> DemoFamily:
    """The family at `root`, every time after hashing its files (~10 MB: milliseconds)."""
    if problems := checksum_problems(root):
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise SweepError(f"the demo family at {root} does not match its checksums: {shown}. To restore it: {restore}")
    return DemoFamily.at(root)


# ---------------------------------------------------------------- building from the recipe


def cache_root() -> Path:
    """Where `build_family` puts a rebuild when no root is given: ~/.cache/sweep/demo/<key>."""
    return Path.home() / ".cache" / "sweep" / "demo"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_family(
    *,
    root: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
    recipe=None,
    threads: int = 2,
    gate: bool = True,
) -> DemoFamily:
    """Train the family for `seed` from the recipe, or reuse a complete build of the same key.

    `root` is the family's own folder (default `cache_root()/<family_key>`). `force`
    rebuilds even when a family is there. `recipe` (a `train.Recipe`) and `threads`
    (torch threads during the build) are knobs for tests and experiments. With `gate`,
    the trade-off table is measured at the end and recorded in family.json (a family that
    misses the gate is still kept: `sweep.demo.gate` says what it missed).
    Raises SweepError when `root` holds another recipe or seed and `force` is not given,
    or holds files that are not a demo family (never deleted, even with `force`).
    """
    progress = progress or _stderr
    key = family_key(seed=seed, recipe=recipe)
    root = Path(root).expanduser().resolve() if root is not None else cache_root() / key
    if root == SHIPPED_ROOT:
        raise SweepError(f"{root} is the shipped family; rebuild into another --root")
    if not force and _ready(root, key):
        return DemoFamily.at(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{root.name}.lock", progress):
        if not force and _ready(root, key):  # built by another process meanwhile
            return DemoFamily.at(root)
        if root.exists() and (not force or not _replaceable(root)):
            raise SweepError(_occupied_message(root))
        for stale in root.parent.glob(f".{root.name}.building-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the family is meant to be shared read-only
        try:
            _build(tmp, key=key, seed=seed, recipe=recipe, threads=threads, gate=gate, progress=progress)
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


def _ready(root: Path, key: str) -> bool:
    """Whether `root` holds a complete family with this key (checksums written last)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("key") == key and (root / CHECKSUMS).is_file()


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
    folder: Path, *, key: str, seed: int, recipe, threads: int, gate: bool, progress: Callable[[str], None]
) -> None:
    """Train the three checkpoints, write tasks and prompts into `folder`, measure the gate,
    then write family.json and SHA256SUMS (last: they mark the build complete)."""
    import platform

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
        write_tasks(folder / "tasks", splits)
        write_probe_prompts(folder / PROBE_FILE, splits)

        timings: dict[str, float] = {}
        model = train.new_model(recipe, tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        stages = [
            ("pretrained", None, recipe.pretrain, train.pretrain_rows(recipe, reserved)),
            ("instruct", "pretrained", recipe.instruct, train.instruct_rows(recipe, reserved)),
            ("reasoning", "pretrained", recipe.reasoning, train.reasoning_rows(recipe, reserved)),
        ]
        clock = train.BuildClock(total_rows=sum(stage.steps * stage.batch for _, _, stage, _ in stages))
        progress(
            f"Building the demo model family {key} into {folder.parent} ({n_params / 1e6:.2f}M params, "
            + ", ".join(f"{name} {stage.steps} steps" for name, _, stage, _ in stages)
            + f"; {threads} torch threads). Progress every {train.PROGRESS_EVERY_S:.0f} s, ETA from the measured step time."
        )
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
                clock=clock,
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
    digest = weights_digest(folder)
    manifest: dict[str, Any] = {
        "key": key,
        "label": family_label(key, digest),
        "weights_sha256": digest,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "recipe": recipe.to_json(),
        "params": n_params,
        "threads": threads,
        "torch": torch.__version__,
        "machine": _cpu_name() or platform.machine(),
        "build_wall_s": round(wall, 1),
        "build_cpu_s": round(cpu, 1),
        "stage_wall_s": timings,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    progress(f"Demo family {manifest['label']} trained in {wall:.0f} s ({cpu:.0f} CPU s, {threads} threads)")
    if gate:
        from sweep.demo.gate import measure_gate

        progress("Measuring the trade-off table (the gate)...")
        manifest["gate"] = measure_gate(DemoFamily.at(folder)).to_json()
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    write_checksums(folder)  # written last: marks the build complete


def _cpu_name() -> str | None:
    """The CPU's model name (Linux), recorded with a build: rounding differs between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
