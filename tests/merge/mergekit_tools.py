"""Running the real mergekit from its own venv (it is not a dependency of the project).

`.ci/run` installs mergekit 0.1.5 into `<repo>/.venv-mergekit`; elsewhere point
`SWEEP_MERGEKIT_BIN` at a folder holding `mergekit-yaml` and `mergekit-multi`. Tests that
need it skip, naming the reason, only when neither is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLI_NAMES = ("mergekit-yaml", "mergekit-multi")


def mergekit_bin() -> Path | None:
    """The folder with mergekit's CLIs: $SWEEP_MERGEKIT_BIN, else <repo>/.venv-mergekit/bin, else PATH."""
    candidates = [os.environ.get("SWEEP_MERGEKIT_BIN"), str(REPO / ".venv-mergekit" / "bin")]
    found = shutil.which("mergekit-multi")
    if found:
        candidates.append(str(Path(found).parent))
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in CLI_NAMES):
            return Path(folder)
    return None


def require_mergekit() -> Path:
    folder = mergekit_bin()
    if folder is None:
        pytest.skip(
            "mergekit not found: no $SWEEP_MERGEKIT_BIN, no .venv-mergekit/bin, nothing on PATH "
            "(.ci/run installs it: python3 -m venv .venv-mergekit, then torch==2.13.0 and mergekit==0.1.5)"
        )
    return folder


def run_mergekit(args: list[str], *, timeout: float = 600) -> float:
    """Run one mergekit CLI (CPU, one thread, offline); returns its wall seconds. Fails the test with its output on error."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def batch_recipes(recipes: dict[str, str], stage1_name: str) -> str:
    """Many recipes as one mergekit-multi file (one mergekit start-up instead of one per
    merge): each recipe's stage-1 name becomes `<key>-stage1`, its last document is named
    `<key>`; nothing else changes."""
    documents = []
    for key, text in recipes.items():
        docs = list(yaml.safe_load_all(text.replace(stage1_name, f"{key}-stage1")))
        docs[-1]["name"] = key
        documents += docs
    return "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in documents)
