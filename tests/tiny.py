"""Tiny HF checkpoints made on the spot for tests: no downloads, ~0.1 s each."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sweep.demo.tokenizer import build_char_tokenizer


def make_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    vocab_extra: int = 0,
    tie: bool = True,
    arch: str = "llama",
    dtype: torch.dtype = torch.float32,
    base: Path | None = None,
    noise: float = 0.02,
    max_shard_size: str | None = None,
) -> Path:
    """Save a tiny causal LM with the char tokenizer at `path` and return `path`.

    With `base`, start from that checkpoint's weights plus seeded noise (a "fine-tune"
    sharing the ancestor). `vocab_extra` grows the vocabulary by that many rows.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = build_char_tokenizer()
    vocab = len(tokenizer) + vocab_extra
    torch.manual_seed(seed)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
        config = cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=256,
            tie_word_embeddings=tie,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype)
    path.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path


def make_trio(root: Path, **kwargs) -> dict[str, Path]:
    """pretrained plus two noisy "fine-tunes" of it, as merge inputs."""
    pretrained = make_tiny_checkpoint(root / "pretrained", seed=0, **kwargs)
    extra = {k: v for k, v in kwargs.items() if k in ("dtype", "max_shard_size")}
    return {
        "pretrained": pretrained,
        "instruct": make_tiny_checkpoint(root / "instruct", seed=1, base=pretrained, **extra),
        "reasoning": make_tiny_checkpoint(root / "reasoning", seed=2, base=pretrained, **extra),
    }


def edit_config(path: Path, **changes) -> None:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config, indent=2))
