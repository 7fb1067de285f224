"""Shared fixtures. Everything runs offline on tiny models made here."""

from __future__ import annotations

import os

# Offline, one torch thread: set before anything imports transformers or torch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_trio(tmp_path_factory) -> dict[str, Path]:
    """pretrained + instruct + reasoning tiny Llama checkpoints (float32, tied embeddings)."""
    from tests.tiny import make_trio

    return make_trio(tmp_path_factory.mktemp("trio"))
