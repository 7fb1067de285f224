"""The fused weighted sum `out = sum_i w_i * source_i`: fp32 arithmetic, one rounding to out's dtype.

Three implementations of one contract:

- "native": merge/wsum.c, compiled once per machine with the system C compiler (~0.2 s,
  cached on disk; see merge/native.py) and called through ctypes. One pass: each source
  read once, `out` written once, ~2.4x a bf16 `copy_`. CPU only. Bit-identical to eager.
- "compiled": one `torch.compile`d elementwise kernel (inductor: C++/OpenMP on CPU,
  Triton on CUDA). It reads each source once and writes `out` once: about 2x the time
  of `out.copy_(source)` on bf16 (measured 2.0x on this 2-core box), the best a
  3-reads-1-write kernel can do. Compiling costs ~4 s with a warm inductor cache (~20 s
  cold) once per process, so it is used only for tensors of at least
  `COMPILE_MIN_NUMEL` elements.
- "eager": a chunked loop of plain torch ops over L2-sized fp32 chunks. Always
  available; ~5x a `copy_` on bf16 CPU tensors (each mixed-dtype op converts first).

Mode: `set_kernel("auto" | "native" | "compiled" | "eager")` or `SWEEP_MERGE_KERNEL`.
"auto": on CPU the native kernel; where it cannot be built (no C compiler), the compiled
kernel for large tensors, else eager; on CUDA the compiled kernel for large tensors. A
failed compile falls back to eager with one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

KERNEL_MODES = ("auto", "native", "compiled", "eager")
# elements: below this the eager loop costs < ~1 ms, less than any compile would.
COMPILE_MIN_NUMEL = 1 << 20
# elements: an fp32 chunk of 64 Ki = 256 KiB; acc + tmp stay in a 2 MiB L2.
CPU_CHUNK = 1 << 16
# elements: on CUDA per-op launch overhead matters more than cache size.
CUDA_CHUNK = 1 << 24

_mode = os.environ.get("SWEEP_MERGE_KERNEL") or "auto"  # checked by check_mode() before any merge
_compiled_fn = None
_compile_failed = False
_native_warned = False


def set_kernel(mode: str) -> None:
    """Choose the kernel: "auto" (native on CPU, compiled for large tensors otherwise, else eager), "native", "compiled" or "eager"."""
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode must be one of {KERNEL_MODES}, got {mode!r}")
    _mode = mode


def check_mode() -> None:
    """MergeError naming SWEEP_MERGE_KERNEL when it holds no known mode (merges call this first)."""
    if _mode not in KERNEL_MODES:
        from merge.errors import MergeError

        raise MergeError(f"SWEEP_MERGE_KERNEL must be one of {', '.join(KERNEL_MODES)}, got {_mode!r}")


def get_kernel() -> str:
    return _mode


def is_compiled() -> bool:
    """True once the compiled kernel exists in this process (using it again costs nothing extra)."""
    return _compiled_fn is not None and not _compile_failed


@torch.no_grad()
def weighted_sum_into(
    out: torch.Tensor, sources: Sequence[torch.Tensor], weights: Sequence[float], *, allow_compile: bool = True
) -> None:
    """out[:] = sum_i weights[i] * sources[i], accumulated in float32, rounded once into out.dtype.

    `out` must be contiguous; sources must have out's number of elements and live on
    out's device (any float dtype each). Weights are used as given (no normalization).
    allow_compile=False keeps mode "auto" from paying for a compile (a one-off job too
    small to earn it back); mode "compiled" compiles regardless.
    """
    if len(sources) != len(weights) or not sources:
        raise ValueError("weighted_sum_into needs one weight per source, and at least one source")
    check_mode()
    flat_out = out.view(-1)
    flat_sources = [s.reshape(-1) for s in sources]
    if _use_native(flat_out, flat_sources):
        _run_native(flat_out, flat_sources, weights)
        return
    if _use_compiled(flat_out, allow_compile):
        if _run_compiled(flat_out, flat_sources, weights):
            return
    _run_eager(flat_out, flat_sources, weights)


def _use_native(out: torch.Tensor, sources: list[torch.Tensor]) -> bool:
    if _mode not in ("auto", "native"):
        return False
    from merge import native

    if native.supports(out, sources):
        return True
    global _native_warned
    if _mode == "auto" and out.device.type == "cpu" and not _native_warned and native.unavailable_reason() is not None:
        _native_warned = True
        warnings.warn(
            f"merge: native kernel unavailable ({native.unavailable_reason()}); using the torch kernels",
            RuntimeWarning,
            stacklevel=4,
        )
    if _mode == "native":
        reason = (
            native.unavailable_reason()
            or f"it handles contiguous fp32/bf16/fp16 CPU tensors, not {out.dtype} on {out.device}"
        )
        raise RuntimeError(f"merge kernel 'native' cannot run here: {reason}")
    return False


def _run_native(out: torch.Tensor, sources: list[torch.Tensor], weights: Sequence[float]) -> None:
    from merge import native

    _split_across_threads(
        out.numel(), lambda start, stop: native.weighted_sum_range(out, sources, weights, start, stop)
    )


def _split_across_threads(n: int, run_range: Callable[[int, int], None]) -> None:
    """run_range(start, stop) over [0, n): one range per torch thread for large n, else one call.

    Both CPU kernels release the GIL (torch ops; ctypes calls), so the ranges run at once.
    """
    threads = torch.get_num_threads()
    if threads > 1 and n >= 4 * CPU_CHUNK:
        step = -(-n // threads)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda start: run_range(start, min(n, start + step)), range(0, n, step)))
        return
    run_range(0, n)


def _use_compiled(out: torch.Tensor, allow_compile: bool) -> bool:
    if _mode in ("eager", "native") or _compile_failed:
        return False
    if _mode == "compiled":
        return True
    return out.numel() >= COMPILE_MIN_NUMEL and (allow_compile or is_compiled())


def _fused(out: torch.Tensor, sources: list[torch.Tensor], weights: torch.Tensor) -> None:
    acc = sources[0].to(torch.float32) * weights[0]
    for i in range(1, len(sources)):
        acc = acc + sources[i].to(torch.float32) * weights[i]
    out.copy_(acc)


_weight_tensors: dict[tuple, torch.Tensor] = {}


def _weights_on(weights: Sequence[float], device: torch.device) -> torch.Tensor:
    key = (tuple(float(w) for w in weights), str(device))
    tensor = _weight_tensors.get(key)
    if tensor is None:
        if len(_weight_tensors) > 64:  # one entry per trial's weights: keep the dict small
            _weight_tensors.clear()
        tensor = _weight_tensors[key] = torch.tensor(key[0], dtype=torch.float32, device=device)
    return tensor


def _run_compiled(out: torch.Tensor, sources: list[torch.Tensor], weights: Sequence[float]) -> bool:
    """Run the compiled kernel; False (and eager from now on) when compiling fails."""
    global _compiled_fn, _compile_failed
    try:
        if _compiled_fn is None:
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = 1  # no compile worker pool inside a sweep worker
            _compiled_fn = torch.compile(_fused, dynamic=True, fullgraph=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _compiled_fn(out, sources, _weights_on(weights, out.device))
        return True
    except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means: use eager
        if _mode == "compiled":
            raise
        _compile_failed = True
        warnings.warn(
            f"merge: torch.compile kernel unavailable ({type(exc).__name__}: {str(exc)[:200]}); using the eager kernel",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


def _run_eager(out: torch.Tensor, sources: list[torch.Tensor], weights: Sequence[float]) -> None:
    if out.device.type == "cpu":
        _split_across_threads(
            out.numel(), lambda start, stop: _eager_range(out, sources, weights, start, stop, CPU_CHUNK)
        )
    else:
        _eager_range(out, sources, weights, 0, out.numel(), CUDA_CHUNK)


def _eager_range(
    out: torch.Tensor, sources: list[torch.Tensor], weights: Sequence[float], start: int, stop: int, chunk: int
) -> None:
    size = min(chunk, stop - start)
    acc = torch.empty(size, dtype=torch.float32, device=out.device)
    tmp = (
        torch.empty(size, dtype=torch.float32, device=out.device)
        if any(s.dtype != torch.float32 for s in sources)
        else None
    )
    for s in range(start, stop, chunk):
        e = min(stop, s + chunk)
        a = acc[: e - s]
        first = sources[0][s:e]
        if first.dtype == torch.float32:
            torch.mul(first, weights[0], out=a)
        else:
            a.copy_(first)  # exact widening to fp32; a mixed-dtype mul would round in bf16
            a.mul_(weights[0])
        for source, weight in zip(sources[1:], weights[1:], strict=True):
            x = source[s:e]
            if x.dtype != torch.float32 and tmp is not None:  # tmp exists whenever a source is not fp32
                t = tmp[: e - s]
                t.copy_(x)
                x = t
            a.add_(x, alpha=weight)
        out[s:e].copy_(a)
