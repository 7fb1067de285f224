"""Streaming disk-to-disk BAI merge: three checkpoints in, one sharded safetensors checkpoint out.

Tensor by tensor: map the three sources (zero copy), combine them into one reusable
staging buffer (the fused fp32 kernel for linear recipes, the stage methods otherwise),
append its bytes to the open output shard, then drop the sources' pages from the
resident set. Peak memory: the staging buffer (the largest output tensor) plus, for
non-linear methods, a few fp32 copies of one tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from merge.checkpoint import CheckpointInfo
from merge.errors import MergeError
from merge.io import (
    DTYPE_NAMES,
    CheckpointReader,
    SafetensorsWriter,
    copy_side_files,
    parse_device,
    parse_dtype,
    parse_size,
    plan_shards,
    shard_names,
    torch_dtype,
    weight_files,
    write_index,
)
from merge.kernels import check_mode, weighted_sum_into
from merge.layout import Layout, TensorPlan, fit_rows, load_infos, output_dtype, plan_layout
from merge.plan import ROLES, MergePlan

RECORD_NAME = "merge_recipe.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"  # bytes per output shard (HF's usual size); bounds no memory here
# bytes of output: where the native C kernel is unavailable (no C compiler; or a CUDA merge),
# below this a one-off merge does not torch.compile the fused kernel (~5 s with a warm
# inductor cache); measured 1.9 GB/s eager vs 3.2 GB/s compiled, so ~4 GB of output (a
# ~2B-parameter bf16 model) is where the compile starts to pay for itself.
DISK_COMPILE_MIN_BYTES = 4 * 10**9

Progress = Callable[[int, int], None]  # (bytes read + written so far, total)


@dataclass(frozen=True)
class MergeRecord:
    """What was merged, how: written as merge_recipe.json next to the merged weights.

    `plan` is the merge as run: its models are the sources' absolute paths and its dtype
    the one written ("auto" when the inputs' dtype was kept)."""

    plan: MergePlan

    @property
    def sources(self) -> dict[str, str]:
        return dict(self.plan.models)

    @property
    def dtype(self) -> str:
        return self.plan.dtype

    @property
    def vocab(self) -> str:
        return self.plan.vocab

    @property
    def tokenizer_source(self) -> str:
        return self.plan.tokenizer_source

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "sources": self.sources,
            "dtype": self.dtype,
            "vocab": self.vocab,
            "tokenizer_source": self.tokenizer_source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeRecord:
        plan = MergePlan.from_dict(data["plan"])
        return cls(
            replace(
                plan,
                models=dict(data["sources"]),
                dtype=data["dtype"],
                vocab=data["vocab"],
                tokenizer_source=data["tokenizer_source"],
            )
        )


def merge_checkpoints(
    plan: MergePlan | None = None,
    *,
    out: str | Path,
    device: str | torch.device = "cpu",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    allow_pickle: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    **recipe: Any,
) -> Path:
    """Merge three HF checkpoints as `plan` says into `out` and return it (a folder
    `from_pretrained` loads).

    `plan` (a MergePlan with its models) says what to merge; without one, `recipe` holds
    `MergePlan.create`'s keywords: pretrained=, instruct=, reasoning= (folders), alpha=,
    beta=, stage1_method=, stage1_params=, stage2_method=, stage2_params=, dtype=,
    vocab=, tokenizer_source=, allow_extrapolation=.

    Every check runs before any weight is read, and all problems found are raised as one
    MergeError: the recipe (ratios in [0, 1] unless allow_extrapolation, methods and
    parameters), dtype, device, shard size, the output folder (must be empty or absent
    unless force; never one of the inputs), the tokenizer source, and model compatibility.

    dtype: None/"auto" keeps the inputs' dtype. tokenizer_source: a role ("instruct",
    "reasoning", "pretrained") or a folder; tokenizer files, chat template and
    generation config come from it, and config.json too when it has one (else from
    instruct). threads: torch threads for the arithmetic (None: leave as set).
    """
    if plan is not None and recipe:
        raise TypeError(f"merge_checkpoints: give a plan or the recipe's keywords, not both ({', '.join(recipe)})")
    problems: list[str] = []
    draft = plan if plan is not None else MergePlan.create(**recipe, check=False)  # checked below, with the rest
    checked = _collect(problems, draft.checked)
    out_dtype = _collect(problems, lambda: parse_dtype(draft.dtype))
    target = _collect(problems, lambda: parse_device(device))
    _collect(problems, check_mode)
    shard_bytes = _collect(problems, lambda: parse_size(max_shard_size))
    out = Path(out).expanduser().absolute()
    inputs = {role: draft.models.get(role) for role in ("pretrained", "instruct", "reasoning")}
    problems += [f"no {role} checkpoint given" for role, path in inputs.items() if path is None]
    problems += _out_problems(out, inputs, force=force)
    token_dir = _tokenizer_dir(draft.tokenizer_source, inputs, problems)
    infos: Any = None
    if all(inputs.values()):
        infos = _collect(problems, lambda: load_infos(**inputs, vocab=draft.vocab, allow_pickle=allow_pickle))
    if problems:
        raise MergeError.collected("cannot merge", problems)

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        readers = {role: CheckpointReader(infos[role]) for role in ROLES}
        try:
            layout = plan_layout(infos, vocab=draft.vocab, order=readers["pretrained"].location)
            _prepare_out(out, force=force)
            _write_weights(out, layout, readers, checked, out_dtype, target, shard_bytes, progress)
        finally:
            for reader in readers.values():
                reader.close()
    finally:
        torch.set_num_threads(old_threads)
    _write_config(out, infos, token_dir, layout, out_dtype)
    copy_side_files(token_dir, out)
    ran = replace(
        checked,
        models={role: str(Path(infos[role].path).absolute()) for role in ROLES},
        dtype=_dtype_name(out_dtype) or "auto",
    )
    (out / RECORD_NAME).write_text(json.dumps(MergeRecord(ran).to_dict(), indent=2) + "\n")
    return out


def merge_io_bytes(out: str | Path) -> int:
    """Bytes read plus written by the merge that produced `out` (from its merge record)."""
    out = Path(out)
    record = json.loads((out / RECORD_NAME).read_text())
    read = 0
    for path in record["sources"].values():
        read += _weights_size(Path(path))
    return read + _weights_size(out)


def _weights_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) + sum(
        f.stat().st_size for f in folder.glob("*.bin")
    )


# ---------------------------------------------------------------- checks


def _collect(problems: list[str], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except MergeError as exc:
        problems.extend(exc.problems)
        return None


def _out_problems(out: Path, inputs: dict[str, Any], *, force: bool) -> list[str]:
    for role, path in inputs.items():
        if path is not None and Path(path).expanduser().absolute() == out:
            return [f"the output folder {out} is the {role} checkpoint: choose another --out"]
    if out.exists() and not out.is_dir():
        return [f"the output {out} is a file, not a folder"]
    if out.is_dir() and any(out.iterdir()) and not force:
        return [
            f"the output folder {out} exists and is not empty; choose another, or overwrite it with --force (force=True)"
        ]
    return []


def _tokenizer_dir(source: str | Path, inputs: dict[str, Any], problems: list[str]) -> Path:
    if str(source) in inputs:
        return Path(inputs[str(source)] or ".")
    path = Path(source).expanduser()
    if not path.is_dir():
        problems.append(f"tokenizer source {source}: not a role (instruct, reasoning, pretrained) nor a folder")
    return path


# ---------------------------------------------------------------- writing


def _prepare_out(out: Path, *, force: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for file in list(weight_files(out)):  # stale shards would mix into the new checkpoint
            file.unlink()


def _write_weights(
    out: Path,
    layout: Layout,
    readers: dict[str, CheckpointReader],
    plan: MergePlan,
    out_dtype: torch.dtype | None,
    device: torch.device,
    shard_bytes: int,
    progress: Progress | None,
) -> None:
    """Compute each tensor into one of two staging buffers while a writer thread appends
    the other's bytes to the open shard: arithmetic and file writes overlap."""
    dtypes = {t.name: output_dtype(t, out_dtype) for t in layout.tensors}
    sizes = [(t.name, _numel(t.shape) * dtypes[t.name].itemsize) for t in layout.tensors]
    out_bytes = dict(sizes)
    read_bytes = {
        t.name: sum(
            _numel(readers[r].info.tensors[s].shape) * torch_dtype(readers[r].info.tensors[s].dtype).itemsize
            for r, s in zip(ROLES, t.sources, strict=True)
        )
        for t in layout.tensors
    }
    total = sum(out_bytes.values()) + sum(read_bytes.values())
    allow_compile = sum(out_bytes.values()) >= DISK_COMPILE_MIN_BYTES
    plans = {t.name: t for t in layout.tensors}
    groups = plan_shards(sizes, shard_bytes)
    files = shard_names(len(groups))
    order = [n for group in groups for n in group]
    following = dict(zip(order, order[1:], strict=False))  # name -> the tensor computed after it
    largest = max([n for _, n in sizes] + [1])
    staging = [torch.empty(largest, dtype=torch.uint8) for _ in range(2)]  # bytes: 2 x the largest output tensor
    pending: list[Future | None] = [None, None]  # the write still reading each staging buffer
    weight_map: dict[str, str] = {}
    writers: list[SafetensorsWriter] = []
    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-writer") as io_thread:
        try:
            turn = 0
            for file, group in zip(files, groups, strict=True):
                writer = SafetensorsWriter(out / file, [(n, dtypes[n], plans[n].shape) for n in group])
                writers.append(writer)
                for name in group:
                    if name in following:
                        for role, stored in zip(ROLES, plans[following[name]].sources, strict=True):
                            readers[role].prefetch(stored)  # the OS reads ahead while we compute
                    previous = pending[turn]
                    if previous is not None:
                        previous.result()  # this buffer's previous bytes are on their way to disk
                    result = _merge_one(plans[name], readers, plan, dtypes[name], device, staging[turn], allow_compile)
                    for role, stored in zip(ROLES, plans[name].sources, strict=True):
                        readers[role].release(stored)
                    pending[turn] = io_thread.submit(writer.write, name, result)
                    turn = 1 - turn
                    weight_map[name] = file
                    done += out_bytes[name] + read_bytes[name]
                    if progress is not None:
                        progress(done, total)
                io_thread.submit(writer.close).result()
        except BaseException:
            for future in pending:
                if future is not None:
                    future.cancel()
            io_thread.shutdown(wait=True)
            for writer in writers:
                writer.abort()
            raise
    if len(files) > 1:
        write_index(out, weight_map, sum(out_bytes.values()))


def _merge_one(
    tensor: TensorPlan,
    readers: dict[str, CheckpointReader],
    plan: MergePlan,
    dtype: torch.dtype,
    device: torch.device,
    staging: torch.Tensor,
    allow_compile: bool,
) -> torch.Tensor:
    raw = [readers[role].get(stored) for role, stored in zip(ROLES, tensor.sources, strict=True)]
    sources = fit_rows(raw, tensor.vocab_rows)
    numel = _numel(tensor.shape)
    out = staging[: numel * dtype.itemsize].view(dtype).view(tensor.shape)
    if not sources[0].is_floating_point():
        out.copy_(sources[0])  # integer buffers: copied from instruct, never averaged
        return out
    if device.type != "cpu":
        sources = [s.to(device, non_blocking=True) for s in sources]
    weights = plan.fused_weights
    if weights is not None:
        if device.type == "cpu":
            weighted_sum_into(out, sources, weights, allow_compile=allow_compile)
        else:
            result = torch.empty(tensor.shape, dtype=dtype, device=device)
            weighted_sum_into(result, sources, weights, allow_compile=allow_compile)
            out.copy_(result)
        return out
    out.copy_(plan.merge_tensor(*sources, name=tensor.name))
    return out


def _write_config(
    out: Path, infos: dict[str, CheckpointInfo], token_dir: Path, layout: Layout, out_dtype: torch.dtype | None
) -> None:
    source = token_dir / "config.json"
    config = json.loads(source.read_text()) if source.exists() else dict(infos["instruct"].config)
    config["tie_word_embeddings"] = layout.tie_word_embeddings
    if layout.vocab_size is not None:
        config["vocab_size"] = layout.vocab_size
    if out_dtype is not None:
        name = _dtype_name(out_dtype)
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = name
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return next((k for k, v in DTYPE_NAMES.items() if v == dtype), None)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
