"""A random Llama of a given shape on the demo's character tokenizer, saved for vLLM: the
model the rollout benches time (HF loop vs vLLM, LoRA requests vs merged pushes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def random_llama_model(*, hidden: int, layers: int, vocab: int, tie: bool, max_positions: int = 1024):
    """(model, tokenizer): a seeded random fp32 `LlamaForCausalLM` (heads of 64, FFN 8/3 of
    hidden) and the demo's character tokenizer, not saved."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sweep.demo.tokenizer import build_char_tokenizer

    torch.manual_seed(0)
    tok: Any = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return AutoModelForCausalLM.from_config(config), tok


def random_llama(path: Path, *, hidden: int, layers: int, vocab: int, tie: bool, dtype: str = "float32"):
    """(model, tokenizer): `random_llama_model` (1024 positions) in `dtype`, saved with the
    tokenizer to `path`."""
    import torch

    model, tok = random_llama_model(hidden=hidden, layers=layers, vocab=vocab, tie=tie)
    model = model.to(getattr(torch, dtype)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok
