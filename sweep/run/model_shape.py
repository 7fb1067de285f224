"""What the memory plan needs of a checkpoint: its shape, read from config.json and the
safetensors header (never a weight)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a checkpoint, read from config.json and the safetensors header."""

    params: int  # distinct parameters (a tied head counted once)
    stored_bytes: int  # bytes per parameter as stored (dominant dtype)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_info(cls, info: Any) -> ModelShape:
        cfg = info.config.get("text_config", info.config)
        params = sum(_numel(t.shape) for t in info.tensors.values())
        by_dtype: dict[str, int] = {}
        for t in info.tensors.values():
            by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + _numel(t.shape)
        dominant = max(by_dtype, key=by_dtype.__getitem__) if by_dtype else "F32"
        hidden = int(cfg.get("hidden_size", 0))
        heads = int(cfg.get("num_attention_heads", 1))
        return cls(
            params=params,
            stored_bytes=DTYPE_BYTES.get(dominant, 4),
            layers=int(cfg.get("num_hidden_layers", 0)),
            hidden=hidden,
            intermediate=int(cfg.get("intermediate_size", 4 * hidden)),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // max(heads, 1)),
            vocab=int(cfg.get("vocab_size", 0)),
        )

    @classmethod
    def llama(
        cls,
        *,
        layers: int,
        hidden: int,
        intermediate: int,
        heads: int,
        kv_heads: int,
        vocab: int,
        tie: bool = False,
        stored_bytes: int = 2,
    ) -> ModelShape:
        """A Llama/Qwen2-layout shape from its config numbers (for docs and what-ifs)."""
        head_dim = hidden // heads
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        mlp = 3 * hidden * intermediate
        params = layers * (attn + mlp + 2 * hidden) + vocab * hidden * (1 if tie else 2) + hidden
        return cls(
            params=params,
            stored_bytes=stored_bytes,
            layers=layers,
            hidden=hidden,
            intermediate=intermediate,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=vocab,
        )

    @property
    def lora_params_per_rank(self) -> int:
        """LoRA parameters per unit of rank over every linear of every layer: r * (in + out)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        per_layer = (h + q) + (h + kv) * 2 + (q + h) + (h + i) * 2 + (i + h)
        return self.layers * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
