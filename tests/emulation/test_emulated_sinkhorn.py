"""CUDA `sinkhorn` kernels (csrc/cuda/sinkhorn_cuda.cu) run in the SIMT emulation: the cases of
tests/test_sinkhorn.py (POT parity, batching, unbalanced, eps-scaling, stability, Philox
sampling), and multi-block problems against the CPU kernels, sized so the split reductions
(several slices of the reduced dimension), several blocks, partial warps, the online kernel's
key tiles and feature chunks (with tails) and the convergence checks all run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowfast
import test_sinkhorn as cpu_cases
from _emulated import emulated_cuda
from flowfast.ops import sinkhorn as ops
from flowfast.reference import sinkhorn as ref

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m", [(7, 5), (4, 11), (1, 3)])
@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_balanced_matches_pot(emulated, dtype, n, m, eps):
    with emulated_cuda(emulated):
        cpu_cases.test_balanced_matches_pot("cpu", dtype, n, m, eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps,rho", [(0.1, 0.5), (0.05, 5.0)])
def test_unbalanced_matches_pot(emulated, dtype, eps, rho):
    with emulated_cuda(emulated):
        cpu_cases.test_unbalanced_matches_pot("cpu", dtype, 6, 5, eps, rho)


# Point clouds run to 1e-12 here (thousands of online-kernel launches): dense only; the online
# kernel's batching is covered by test_kernel_matches_reference_float64 and the multi-block cases.
@pytest.mark.parametrize("geometry", ["dense"])
@pytest.mark.parametrize("eps_scaling", [False, True])
@pytest.mark.parametrize("reg_m", [None, 0.7])
def test_batched_equals_loop(emulated, geometry, eps_scaling, reg_m):
    with emulated_cuda(emulated):
        cpu_cases.test_batched_equals_loop("cpu", geometry, eps_scaling, reg_m)


@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize("eps_scaling", [False, True])
@pytest.mark.parametrize("reg_m", [None, 0.3])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_kernel_matches_reference_float64(emulated, kind, eps_scaling, reg_m, eps):
    """float64: the CUDA kernels' iterations equal the reference's (same n_iter, 1e-10)."""
    if kind == "cloud" and (eps_scaling or (eps == 0.05) == (reg_m is None)):
        pytest.skip("emulated online-kernel launches are slow: two cloud cases cover this test")
    with emulated_cuda(emulated):
        cpu_cases.test_kernel_matches_reference("cpu", torch.float64, kind, eps_scaling, reg_m, eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [2, 16])
def test_point_cloud_equals_dense(emulated, dtype, d):
    with emulated_cuda(emulated):
        cpu_cases.test_point_cloud_equals_dense("cpu", dtype, d, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ratio", [1.0, 1e-2])
def test_stable_small_eps_and_dynamic_range(emulated, dtype, ratio):
    with emulated_cuda(emulated):
        cpu_cases.test_stable_small_eps_uniform_cost("cpu", dtype, ratio, True)
        cpu_cases.test_stable_huge_dynamic_range("cpu", dtype, ratio, None)
        cpu_cases.test_stable_duplicated_points("cpu", dtype, ratio, 16)


def test_stable_constant_and_zero_cost(emulated):
    with emulated_cuda(emulated):
        cpu_cases.test_stable_constant_and_zero_cost("cpu", torch.float32)
        cpu_cases.test_stable_constant_and_zero_cost("cpu", torch.float64)


@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**32 + 5, 3), (2**62 - 1, 2**62 - 3)])
def test_sample_equals_cpu_and_reference(emulated, kind, seed, offset):
    """Gumbel-max sampling draws the same Philox stream on every backend: identical columns."""
    gen = cpu_cases._gen(seed % 1000 + offset % 1000)
    B, n, m, d = 2, 40, 300, 3  # m > 256: a row's columns span several strides of the block
    la, lb = cpu_cases._simplex(n, gen, B).log(), cpu_cases._simplex(m, gen, B).log()
    g = torch.randn(B, m, generator=gen, dtype=torch.float64) * 0.1
    geo = cpu_cases._op_geometry(kind, gen, torch.float64, B, n, m, d)
    for eps in (1.0, 0.1):
        want = ops.sinkhorn_sample(*geo, la, lb, g, eps, seed, offset)
        with emulated_cuda(emulated):
            got = ops.sinkhorn_sample(*geo, la, lb, g, eps, seed, offset)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(got, ref.sample(*geo, la, lb, g, eps, seed, offset), rtol=0, atol=0)


def _big_problem(kind, dtype):
    gen = cpu_cases._gen(5)
    if kind == "dense":
        B, n, m = 2, 520, 40  # g-update: 3 row slices (tail); f-update: one warp per row, 40 = warp + tail
        geo = (torch.rand(B, n, m, generator=gen, dtype=torch.float64).to(dtype), None, None)
    else:
        B, n, m, d = 2, 260, 70, 36  # 3 query blocks (tail), 3 key tiles (tail), 2 feature chunks (tail)
        geo = (None, torch.randn(B, n, d, generator=gen, dtype=torch.float64).to(dtype) / 4,
               torch.randn(B, m, d, generator=gen, dtype=torch.float64).to(dtype) / 4 + 0.1)
    la = cpu_cases._simplex(n, gen, B).log().to(dtype)
    lb = cpu_cases._simplex(m, gen, B).log().to(dtype)
    return geo, la, lb


@pytest.mark.parametrize(
    "kind,dtype,reg_m",
    [("dense", torch.float32, 0.0), ("dense", torch.float64, 0.0), ("dense", torch.float32, 2.0),
     ("dense", torch.float64, 2.0), ("cloud", torch.float32, 0.0), ("cloud", torch.float64, 2.0)],
    ids=str,
)
def test_multi_block_solve_and_plan_equal_cpu(emu, kind, dtype, reg_m):
    """The CUDA kernels at multi-block sizes against the CPU kernels, 8 iterations from an
    eps-scaled start (tol = 0, so both run the same iterations), then every plan reduction."""
    geo, la, lb = _big_problem(kind, dtype)
    B, n, m = la.shape[0], la.shape[1], lb.shape[1]
    f0, g0 = torch.zeros(B, n, dtype=dtype), torch.zeros(B, m, dtype=dtype)
    args = (*geo, la, lb, f0, g0, 0.05, 0.8, 0.5, reg_m, 8, 4, 0.0)
    atol = 1e-10 if dtype == torch.float64 else 2e-4
    emu.emu_set_schedule_seed(7)
    try:
        want = ops.sinkhorn_solve(*args)
        with emulated_cuda(emu):
            got = ops.sinkhorn_solve(*args)
        f, g = want[0], want[1]
        torch.testing.assert_close(got[2], want[2], rtol=0, atol=0)  # iterations
        for k in (0, 1):
            np.testing.assert_allclose(got[k].double().numpy(), want[k].double().numpy(), atol=atol, rtol=0)
        np.testing.assert_allclose(got[3].double().numpy(), want[3].double().numpy(), rtol=1e-3 if dtype == torch.float32 else 1e-8, atol=1e-6)
        rtol = 1e-9 if dtype == torch.float64 else 2e-4
        outputs_cpu = [ops.sinkhorn_stats(*geo, la, lb, f, g, 0.05), (ops.sinkhorn_plan(*geo, la, lb, f, g, 0.05),)]
        with emulated_cuda(emu):
            outputs_emu = [ops.sinkhorn_stats(*geo, la, lb, f, g, 0.05), (ops.sinkhorn_plan(*geo, la, lb, f, g, 0.05),)]
        if kind == "cloud":
            outputs_cpu.append(ops.sinkhorn_plan_features(geo[1], geo[2], la, lb, f, g, 0.05))
            with emulated_cuda(emu):
                outputs_emu.append(ops.sinkhorn_plan_features(geo[1], geo[2], la, lb, f, g, 0.05))
        for group_cpu, group_emu in zip(outputs_cpu, outputs_emu):
            for want_t, got_t in zip(group_cpu, group_emu):
                assert torch.isfinite(got_t).all(), "an output element was never written"
                scale = float(want_t.abs().max())
                np.testing.assert_allclose(got_t.double().numpy(), want_t.double().numpy(), rtol=rtol,
                                           atol=rtol * scale)
    finally:
        emu.emu_set_schedule_seed(0)


def test_early_stop_per_problem(emulated):
    """Problems of one batch converge at different iterations: each is frozen at its own check."""
    gen = cpu_cases._gen(11)
    B, n, m = 3, 20, 30
    cost = torch.rand(B, n, m, generator=gen, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0])[:, None, None]
    a, b = cpu_cases._simplex(n, gen, B), cpu_cases._simplex(m, gen, B)
    kw = dict(a=a, b=b, eps=0.1, tol=1e-9, max_iter=5000, check_every=3)
    want = flowfast.sinkhorn(cost, **kw)
    with emulated_cuda(emulated):
        got = flowfast.sinkhorn(cost, **kw)
    torch.testing.assert_close(got.n_iter, want.n_iter, rtol=0, atol=0)
    assert len(set(want.n_iter.tolist())) > 1
    np.testing.assert_allclose(cpu_cases._centered(got.f), cpu_cases._centered(want.f), atol=1e-10, rtol=0)
