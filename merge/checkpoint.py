"""Checkpoint inspection from config.json and safetensors headers only (never the weights).

`inspect_checkpoint(path)` reads the JSON header of each safetensors file (8-byte
little-endian length, then JSON), so checking a 7B trio costs milliseconds.
`compatibility_problems({...})` lists every difference that would make a merge wrong.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from merge.errors import MergeError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Tensors whose first dimension is the vocabulary.
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype tag, e.g. "BF16", "F32"
    shape: tuple[int, ...]
    file: str  # shard file name


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size")

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def needs_remote_code(self) -> bool:
        return "auto_map" in self.config

    @property
    def files(self) -> list[str]:
        return sorted({t.file for t in self.tensors.values()})

    def logical_tensors(self) -> dict[str, TensorInfo]:
        """Tensors, with a tied model's lm_head.weight standing for its embedding."""
        tensors = dict(self.tensors)
        embed = tensors.get("model.embed_tokens.weight")
        if self.tie_word_embeddings and "lm_head.weight" not in tensors and embed is not None:
            tensors["lm_head.weight"] = embed
        return tensors

    @property
    def num_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.files)


def read_safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets)."""
    try:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:  # bytes: no real header is this large
                raise MergeError(f"{file}: not a safetensors file (header length {length})")
            header = json.loads(fh.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MergeError(f"{file}: cannot read the safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    return header


def inspect_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> CheckpointInfo:
    """Read config.json and every safetensors header of an HF checkpoint folder.

    Raises MergeError naming the path when something is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise MergeError(f"{path}: no such checkpoint folder")
    if not path.is_dir():
        raise MergeError(f"{path}: expected an HF checkpoint folder, found a file")
    config_file = path / "config.json"
    if not config_file.exists():
        raise MergeError(f"{path}: no config.json (not an HF checkpoint folder)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"{config_file}: cannot parse ({exc})") from None

    index_file = path / INDEX_NAME
    if index_file.exists():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise MergeError(f"{index_file}: cannot parse the weight map ({exc})") from None
        shard_names = sorted(set(weight_map.values()))
    elif (path / SINGLE_NAME).exists():
        shard_names = [SINGLE_NAME]
    else:
        shard_names = sorted(p.name for p in path.glob("*.safetensors"))
    if not shard_names:
        if any((path / n).exists() for n in PICKLE_NAMES):
            if not allow_pickle:
                raise MergeError(
                    f"{path}: only pickle .bin weights found; they can run arbitrary code when loaded. "
                    "Convert to safetensors, or allow pickle explicitly"
                )
            return CheckpointInfo(path=path, config=config, tensors=_pickle_tensors(path))
        raise MergeError(f"{path}: no safetensors weights found")

    tensors: dict[str, TensorInfo] = {}
    for shard in shard_names:
        file = path / shard
        if not file.exists():
            raise MergeError(f"{path}: the index names shard {shard}, which is missing")
        for name, meta in read_safetensors_header(file).items():
            tensors[name] = TensorInfo(dtype=meta["dtype"], shape=tuple(meta["shape"]), file=shard)
    return CheckpointInfo(path=path, config=config, tensors=tensors)


def _pickle_tensors(path: Path) -> dict[str, TensorInfo]:
    """Tensor infos of a pickle checkpoint (pytorch_model.bin, or its index and shards).

    Loads with torch.load(mmap=True, weights_only=True): shapes come from the mapped file
    and no weights are read into memory.
    """
    import torch  # heavy, and needed only for pickle checkpoints

    from merge.dtypes import TAGS

    index_file = path / PICKLE_NAMES[1]
    if index_file.exists():
        try:
            shard_names = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise MergeError(f"{index_file}: cannot parse the weight map ({exc})") from None
    else:
        shard_names = [PICKLE_NAMES[0]]
    tensors: dict[str, TensorInfo] = {}
    for shard in shard_names:
        try:
            state = torch.load(path / shard, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise MergeError(f"{path / shard}: cannot load the pickle weights ({type(exc).__name__}: {exc})") from None
        for name, tensor in state.items():
            if tensor.dtype not in TAGS:
                raise MergeError(f"{path / shard}: tensor {name} has unsupported dtype {tensor.dtype}")
            tensors[name] = TensorInfo(dtype=TAGS[tensor.dtype], shape=tuple(tensor.shape), file=shard)
    return tensors


def compatibility_problems(infos: dict[str, CheckpointInfo], *, vocab: str = "strict", limit: int = 5) -> list[str]:
    """Every reason the checkpoints cannot be merged tensor by tensor, as readable lines.

    `infos` maps a role ("pretrained", ...) to its CheckpointInfo; the first is the reference.
    `vocab` is the vocabulary policy: "strict" refuses a size mismatch, "truncate" and
    "pad" accept it (the vocab dimension is cut to the smallest or padded to the largest).
    """
    problems: list[str] = []
    roles = list(infos)
    ref_role, ref = roles[0], infos[roles[0]]
    for role, info in infos.items():
        if info.needs_remote_code:
            problems.append(
                f"{role} ({info.path}) needs trust_remote_code (config.json has auto_map); sweep only merges built-in transformers architectures"
            )
    for role in roles[1:]:
        info = infos[role]
        if info.architecture != ref.architecture or info.model_type != ref.model_type:
            problems.append(
                f"architecture mismatch: {ref_role} is {ref.architecture} ({ref.model_type}), "
                f"{role} is {info.architecture} ({info.model_type})"
            )
            continue
        vocab_differs = info.vocab_size != ref.vocab_size
        if vocab_differs and vocab == "strict":
            problems.append(
                f"vocabulary size mismatch: {ref_role} has {ref.vocab_size}, {role} has {info.vocab_size}. "
                "Set merge.vocab: truncate (keep the first min(vocab) rows; safe when the extra tokens are "
                "added special tokens) or pad (grow to the largest vocab, filling from the model that has the rows)"
            )
        ref_tensors, tensors = ref.logical_tensors(), info.logical_tensors()
        missing = [n for n in ref_tensors if n not in tensors]
        extra = [n for n in tensors if n not in ref_tensors]
        if missing:
            problems.append(f"tensor names differ: {role} lacks {_first(missing, limit)} (present in {ref_role})")
        if extra:
            problems.append(f"tensor names differ: {role} has {_first(extra, limit)} (absent from {ref_role})")
        shape_diffs = []
        for name, ref_t in ref_tensors.items():
            other = tensors.get(name)
            if other is None or other.shape == ref_t.shape:
                continue
            if vocab_differs and name in VOCAB_TENSORS and other.shape[1:] == ref_t.shape[1:]:
                continue  # reported (or allowed) as a vocabulary mismatch above
            shape_diffs.append(f"{name} {list(ref_t.shape)} vs {list(other.shape)}")
        if shape_diffs:
            problems.append(f"tensor shapes differ between {ref_role} and {role}: {_first(shape_diffs, limit)}")
    return problems


def _first(items: list[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
