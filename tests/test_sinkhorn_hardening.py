"""Regression tests of issue 24's wrong-value findings in Sinkhorn: what is returned is what is
reported (float32 costs far from 0), and no inf/NaN comes out without an error."""

from __future__ import annotations

import math

import pytest
import torch

import flowfast


def _plan64(res, C: torch.Tensor) -> torch.Tensor:
    """The plan of the RETURNED potentials, recomputed in float64 (uniform marginals)."""
    n, m = C.shape
    f, g = res.f.double(), res.g.double()
    log_p = (f[:, None] + g[None, :] - C.double()) / res.eps - math.log(n) - math.log(m)
    return log_p.exp()


def _honest(res, C: torch.Tensor, err_atol: float, cost_rtol: float) -> None:
    P = _plan64(res, C)
    m = C.shape[1]
    actual_err = float((P.sum(0) - 1.0 / m).abs().sum())
    assert abs(actual_err - float(res.marginal_error)) <= err_atol, (actual_err, float(res.marginal_error))
    actual_cost = float((P * C.double()).sum())
    assert abs(actual_cost - float(res.cost)) <= cost_rtol * abs(actual_cost), (actual_cost, float(res.cost))


def test_float32_costs_far_from_zero_report_the_returned_potentials():
    g = torch.Generator().manual_seed(0)
    C = 1e6 + torch.rand(64, 64, generator=g)
    res = flowfast.sinkhorn(C, eps=0.01)
    assert res.f.dtype == torch.float64  # float32 cannot carry the 1e6 offset to 1e-4 eps
    _honest(res, C, err_atol=1e-5, cost_rtol=1e-6)
    ref = flowfast.sinkhorn(C.double(), eps=0.01)
    assert abs(float(res.cost) - float(ref.cost)) <= 1e-6 * float(ref.cost)
    assert abs(float(res.value) - float(ref.value)) <= 1e-6 * abs(float(ref.value))


def test_float32_offset_costs_at_small_relative_eps():
    g = torch.Generator().manual_seed(1)
    C = 10 + torch.rand(512, 512, generator=g)
    res = flowfast.sinkhorn(C, eps=1e-4 * float(C.max()))
    _honest(res, C, err_atol=2e-5, cost_rtol=1e-6)
    assert float(res.marginal_error) < 1e-4


def test_float32_potentials_stay_float32_when_they_fit():
    C = torch.rand(32, 48, generator=torch.Generator().manual_seed(2))
    res = flowfast.sinkhorn(C, eps=0.05)
    assert res.f.dtype == torch.float32 and res.g.dtype == torch.float32
    _honest(res, C, err_atol=1e-5, cost_rtol=1e-5)


@pytest.mark.parametrize("shift", [100.0, -1e4, 1e8])
def test_balanced_solution_is_shift_equivariant(shift):
    """Shifting a cost by c changes f_i + g_j by c, the cost and value by c (unit mass), nothing else."""
    C = torch.rand(2, 20, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    C = (C * 2**20).round() / 2**20  # C + shift is exact: the shifted problem is the same problem
    base = flowfast.sinkhorn(C, eps=0.02, tol=1e-12)
    moved = flowfast.sinkhorn(C + shift, eps=0.02, tol=1e-12)
    scale = max(1.0, abs(shift))
    # potentials are defined up to (f + k, g - k): compare f_i + g_j
    total = lambda r: r.f[:, :, None] + r.g[:, None, :]  # noqa: E731
    torch.testing.assert_close(total(moved) - shift, total(base), atol=1e-12 * scale, rtol=0)
    torch.testing.assert_close(moved.cost - shift, base.cost, atol=1e-11 * scale, rtol=0)
    torch.testing.assert_close(moved.value - shift, base.value, atol=1e-11 * scale, rtol=0)
    torch.testing.assert_close(moved.plan(), base.plan(), atol=1e-12, rtol=0)
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    assert torch.equal(moved.sample(gen()), base.sample(gen()))


def test_value_gradient_is_the_plan_after_the_shift():
    C = (5 + torch.rand(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))).requires_grad_()
    res = flowfast.sinkhorn(C, eps=0.1, tol=1e-12)
    (grad,) = torch.autograd.grad(res.value, C)
    torch.testing.assert_close(grad, res.plan(), atol=1e-12, rtol=0)


def test_unbalanced_mass_overflow_is_an_error_not_inf():
    C = -1e3 * torch.rand(1, 33, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="overflows float32"):
        flowfast.sinkhorn(C, eps=0.1, reg_m=1.0, eps_scaling=False)


def test_unbalanced_huge_mass_is_finite_in_float64():
    C = -1e3 * torch.rand(1, 33, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = flowfast.sinkhorn(C, eps=0.1, reg_m=1.0, eps_scaling=False)
    for t in (res.f, res.g, res.marginal_error, res.cost, res.value):
        assert bool(torch.isfinite(t).all())


@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_max_iter_below_the_eps_schedule_ends_at_the_target_eps(max_iter):
    """A budget shorter than the eps-scaling schedule compresses it (the last iterations run at the
    target eps): finite results that describe the returned potentials."""
    C = torch.rand(100, 200, generator=torch.Generator().manual_seed(6))
    res = flowfast.sinkhorn(C, eps=1e-3, max_iter=max_iter)
    for t in (res.f, res.g, res.marginal_error, res.cost, res.value):
        assert bool(torch.isfinite(t).all())
    assert int(res.n_iter) == max_iter
    _honest(res, C, err_atol=1e-4 * max(1.0, float(res.marginal_error)), cost_rtol=1e-4)


def test_unbalanced_float32_eps_is_checked_against_the_magnitude():
    """Unbalanced problems are not shifted: eps must be resolvable against max |C|."""
    C = 1e6 + torch.rand(8, 8, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="magnitude"):
        flowfast.sinkhorn(C, eps=0.01, reg_m=1.0)
