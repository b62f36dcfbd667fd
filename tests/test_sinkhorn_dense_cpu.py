"""The CPU Sinkhorn's fused dense loops (csrc/cpu/sinkhorn_lse.h): one pass per half-step shifted
by a guess, a second where a row's or column's max strays from it; float32 data's exps to float
accuracy (range reduction in double); plan reductions in one pass. Compared with the pure-torch
reference in float64 and with POT, at sizes that reach every SIMD tail."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

import flowfast
from flowfast import ops
from flowfast.reference import sinkhorn as ref


def _problem(n: int, m: int, seed: int, dtype=torch.float32, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    cost = (torch.rand(1, n, m, generator=gen, dtype=torch.float64) * scale).to(dtype)
    log_a = torch.log_softmax(torch.randn(1, n, generator=gen, dtype=torch.float64), -1).to(dtype)
    log_b = torch.log_softmax(torch.randn(1, m, generator=gen, dtype=torch.float64), -1).to(dtype)
    return cost, log_a, log_b


def _solve(cost, log_a, log_b, eps, iters, f0=None, g0=None, eps_start=None, reg_m=0.0):
    eps_start = eps if eps_start is None else eps_start  # eps_start = eps: no eps-scaling
    B, n, m = cost.shape
    f0 = torch.zeros(B, n, dtype=cost.dtype) if f0 is None else f0
    g0 = torch.zeros(B, m, dtype=cost.dtype) if g0 is None else g0
    return ops.sinkhorn.sinkhorn_solve(cost, None, None, log_a, log_b, f0, g0, eps, eps_start, 0.5, reg_m, iters, 1, 0.0)


def _reference(cost, log_a, log_b, eps, iters, f0=None, g0=None, eps_start=None, reg_m=0.0):
    eps_start = eps if eps_start is None else eps_start
    B, n, m = cost.shape
    f0 = torch.zeros(B, n, dtype=torch.float64) if f0 is None else f0.double()
    g0 = torch.zeros(B, m, dtype=torch.float64) if g0 is None else g0.double()
    return ref.solve(cost.double(), None, None, log_a.double(), log_b.double(), f0, g0, eps, eps_start, 0.5, reg_m,
                     iters, 1, 0.0)


# m: below one vector (1, 3), vector tails (9, 13), several column blocks with a tail (150)
@pytest.mark.parametrize("n,m", [(1, 1), (5, 3), (2, 9), (70, 13), (33, 150), (130, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reg_m", [0.0, 0.4])
def test_fused_dense_solve_matches_float64_reference(n, m, dtype, reg_m):
    """Fixed iterations (tol = 0, eps-scaled start): the potentials within the data's accuracy of
    the float64 reference run on the same (rounded) cost."""
    cost, log_a, log_b = _problem(n, m, seed=n * 1000 + m, dtype=dtype)
    eps = 0.05
    f, g, n_iter, err = _solve(cost, log_a, log_b, eps, 30, eps_start=1.0, reg_m=reg_m)
    f_ref, g_ref, n_ref, err_ref = _reference(cost, log_a, log_b, eps, 30, eps_start=1.0, reg_m=reg_m)
    if int(n_ref) == 30:
        assert int(n_iter) == 30
    else:  # the reference's marginal error reached exactly 0: the kernel's is at its rounding
        assert float(err) < (1e-6 if dtype == torch.float32 else 1e-14)
    atol = 1e-12 if dtype == torch.float64 else 2e-6 * eps  # float32: exps to ~1e-7 relative
    np.testing.assert_allclose(f.double().numpy(), f_ref.numpy(), rtol=0, atol=atol + 1e-7 * float(f_ref.abs().max()))
    np.testing.assert_allclose(g.double().numpy(), g_ref.numpy(), rtol=0, atol=atol + 1e-7 * float(g_ref.abs().max()))
    np.testing.assert_allclose(float(err), float(err_ref), rtol=1e-3, atol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_reductions_match_reference(dtype):
    """Masses, transport cost and the dense plan from one pass, against the reference."""
    cost, log_a, log_b = _problem(70, 150, seed=3, dtype=dtype, scale=2.0)
    eps = 0.1
    f, g, _, _ = _solve(cost, log_a, log_b, eps, 40, eps_start=2.0)
    rows, cols, transport = ops.sinkhorn.sinkhorn_stats(cost, None, None, log_a, log_b, f, g, eps)
    plan = ops.sinkhorn.sinkhorn_plan(cost, None, None, log_a, log_b, f, g, eps)
    want_plan = ref.plan(cost.double(), None, None, log_a.double(), log_b.double(), f.double(), g.double(), eps)
    rtol = 1e-12 if dtype == torch.float64 else 3e-7
    np.testing.assert_allclose(plan.double().numpy(), want_plan.numpy(), rtol=rtol, atol=0)
    np.testing.assert_allclose(rows.double().numpy(), want_plan.sum(-1).numpy(), rtol=rtol)
    np.testing.assert_allclose(cols.double().numpy(), want_plan.sum(-2).numpy(), rtol=rtol)
    np.testing.assert_allclose(float(transport), float((want_plan * cost.double()).sum()), rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iters", [1, 2, 200])
def test_far_off_warm_start_takes_the_second_pass(dtype, iters):
    """A warm start (f + c, g + c), c = 1e4 eps, puts every first guess (-g / eps: right when
    f + g is near the cost) 2e4 off, outside the shift window, so each column redoes its pass.
    Iteration by iteration the potentials are the reference's from the same start (a pass that
    kept its clamped sum would be off by ~1e4 eps after the first)."""
    cost, log_a, log_b = _problem(40, 90, seed=11, dtype=dtype)
    eps, c = 0.05, 1e4 * 0.05
    f0 = torch.full((1, 40), c, dtype=dtype)
    g0 = torch.full((1, 90), c, dtype=dtype) + torch.linspace(0, 1, 90, dtype=dtype)
    f, g, _, err = _solve(cost, log_a, log_b, eps, iters, f0=f0, g0=g0)
    f_ref, g_ref, _, err_ref = _reference(cost, log_a, log_b, eps, iters, f0=f0, g0=g0)
    atol = 1e-9 if dtype == torch.float64 else 1e-6 * c
    np.testing.assert_allclose(f.double().numpy(), f_ref.numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(g.double().numpy(), g_ref.numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(float(err), float(err_ref), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("ratio", [1e-3, 1e-5])
def test_small_eps_without_scaling_stays_finite_and_exact(ratio):
    """At eps = ratio x range from a cold start the first guesses are ~1/ratio off (second
    passes everywhere); the float32 result is the float64 one to float accuracy."""
    cost, log_a, log_b = _problem(50, 60, seed=5)
    eps = ratio
    f, g, _, err = _solve(cost, log_a, log_b, eps, 300)
    f_ref, g_ref, _, _ = _reference(cost, log_a, log_b, eps, 300)
    assert torch.isfinite(f).all() and torch.isfinite(g).all() and np.isfinite(float(err))
    np.testing.assert_allclose(f.double().numpy(), f_ref.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(g.double().numpy(), g_ref.numpy(), rtol=0, atol=1e-6)


def test_float32_agrees_with_pot_sinkhorn_log():
    """The public call on float32 data against POT's log-domain Sinkhorn in float64."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 2, generator=gen)
    y = torch.randn(260, 2, generator=gen) + 1
    C = torch.cdist(x, y) ** 2
    eps = 0.05 * float(C.max())
    res = flowfast.sinkhorn(C, eps=eps, tol=1e-7, max_iter=5000)
    a, b = np.full(300, 1 / 300), np.full(260, 1 / 260)
    P = ot.sinkhorn(a, b, C.double().numpy(), reg=eps, method="sinkhorn_log", stopThr=1e-12, numItermax=100000)
    np.testing.assert_allclose(res.plan().double().numpy(), P, rtol=0, atol=1e-4 * P.max())
    np.testing.assert_allclose(float(res.cost), float((P * C.double().numpy()).sum()), rtol=1e-5)


def test_results_do_not_depend_on_the_thread_count():
    """Rows are independent and column blocks have a fixed width: bit-identical results with one
    thread and with all of them (the column masses' per-thread partials are summed in order, so
    those may differ in the last bit only)."""
    cost, log_a, log_b = _problem(300, 700, seed=9)  # 2.1e5 entries: the parallel regions run
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _solve(cost, log_a, log_b, 0.05, 20, eps_start=1.0)
        stats_one = ops.sinkhorn.sinkhorn_stats(cost, None, None, log_a, log_b, one[0], one[1], 0.05)
        torch.set_num_threads(max(2, threads))
        many = _solve(cost, log_a, log_b, 0.05, 20, eps_start=1.0)
        stats_many = ops.sinkhorn.sinkhorn_stats(cost, None, None, log_a, log_b, one[0], one[1], 0.05)
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(many, one):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(stats_many[0], stats_one[0], rtol=0, atol=0)
    torch.testing.assert_close(stats_many[1], stats_one[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(stats_many[2], stats_one[2], rtol=0, atol=0)


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**40 + 3, 7), (2**62 - 1, 2**62 + 5)])
@pytest.mark.parametrize("m", [16, 1000, 1003])  # whole 16-index steps; steps + scalar tail
def test_batched_gumbel_draws_sample_the_reference_columns(seed, offset, m):
    """The sampler's vectorized Philox + log Gumbels are the reference's stream: on 2 x 64 rows
    of a wide plan every sampled column is the reference's."""
    gen = torch.Generator().manual_seed(m)
    cost = torch.rand(2, 64, m, generator=gen, dtype=torch.float64)
    log_a = torch.log_softmax(torch.randn(2, 64, generator=gen, dtype=torch.float64), -1)
    log_b = torch.log_softmax(torch.randn(2, m, generator=gen, dtype=torch.float64), -1)
    g = torch.randn(2, m, generator=gen, dtype=torch.float64) * 0.01
    got = ops.sinkhorn.sinkhorn_sample(cost, None, None, log_a, log_b, g, 0.05, seed, offset)
    want = ref.sample(cost, None, None, log_a, log_b, g, 0.05, seed, offset)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d", [(5, 3, 1), (40, 70, 7), (33, 130, 64)])
def test_point_cloud_solve_matches_float64_reference(dtype, n, m, d):
    """The point-cloud passes (costs by differences into doubles, features-major copies, shifted
    exp-sums) against the float64 reference on the dense cost of the same points."""
    gen = torch.Generator().manual_seed(n + m + d)
    x = (torch.randn(1, n, d, generator=gen, dtype=torch.float64) / d**0.5).to(dtype)
    y = (torch.randn(1, m, d, generator=gen, dtype=torch.float64) / d**0.5 + 0.3).to(dtype)
    log_a = torch.log_softmax(torch.randn(1, n, generator=gen, dtype=torch.float64), -1).to(dtype)
    log_b = torch.log_softmax(torch.randn(1, m, generator=gen, dtype=torch.float64), -1).to(dtype)
    eps, f0, g0 = 0.05, torch.zeros(1, n, dtype=dtype), torch.zeros(1, m, dtype=dtype)
    f, g, n_iter, _ = ops.sinkhorn.sinkhorn_solve(None, x, y, log_a, log_b, f0, g0, eps, 2.0, 0.5, 0.0, 40, 1, 0.0)
    cost = ((x.double()[:, :, None, :] - y.double()[:, None, :, :]) ** 2).sum(-1)
    f_ref, g_ref, n_ref, _ = ref.solve(cost, None, None, log_a.double(), log_b.double(), f0.double(), g0.double(),
                                       eps, 2.0, 0.5, 0.0, 40, 1, 0.0)
    # float32: the exps' 1e-7 plus the potentials' own rounding to float32 (6e-8 of their size)
    size = max(float(f_ref.abs().max()), float(g_ref.abs().max()))
    atol = 1e-11 * max(1.0, size) if dtype == torch.float64 else 2e-6 * eps + 1.2e-7 * size
    np.testing.assert_allclose(f.double().numpy(), f_ref.numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(g.double().numpy(), g_ref.numpy(), rtol=0, atol=atol)
