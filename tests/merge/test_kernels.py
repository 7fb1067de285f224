"""The fused weighted sum: every kernel keeps fp32 accuracy and rounds once into the output dtype."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from merge import kernels, native
from tests.merge.helpers import bf16_ulp

FP32_EPS = 2.0**-24
WEIGHTS = (0.21, 0.49, 0.3)


def sources(n, dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(d) for d in dtypes]


def check(out, srcs, weights):
    exact = sum(w * s.double() for w, s in zip(weights, srcs, strict=True))
    scale = sum(abs(w) * s.double().abs() for w, s in zip(weights, srcs, strict=True))
    bound = 4 * FP32_EPS * scale
    if out.dtype == torch.bfloat16:
        bound = bound + bf16_ulp(exact)
    elif out.dtype == torch.float16:
        bound = bound + exact.abs() * 2.0**-10 + 2.0**-24  # one fp16 ulp (10 mantissa bits; subnormal floor)
    assert ((out.double() - exact).abs() <= bound).all()


@pytest.fixture
def kernel_mode():
    before = kernels.get_kernel()
    yield kernels.set_kernel
    kernels.set_kernel(before)


@pytest.mark.parametrize(
    "dtypes, out_dtype",
    [
        ((torch.float32,) * 3, torch.float32),
        ((torch.bfloat16,) * 3, torch.bfloat16),
        ((torch.bfloat16, torch.float32, torch.float16), torch.bfloat16),
    ],
)
def test_eager_kernel_sums_in_fp32_and_rounds_once(kernel_mode, dtypes, out_dtype):
    kernel_mode("eager")
    srcs = sources(3 * kernels.CPU_CHUNK + 17, dtypes)  # several chunks and a ragged tail
    out = torch.empty(srcs[0].shape, dtype=out_dtype)
    kernels.weighted_sum_into(out, srcs, WEIGHTS)
    check(out, srcs, WEIGHTS)


def test_eager_kernel_splits_across_threads_with_the_same_result(kernel_mode):
    kernel_mode("eager")
    srcs = sources(5 * kernels.CPU_CHUNK + 3, (torch.bfloat16,) * 3)
    one, two = torch.empty_like(srcs[0]), torch.empty_like(srcs[0])
    kernels.weighted_sum_into(one, srcs, WEIGHTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernels.weighted_sum_into(two, srcs, WEIGHTS)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.slow
def test_compiled_kernel_meets_the_same_contract(kernel_mode):
    """torch.compile (inductor): ~4 s with a warm cache, ~20 s cold."""
    kernel_mode("compiled")
    for n in (1000, 4099):  # dynamic shapes: one compile serves both sizes
        srcs = sources(n, (torch.bfloat16,) * 3, seed=n)
        out = torch.empty(n, dtype=torch.bfloat16)
        kernels.weighted_sum_into(out, srcs, WEIGHTS)
        check(out, srcs, WEIGHTS)


needs_native = pytest.mark.skipif(
    not native.available(), reason=f"native kernel not built here: {native.unavailable_reason()}"
)
MIXES = [
    ((torch.float32,) * 3, torch.float32),
    ((torch.bfloat16,) * 3, torch.bfloat16),
    ((torch.bfloat16,) * 3, torch.float32),
    ((torch.float16,) * 3, torch.float16),
    ((torch.bfloat16, torch.float32, torch.float16), torch.bfloat16),
    ((torch.float32, torch.bfloat16), torch.float16),
]


@needs_native
@pytest.mark.parametrize("dtypes, out_dtype", MIXES)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_kernel_equals_eager_bit_for_bit(kernel_mode, dtypes, out_dtype, threads):
    srcs = sources(5 * kernels.CPU_CHUNK + 2053, dtypes)  # several 2048-element blocks and a ragged tail
    weights = WEIGHTS[: len(dtypes)]
    fast, slow = torch.empty(srcs[0].shape, dtype=out_dtype), torch.empty(srcs[0].shape, dtype=out_dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernel_mode("native")
        kernels.weighted_sum_into(fast, srcs, weights)
        kernel_mode("eager")
        kernels.weighted_sum_into(slow, srcs, weights)
    finally:
        torch.set_num_threads(before)
    assert (
        torch.equal(fast.view(torch.uint8), slow.view(torch.uint8))
        if out_dtype != torch.float32
        else torch.equal(fast, slow)
    )
    check(fast, srcs, weights)


@needs_native
def test_native_kernel_reads_views_at_odd_offsets(kernel_mode):
    """Mapped safetensors tensors start wherever the file puts them: any element offset works."""
    n = 3 * 2048 + 5
    backing = sources(n + 7, (torch.bfloat16, torch.float32, torch.bfloat16), seed=9)
    views = [b[offset : offset + n] for b, offset in zip(backing, (1, 3, 7), strict=True)]
    out = torch.empty(n + 1, dtype=torch.bfloat16)[1:]  # the output at an odd offset too
    kernel_mode("native")
    kernels.weighted_sum_into(out, views, WEIGHTS)
    expected = torch.empty(n, dtype=torch.bfloat16)
    kernel_mode("eager")
    kernels.weighted_sum_into(expected, views, WEIGHTS)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


@needs_native
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_native_kernel_rounds_like_torch(kernel_mode, out_dtype):
    """Ties to even, overflow to inf, subnormals, signed zeros, inf and NaN: as `.to(dtype)` rounds."""
    kernel_mode("native")
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    values = bits.view(torch.float32)  # every exponent, NaN payloads included
    ties = (torch.arange(-5000, 5000, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)  # bf16 halfway points
    special = torch.tensor(
        [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 3.4e38, -3.4e38, 1e-40, -1e-45, 65520.0, 65519.0, 6e-8]
    )
    x = torch.cat([values, ties, special])
    out = torch.empty(x.shape, dtype=out_dtype)
    kernels.weighted_sum_into(out, [x], [1.0])
    want = x.to(out_dtype)
    nan = want.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int16), want[~nan].view(torch.int16))  # bit for bit, -0.0 included


KERNEL_PROBE = """
import json, warnings
import torch
from merge import kernels, native
warnings.simplefilter("always")
srcs = [torch.full((300_000,), v, dtype=torch.bfloat16) for v in (1.0, 2.0, 4.0)]
out = torch.empty_like(srcs[0])
with warnings.catch_warnings(record=True) as caught:
    kernels.weighted_sum_into(out, srcs, [0.5, 0.25, 0.125])
    kernels.weighted_sum_into(out, srcs, [0.5, 0.25, 0.125])
print(json.dumps({"value": float(out[0]), "native": native.available(), "reason": native.unavailable_reason(),
                  "warnings": [str(w.message) for w in caught]}))
"""


def run_probe(tmp_path, **env) -> dict:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_PROBE],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=300,
        env={**os.environ, "SWEEP_KERNEL_CACHE": str(tmp_path / "kernels"), "SWEEP_MERGE_KERNEL": "auto", **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_native
def test_native_kernel_is_built_once_per_machine_and_reused(tmp_path):
    first = run_probe(tmp_path)
    built = list((tmp_path / "kernels").glob("wsum-*.so"))
    assert first["native"] and first["value"] == 1.5 and len(built) == 1 and first["warnings"] == []
    stamp = built[0].stat().st_mtime_ns
    second = run_probe(tmp_path)
    assert second["native"] and second["value"] == 1.5
    assert (
        list((tmp_path / "kernels").glob("*")) == built and built[0].stat().st_mtime_ns == stamp
    )  # loaded, not rebuilt


def test_without_a_c_compiler_auto_falls_back_with_one_warning(tmp_path):
    result = run_probe(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert result["value"] == 1.5 and not result["native"]
    assert "no C compiler" in result["reason"]
    assert len(result["warnings"]) == 1 and "native kernel unavailable" in result["warnings"][0]
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_a_failing_compiler_is_reported_not_fatal(tmp_path):
    fake = tmp_path / "broken-cc"
    fake.write_text("#!/bin/sh\necho 'broken-cc: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = run_probe(tmp_path, CC=str(fake))
    assert result["value"] == 1.5 and not result["native"]
    assert "broken-cc: internal error" in result["reason"]


def test_native_mode_without_the_kernel_says_why(kernel_mode):
    kernel_mode("native")
    out = torch.empty(10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="cannot run here"):
        kernels.weighted_sum_into(out, [torch.zeros(10, dtype=torch.float64)], [1.0])


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        kernels.set_kernel("fast")
