"""safetensors dtype tags and torch dtypes: the one table that checkpoint inspection (pickle
weights) and checkpoint I/O both read."""

from __future__ import annotations

import torch

from merge.errors import MergeError

# safetensors dtype tag <-> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def torch_dtype(tag: str) -> torch.dtype:
    try:
        return DTYPES[tag]
    except KeyError:
        raise MergeError(f"unsupported tensor dtype {tag!r} in a safetensors file") from None
