"""CUDA `interpolant` kernels (csrc/cuda/interpolant_cuda.cu) run in the SIMT emulation on the
cases of tests/test_interpolant.py (every path, given and Philox-drawn noise, float32/float64
against the reference, float16/bfloat16 within one rounding), and against the CPU kernels at
shapes whose rows end mid-pair and span several blocks."""

from __future__ import annotations

import contextlib

import pytest
import torch

import test_interpolant as cpu_cases
from _emulated import emulated_cuda
from flowfast import ops

KINDS = cpu_cases.KINDS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(9, 2), (4, 3, 5, 5), (600, 3), (3, 3, 23, 17)])
@pytest.mark.parametrize("name,kind", KINDS)
@pytest.mark.parametrize("given_noise", [True, False])
def test_kernel_matches_reference(emulated, dtype, shape, name, kind, given_noise):
    with emulated_cuda(emulated):
        cpu_cases.test_kernel_matches_reference("cpu", dtype, shape, name, kind, given_noise)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rows_that_draw_no_noise(emulated, dtype):
    with emulated_cuda(emulated):
        cpu_cases.test_rows_that_draw_no_noise_leave_the_others_unchanged("cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,kind", KINDS)
def test_low_precision_matches_rounded_reference(emulated, dtype, name, kind):
    with emulated_cuda(emulated):
        cpu_cases.test_low_precision_matches_rounded_reference("cpu", dtype, name, kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (257, 3), (2, 1173)])
@pytest.mark.parametrize("name,kind", KINDS)
def test_same_as_cpu_kernels(emulated, dtype, shape, name, kind):
    """Same noise for a (seed, offset) on both backends; outputs equal up to the last rounding
    (the CPU kernel's vectorized float32 draws may differ from the scalar ones by an ulp, and the
    per-sample loss is a block reduction on CUDA, a sequential sum on the CPU)."""
    x0, x1, t, eps, v, w = cpu_cases._inputs(shape, dtype, "cpu", seed=4)
    args = (x0, x1, t, None, kind, 0.3, 99, 2**33 + 1)
    upstream = torch.linspace(0.5, 1.5, shape[0], dtype=dtype)
    results = []
    for emulate in (False, True):
        with emulated_cuda(emulated) if emulate else contextlib.nullcontext():
            xt, noise = ops.interpolant.interpolant_sample(*args, True)
            per = ops.interpolant.interpolant_loss(v, *args[:4], w, *args[4:])
            grad_v = ops.interpolant.interpolant_loss_backward(upstream, v, *args[:4], w, *args[4:])
            mean, mean_grad = ops.interpolant.mean_loss_and_grad_impl(v, *args[:4], w, *args[4:])
        results.append((xt, noise, per, grad_v, mean.reshape(1), mean_grad))
    eps16 = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else (
        dict(rtol=1e-13, atol=1e-13) if dtype == torch.float64 else dict(rtol=2 * eps16, atol=2 * eps16))
    for want, got in zip(*results):
        assert not torch.isnan(got).any(), "an output element was never written"
        torch.testing.assert_close(got, want, **tol)
