"""Helpers for the merge tests: reference maths and the odd checkpoints tests/tiny.py does not make."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open


def merge_argv(trio: dict, *extra: str) -> list[str]:
    """`sweep merge` on a trio ({"pretrained", "instruct", "reasoning"}: folders or demo: names), then `extra`."""
    return [
        "merge",
        "--pretrained",
        str(trio["pretrained"]),
        "--instruct",
        str(trio["instruct"]),
        "--reasoning",
        str(trio["reasoning"]),
        *extra,
    ]


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor stored in a checkpoint folder (all safetensors shards)."""
    state = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                state[name] = fh.get_tensor(name)
    return state


def closed_form(
    trio: dict[str, Path], alpha: float, beta: float, name: str, *, rows: int | None = None
) -> torch.Tensor:
    """beta*(alpha*I + (1-alpha)*R) + (1-beta)*P in float64; a tied model's lm_head is its embedding."""
    values = {}
    for role, folder in trio.items():
        state = load_state(folder)
        config = json.loads((Path(folder) / "config.json").read_text())
        key = "model.embed_tokens.weight" if name == "lm_head.weight" and config.get("tie_word_embeddings") else name
        values[role] = state[key].double()[:rows] if rows else state[key].double()
    return beta * (alpha * values["instruct"] + (1 - alpha) * values["reasoning"]) + (1 - beta) * values["pretrained"]


def bf16_ulp(reference: torch.Tensor) -> torch.Tensor:
    """Spacing of bfloat16 numbers at each value of `reference` (8 significant bits)."""
    magnitude = reference.abs().to(torch.bfloat16).double().clamp_min(2.0**-126)
    return torch.pow(2.0, torch.floor(torch.log2(magnitude)) - 7)


def make_untied_finetune(path: Path, *, base: Path, seed: int, noise: float = 0.02) -> Path:
    """A fine-tune of a tied `base` saved untied: its lm_head starts as the embedding, then both get noise."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    config.tie_word_embeddings = False
    state = load_state(base)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    model.save_pretrained(path)
    for file in Path(base).glob("tokenizer*"):
        shutil.copy2(file, path / file.name)
    return path


def make_pickle_copy(source: Path, path: Path) -> Path:
    """The same checkpoint saved as pickle pytorch_model.bin (config and tokenizer copied)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(load_state(source), path / "pytorch_model.bin")
    for file in Path(source).iterdir():
        if not file.name.endswith(".safetensors") and not file.name.endswith(".index.json"):
            shutil.copy2(file, path / file.name)
    return path
