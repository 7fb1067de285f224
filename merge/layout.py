"""What the merged model contains: its tensors, where each comes from, tying and vocabulary.

Tied embeddings: a tied model's output head *is* its input embedding, whatever its file
holds under `lm_head.weight`. When all three models are tied, the result is tied (only
the embedding is stored). When any is untied, the result is untied: its `lm_head.weight`
merges each untied model's head with each tied model's embedding.

Vocabulary policy, for `model.embed_tokens.weight` and `lm_head.weight` rows:
- strict: the sizes must match (checked before any arithmetic);
- truncate: keep rows [0, smallest vocab) of every model;
- pad: grow to the largest vocab; a model lacking a row borrows it from the first model
  (instruct, reasoning, pretrained order) that has it, so with weights summing to one
  the new rows equal that model's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from merge.checkpoint import VOCAB_TENSORS, CheckpointInfo, compatibility_problems, inspect_checkpoint
from merge.errors import MergeError
from merge.plan import ROLES

EMBED, HEAD = VOCAB_TENSORS
VOCAB_POLICIES = ("strict", "truncate", "pad")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its name and shape, and the stored name to read in each source."""

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, str, str]  # stored names in (instruct, reasoning, pretrained)
    source_dtypes: tuple[str, str, str]  # safetensors tags, same order
    vocab_rows: int | None = None  # output rows when the first dim is the vocabulary


@dataclass(frozen=True)
class Layout:
    tensors: tuple[TensorPlan, ...]
    tie_word_embeddings: bool
    vocab: str
    vocab_size: int | None  # output vocabulary rows, when the policy changed them

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


def load_infos(
    *, pretrained, instruct, reasoning, vocab: str = "strict", allow_pickle: bool = False
) -> dict[str, CheckpointInfo]:
    """Inspect the three checkpoints (headers only) and raise one MergeError with every problem.

    Returns infos keyed by role in ROLES order (instruct, reasoning, pretrained).
    """
    if vocab not in VOCAB_POLICIES:
        raise MergeError(f"vocab policy must be one of {', '.join(VOCAB_POLICIES)}, got {vocab!r}")
    paths = {"pretrained": pretrained, "instruct": instruct, "reasoning": reasoning}
    infos: dict[str, CheckpointInfo] = {}
    problems: list[str] = []
    for role, path in paths.items():
        if path is None:
            problems.append(f"{role}: no checkpoint path given")
            continue
        try:
            infos[role] = inspect_checkpoint(path, allow_pickle=allow_pickle)
        except MergeError as exc:
            problems.append(f"{role}: {exc}")
    if not problems:
        problems = compatibility_problems(infos, vocab=vocab)  # pretrained first: the reference
    if problems:
        raise MergeError.collected("cannot merge these checkpoints", problems)
    return {role: infos[role] for role in ROLES}


def plan_layout(
    infos: dict[str, CheckpointInfo], *, vocab: str = "strict", order: Callable[[str], tuple[str, int]] | None = None
) -> Layout:
    """The output tensors of merging `infos` (keyed by role), sorted by `order` of the
    pretrained model's stored name, e.g. its (file, byte offset) (default: by name)."""
    tied = [infos[role].tie_word_embeddings for role in ROLES]
    out_tied = all(tied)
    reference = infos["pretrained"].logical_tensors()
    names = sorted(n for n in reference if not (out_tied and n == HEAD))
    vocab_size = None
    plans = []
    for name in names:
        instruct, reasoning, pretrained = (EMBED if (name == HEAD and is_tied) else name for is_tied in tied)
        stored = (instruct, reasoning, pretrained)
        i_dtype, r_dtype, p_dtype = (infos[role].tensors[s].dtype for role, s in zip(ROLES, stored, strict=True))
        dtypes = (i_dtype, r_dtype, p_dtype)
        shapes = [infos[role].tensors[s].shape for role, s in zip(ROLES, stored, strict=True)]
        rows = None
        shape = shapes[2]
        if name in VOCAB_TENSORS and len({s[0] for s in shapes}) > 1:
            rows = min(s[0] for s in shapes) if vocab == "truncate" else max(s[0] for s in shapes)
            shape = (rows, *shape[1:])
            vocab_size = rows
        plans.append(TensorPlan(name=name, shape=tuple(shape), sources=stored, source_dtypes=dtypes, vocab_rows=rows))
    if order is not None:  # by where pretrained stores each tensor: sequential reads
        plans.sort(key=lambda plan: order(plan.sources[2]))
    return Layout(tensors=tuple(plans), tie_word_embeddings=out_tied, vocab=vocab, vocab_size=vocab_size)


def fit_rows(tensors: list[torch.Tensor], rows: int | None) -> list[torch.Tensor]:
    """Apply the vocabulary policy to one vocab tensor of each source (ROLES order).

    Truncation returns views; padding copies the short tensors, borrowing the missing
    rows from the first source that has them.
    """
    if rows is None:
        return tensors
    out = []
    for tensor in tensors:
        if tensor.shape[0] >= rows:
            out.append(tensor[:rows])
            continue
        donor = next(t for t in tensors if t.shape[0] >= rows)
        out.append(torch.cat([tensor, donor[tensor.shape[0] : rows].to(tensor.dtype)]))
    return out


def output_dtype(plan: TensorPlan, requested: torch.dtype | None) -> torch.dtype:
    """The requested dtype; else the sources' common dtype (float32 when they differ)."""
    from merge.dtypes import torch_dtype

    dtypes = {torch_dtype(tag) for tag in plan.source_dtypes}
    if len(dtypes) == 1:
        (only,) = dtypes
        if not only.is_floating_point:
            return only  # integer buffers are copied, never merged
        return requested or only
    return requested or torch.float32


def is_merged(plan: TensorPlan) -> bool:
    """False for non-float tensors (e.g. integer buffers), which are copied from instruct."""
    from merge.dtypes import torch_dtype

    return all(torch_dtype(tag).is_floating_point for tag in plan.source_dtypes)
