"""The fused weighted sum: both kernels keep fp32 accuracy and round once into the output dtype."""

from __future__ import annotations

import pytest
import torch

from merge import kernels
from tests.merge.helpers import bf16_ulp

FP32_EPS = 2.0**-24
WEIGHTS = (0.21, 0.49, 0.3)


def sources(n, dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(d) for d in dtypes]


def check(out, srcs, weights):
    exact = sum(w * s.double() for w, s in zip(weights, srcs))
    scale = sum(abs(w) * s.double().abs() for w, s in zip(weights, srcs))
    bound = 4 * FP32_EPS * scale + (bf16_ulp(exact) if out.dtype == torch.bfloat16 else 0)
    assert ((out.double() - exact).abs() <= bound).all()


@pytest.fixture
def kernel_mode():
    before = kernels.get_kernel()
    yield kernels.set_kernel
    kernels.set_kernel(before)


@pytest.mark.parametrize("dtypes, out_dtype", [
    ((torch.float32,) * 3, torch.float32),
    ((torch.bfloat16,) * 3, torch.bfloat16),
    ((torch.bfloat16, torch.float32, torch.float16), torch.bfloat16),
])
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


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        kernels.set_kernel("fast")
