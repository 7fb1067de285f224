"""In-place candidate build: what a sweep worker does for every trial.

    sources = SourceCache.load(pretrained=P, instruct=I, reasoning=R, device="cuda")
    model = AutoModelForCausalLM.from_pretrained(I, dtype=torch.bfloat16).to("cuda")
    for alpha, beta in trials:
        build_in_place(model, sources, alpha=alpha, beta=beta)   # no second model, no disk
        evaluate(model)

(A sweep trial passes its `MergePlan` instead: `build_in_place(model, sources, plan)`.)

The cache holds the three models' tensors once, on the device or (merge.source_device:
cpu) in host memory, pinned when CUDA is there; each build overwrites the live model's
parameters with the candidate's weights. Host-held sources are streamed to the model's
device one tensor at a time (asynchronous copies from pinned memory), so the device
holds only the live model plus one tensor's three sources: for a 7B trio, 15 GB instead
of 61 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merge.checkpoint import CheckpointInfo
from merge.errors import MergeError
from merge.io import CheckpointReader, parse_device, parse_dtype
from merge.kernels import check_mode, weighted_sum_into
from merge.layout import EMBED, HEAD, Layout, fit_rows, load_infos, plan_layout
from merge.plan import ROLES, MergePlan


@dataclass
class SourceCache:
    """The source tensors of the three models, in memory on one device, kept across trials.

    `tensors[name]` is (instruct, reasoning, pretrained), already fitted to the vocabulary
    policy. A tied source's `lm_head.weight` is its embedding (the same tensor, not a copy).
    """

    infos: dict[str, CheckpointInfo]
    layout: Layout
    device: torch.device
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    @classmethod
    def load(
        cls,
        *,
        pretrained: str | Path,
        instruct: str | Path,
        reasoning: str | Path,
        device: str | torch.device = "cpu",
        vocab: str = "strict",
        dtype: str | torch.dtype | None = None,
        allow_pickle: bool = False,
        pin_memory: bool = False,
    ) -> SourceCache:
        """Check compatibility (headers only; MergeError lists every problem), then load.

        `dtype` None/"auto" keeps each tensor's stored dtype; otherwise the cache stores that
        dtype (e.g. bfloat16 to hold three fp32 models in half the memory). `pin_memory`
        pins a CPU cache (page-locked, for fast asynchronous copies to CUDA); it is ignored
        where CUDA is not available.
        """
        check_mode()
        target_dtype = parse_dtype(dtype)
        target_device = parse_device(device)
        infos = load_infos(
            pretrained=pretrained, instruct=instruct, reasoning=reasoning, vocab=vocab, allow_pickle=allow_pickle
        )
        layout = plan_layout(infos, vocab=vocab)
        readers = {role: CheckpointReader(infos[role]) for role in ROLES}
        pin = bool(pin_memory) and torch.cuda.is_available()
        loaded: dict[tuple[str, str, int | None], torch.Tensor] = {}
        tensors = {}
        try:
            for plan in layout.tensors:
                raw = [readers[role].get(stored) for role, stored in zip(ROLES, plan.sources, strict=True)]
                fitted = fit_rows(raw, plan.vocab_rows)
                triple: list[torch.Tensor] = []
                for role, stored, tensor in zip(ROLES, plan.sources, fitted, strict=True):
                    key = (role, stored, plan.vocab_rows)  # a tied source's head reuses its embedding
                    if key not in loaded:
                        want = (
                            target_dtype if (target_dtype is not None and tensor.is_floating_point()) else tensor.dtype
                        )
                        # copy=True: never keep a view of the mapped file
                        copied = tensor.to(device=target_device, dtype=want, copy=True)
                        if pin and copied.device.type == "cpu":
                            copied = copied.pin_memory()
                        loaded[key] = copied
                    triple.append(loaded[key])
                instruct_t, reasoning_t, pretrained_t = triple
                tensors[plan.name] = (instruct_t, reasoning_t, pretrained_t)
                for role, stored in zip(ROLES, plan.sources, strict=True):
                    readers[role].release(stored)  # the copy is made: drop the file pages from our RSS
        finally:
            for reader in readers.values():
                reader.close()
        return cls(infos=infos, layout=layout, device=target_device, tensors=tensors)

    @property
    def tie_word_embeddings(self) -> bool:
        """True when all three sources tie their embeddings (the cache then has no lm_head)."""
        return self.layout.tie_word_embeddings

    @property
    def nbytes(self) -> int:
        seen: dict[int, int] = {}
        for triple in self.tensors.values():
            for tensor in triple:
                seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return sum(seen.values())


def build_in_place(model: torch.nn.Module, sources: SourceCache, plan: MergePlan | None = None, **recipe: Any) -> None:
    """Overwrite `model`'s parameters with the candidate `plan` describes.

    Without a plan, `recipe` holds `MergePlan.create`'s keywords (alpha=, beta=,
    stage1_method=, stage1_params=, stage2_method=, stage2_params=, allow_extrapolation=).
    The plan's models, dtype and vocabulary policy are the cache's business here
    (`SourceCache.load`).

    The model must have the sources' tensor names and shapes, on the cache's device or,
    for a cache in CPU memory, on any device: the sources are then copied over one
    tensor at a time (any float dtype: results are computed in fp32 and rounded once
    into each parameter's own dtype). Both-linear recipes take the one-pass fused path with
    weights [alpha*beta, (1-alpha)*beta, 1-beta]; other methods run per tensor.
    Tied embeddings: a tied live model gets its shared weight written once; it cannot
    hold a merge of tied and untied sources (its head would differ from its embedding),
    which raises MergeError. Raises MergeError before writing anything on a bad recipe
    or a model that does not match.
    """
    if plan is not None and recipe:
        raise TypeError(f"build_in_place: give a plan or the recipe's keywords, not both ({', '.join(recipe)})")
    if plan is None:
        plan = MergePlan.create(**recipe)
    targets = _bind(model, sources)
    weights = plan.fused_weights
    with torch.no_grad():
        for name, target, triple in targets:
            if triple[0].device != target.device:  # host-held sources: stream this tensor's three
                triple = tuple(t.to(target.device, non_blocking=True) for t in triple)
            if not triple[0].is_floating_point():
                target.copy_(triple[0])
            elif weights is not None and target.is_contiguous():
                weighted_sum_into(target, triple, weights)
            else:
                target.copy_(plan.merge_tensor(*triple, name=name))


def _bind(model: torch.nn.Module, sources: SourceCache) -> list[tuple[str, torch.Tensor, tuple]]:
    """Pair each distinct live parameter (and persistent buffer) with its cached sources."""
    live: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        identity = id(param)
        if identity in seen:
            continue  # a tied weight appears once, under its first name
        seen.add(identity)
        live[name] = param.data
    for name, buffer in model.named_buffers():
        if name in sources.tensors:
            live[name] = buffer
    all_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    live_tied = HEAD in all_names and HEAD not in live
    problems = []
    if live_tied and not sources.tie_word_embeddings:
        problems.append(
            "the model ties lm_head to the input embedding, but the sources mix tied and untied embeddings, "
            "so the merged lm_head differs from the merged embedding; load the live model with tie_word_embeddings=False"
        )
    targets = []
    for name, tensor in live.items():
        key = EMBED if (name == HEAD and sources.tie_word_embeddings) else name
        triple = sources.tensors.get(key)
        if triple is None:
            problems.append(f"the model has {name}, which the sources lack")
            continue
        if tuple(tensor.shape) != tuple(triple[0].shape):
            problems.append(f"{name}: model shape {list(tensor.shape)}, sources {list(triple[0].shape)}")
        if tensor.device != triple[0].device and triple[0].device.type != "cpu":
            problems.append(
                f"{name}: the model is on {tensor.device}, the source cache on {triple[0].device}; move one to the other"
            )
            break
        targets.append((name, tensor, triple))
    covered = set(live) | ({HEAD} if live_tied else set())
    lacking = [n for n in sources.tensors if n not in covered]
    if lacking:
        shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
        problems.append(f"the model lacks {shown}, which the sources have")
    if problems:
        raise MergeError(
            "the live model does not match the source cache:\n" + "\n".join(f"  - {p}" for p in problems[:12])
        )
    return targets
