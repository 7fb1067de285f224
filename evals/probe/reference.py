"""The probe's KL reference when it is not the candidate (`evals.probe.reference`).

Some RL pipelines keep their SFT model as the KL term's reference whatever the actor
starts from. KL is then not 0 at the start, and the term pulls the actor toward that
model from the first step (docs/probe.md, "The KL reference"). The reference is a
checkpoint folder, loaded as a causal LM in the candidate's dtype, on its device, frozen.
A process keeps the one it loaded last: a sweep worker probes many candidates against
the same reference, and the memory plan counts it as held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evals.errors import EvalError

_LOADED: dict[tuple[str, str, str], Any] = {}  # (folder, dtype, device) -> the frozen model


def load_reference(path: str, *, like: Any) -> Any:
    """The frozen reference model at `path`, in `like`'s dtype and on its device. EvalError
    for a folder that is not a causal-LM checkpoint, or whose vocabulary (the width of its
    logits) differs from `like`'s: the KL term compares the two token by token."""
    param = next(like.parameters())
    key = (str(Path(path).resolve()), str(param.dtype), str(param.device))
    if key in _LOADED:
        return _LOADED[key]
    if not (Path(path) / "config.json").is_file():
        raise EvalError(f"evals.probe.reference: {path}: no such checkpoint folder (config.json missing)")
    from transformers import AutoModelForCausalLM

    _LOADED.clear()  # one reference at a time: free the last before loading another
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=param.dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"evals.probe.reference: {path}: cannot load as a causal LM ({exc})") from None
    theirs, ours = logits_width(model), logits_width(like)
    if theirs != ours:
        raise EvalError(
            f"evals.probe.reference: {path} has a vocabulary of {theirs} tokens and the candidate {ours}; "
            "the KL term compares the two token by token, so they must share a tokenizer"
        )
    model.to(param.device).eval().requires_grad_(False)
    _LOADED[key] = model
    return model


def logits_width(model: Any) -> int:
    """The number of logits per token: the output embedding's rows (config.vocab_size without one)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
