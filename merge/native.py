"""The weighted-sum kernel in C (merge/wsum.c), compiled once per machine and called through ctypes.

Why: the chunked torch loop ("eager") makes seven passes per chunk and runs at ~5x the
time of a bf16 `copy_`; torch.compile's kernel reaches ~2.3x but costs 4-20 s to compile
in every process. This kernel reads each source once and writes once (~2.4x a `copy_`)
and costs one `cc` run of ~0.2 s per machine, cached on disk; later processes load it in
about a millisecond. Results are bit-identical to the eager kernel (same fp32 operations,
same fused multiply-add, same rounding).

Where: `$SWEEP_KERNEL_CACHE`, else `~/.cache/sweep/kernels`, one `.so` per source text,
compiler and CPU (the build uses -march=native; a shared home on a mixed cluster gets
one file per CPU model). Compiler: `$CC`, else `cc`. With no compiler, or on a failed
build, `available()` is False and merge/kernels.py uses another kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("wsum.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared")
TYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the kernel is unavailable, once a build failed


def cache_dir() -> Path:
    return Path(os.environ.get("SWEEP_KERNEL_CACHE") or Path.home() / ".cache" / "sweep" / "kernels")


def _compiler() -> list[str] | None:
    """$CC (which may carry flags, e.g. "gcc -m64"), else cc; None when not on PATH."""
    words = shlex.split(os.environ.get("CC") or "cc")
    path = shutil.which(words[0]) if words else None
    return [path, *words[1:]] if path else None


def _cpu_identity() -> str:
    """The CPU model and feature flags: what -march=native compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [
        line
        for line in text.splitlines()
        if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")
    ]
    return "\n".join(sorted(set(keep)))


def library_path(compiler: list[str]) -> Path:
    version = subprocess.run([compiler[0], "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), " ".join(compiler), version, " ".join(FLAGS), platform.machine(), _cpu_identity()]
        ).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"wsum-{key}.so"


def _build(compiler: list[str], target: Path) -> None:
    """Compile into a temporary file, then rename: concurrent workers never load a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        result = subprocess.run(
            [*compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler[0]} failed: {(result.stderr or result.stdout).strip()[:400]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled library (building it on first use), or None when it cannot be built here."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH")
            path = library_path(compiler)
            if not path.exists():
                _build(compiler, path)
            lib = ctypes.CDLL(str(path))
            lib.sweep_weighted_sum.argtypes = [
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_float),
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_int64,
            ]
            lib.sweep_weighted_sum.restype = ctypes.c_int
            lib.sweep_has_f16.restype = ctypes.c_int
            _lib = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = f"{type(exc).__name__}: {exc}"
        return _lib


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str | None:
    load()
    return _error


def supports(out: torch.Tensor, sources: Sequence[torch.Tensor]) -> bool:
    """True when this kernel can compute `out` from `sources` (CPU, contiguous, fp32/bf16/fp16)."""
    if out.device.type != "cpu" or not out.is_contiguous():
        return False
    lib = load()
    if lib is None:
        return False
    dtypes = {out.dtype, *(s.dtype for s in sources)}
    if not dtypes <= TYPE_CODES.keys() or (torch.float16 in dtypes and not lib.sweep_has_f16()):
        return False
    return all(s.device.type == "cpu" and s.is_contiguous() and s.numel() == out.numel() for s in sources)


def weighted_sum_range(
    out: torch.Tensor, sources: Sequence[torch.Tensor], weights: Sequence[float], start: int, stop: int
) -> None:
    """Elements [start, stop) of out = sum_i weights[i] * sources[i] (check `supports` first).

    ctypes releases the GIL for the call, so threads may compute disjoint ranges at once.
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"native weighted sum: the kernel is not available here ({_error}); check supports() first")
    k = len(sources)
    pointers = (ctypes.c_void_p * k)(*[s.data_ptr() for s in sources])
    types = (ctypes.c_int * k)(*[TYPE_CODES[s.dtype] for s in sources])
    factors = (ctypes.c_float * k)(*[float(w) for w in weights])
    if lib.sweep_weighted_sum(k, pointers, types, factors, out.data_ptr(), TYPE_CODES[out.dtype], start, stop) != 0:
        raise RuntimeError("native weighted sum: unsupported dtype (check supports() first)")
