"""Shared fixtures. Everything runs offline on tiny models made here."""

from __future__ import annotations

import os

# Offline, one torch thread: set before anything imports transformers or torch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# demo: names mean the shipped family in tests, never a developer's rebuilt one
os.environ.pop("SWEEP_DEMO_DIR", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_trio(tmp_path_factory) -> dict[str, Path]:
    """pretrained + instruct + reasoning tiny Llama checkpoints (float32, tied embeddings)."""
    from tests.tiny import make_trio

    return make_trio(tmp_path_factory.mktemp("trio"))


@pytest.fixture(scope="session")
def demo_family():
    """The demo family shipped with sweep, checked against its checksums first (a
    mismatch fails every test that uses it, naming the files). Never a cache or a rebuild:
    the figures the tests assert belong to these weights."""
    from sweep.demo.build import shipped_family

    return shipped_family()
