"""Sinkhorn family: accuracy against POT, consistency across batching / geometries / backends,
numerical stability, sampling (Philox, Gumbel-max, distribution), envelope gradients, opcheck and
the convergence bookkeeping.

Potentials are only defined up to an additive constant (f + c, g - c give the same plan), so they
are compared after centering. POT's plan is ``diag(u) K diag(v)`` with ``K = exp(-M / eps)`` while
flowfast's is ``a_i b_j exp((f_i + g_j - C_ij) / eps)``, so ``f = eps * (log u - log a) + const``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.stats import chisquare

import flowfast
from flowfast.ops import sinkhorn as ops
from flowfast.reference import sinkhorn as ref

TIGHT = dict(tol=1e-12, max_iter=100_000)  # float64 runs to (near) machine precision


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _simplex(size: int, gen: torch.Generator, *batch: int) -> torch.Tensor:
    """Non-uniform positive weights summing to 1 (float64, CPU)."""
    w = torch.rand(*batch, size, generator=gen, dtype=torch.float64) + 0.2
    return w / w.sum(-1, keepdim=True)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def _centered(t) -> np.ndarray:
    t = _np(t) if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
    return t - t.mean(-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """Generalized KL(p | q) = sum p log(p / q) - p + q (p >= 0, q > 0)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p / q), 0.0)
    return float((plogp - p + q).sum())


def _objective(
    P: np.ndarray, C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, rho=None
) -> float:
    """<P, C> + eps KL(P | a b^T) [+ rho (KL(P1 | a) + KL(P^T 1 | b))], computed from the plan."""
    val = float((P * C).sum()) + eps * _kl(P, np.outer(a, b))
    if rho is not None:
        val += rho * (_kl(P.sum(1), a) + _kl(P.sum(0), b))
    return val


def _pot_balanced(a, b, C, eps):
    """POT's log-domain Sinkhorn at tight tolerance: (plan, f, g), potentials in flowfast's
    convention."""
    a, b, C = _np(a), _np(b), _np(C)
    b = b * (
        a.sum() / b.sum()
    )  # float32-cast weights may differ in total mass by an ulp: POT needs equal
    P, log = ot.sinkhorn(
        a, b, C, reg=eps, method="sinkhorn_log", stopThr=1e-12, numItermax=20_000, log=True
    )
    f = eps * (np.asarray(log["log_u"]) - np.log(a))
    g = eps * (np.asarray(log["log_v"]) - np.log(b))
    return np.asarray(P), f, g


def _pot_unbalanced(a, b, C, eps, rho):
    a, b, C = _np(a), _np(b), _np(C)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a POT "did not converge" warning must fail loudly here
        P = ot.unbalanced.sinkhorn_unbalanced(
            a,
            b,
            C,
            reg=eps,
            reg_m=rho,
            method="sinkhorn_stabilized",
            stopThr=1e-14,
            numItermax=20_000,
        )
    return np.asarray(P)


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 by differences (no cancellation), any leading batch dims."""
    return ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)


def _log_w(w: torch.Tensor) -> torch.Tensor:
    return w.log().contiguous()


def _assert_all_finite(res, plan=True) -> None:
    for name in ("f", "g", "value", "cost", "marginal_error"):
        t = getattr(res, name)
        if not bool(torch.isfinite(t).all()):
            raise AssertionError(f"result.{name} has NaN/Inf: {t}")
    if plan:
        P = res.plan()
        if not bool(torch.isfinite(P).all()):
            raise AssertionError("plan has NaN/Inf")
        if not bool((P >= 0).all()):
            raise AssertionError("plan has negative entries")


def _fp_tols(dtype):
    """(solver tol, rtol on objectives, atol on plan entries, atol on centered potentials)."""
    if dtype == torch.float64:
        return 1e-12, 1e-9, 1e-10, 1e-8
    return 1e-5, 1e-4, 1e-5, 1e-4


# --------------------------------------------------------------------------------------------
# balanced: against POT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(7, 5), (4, 11), (1, 3)])
@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_balanced_matches_pot(device, dtype, n, m, eps):
    gen = _gen(100 * n + m)
    C = torch.rand(n, m, generator=gen, dtype=torch.float64)
    a, b = _simplex(n, gen), _simplex(m, gen)
    Cd, ad, bd = C.to(device, dtype), a.to(device, dtype), b.to(device, dtype)
    tol, rtol, plan_atol, pot_atol = _fp_tols(dtype)

    res = flowfast.sinkhorn(Cd, a=ad, b=bd, eps=eps, tol=tol, max_iter=100_000)
    assert res.f.shape == (n,) and res.g.shape == (m,)
    assert res.f.dtype == dtype and res.value.dtype == dtype and res.cost.dtype == dtype
    assert res.f.device == Cd.device
    assert res.eps == eps and res.reg_m is None
    assert int(res.n_iter) < 100_000, "did not converge"
    assert float(res.marginal_error) <= tol

    # POT sees exactly the values flowfast saw (the dtype-cast inputs)
    P_pot, f_pot, g_pot = _pot_balanced(ad, bd, Cd, eps)
    C64, a64, b64 = _np(Cd), _np(ad), _np(bd)
    pot_cost = float((P_pot * C64).sum())
    pot_obj = _objective(P_pot, C64, a64, b64, eps)

    np.testing.assert_allclose(float(res.cost), pot_cost, rtol=max(rtol, 1e-10), atol=0)
    np.testing.assert_allclose(float(res.value), pot_obj, rtol=max(rtol, 1e-10), atol=0)
    # POT's objective recomputed from flowfast's own plan agrees with flowfast's value
    P = _np(res.plan())
    np.testing.assert_allclose(
        float(res.value), _objective(P, C64, a64, b64, eps), rtol=max(rtol, 1e-10)
    )
    np.testing.assert_allclose(P, P_pot, rtol=0, atol=plan_atol)
    np.testing.assert_allclose(_centered(res.f), _centered(f_pot), rtol=0, atol=pot_atol)
    np.testing.assert_allclose(_centered(res.g), _centered(g_pot), rtol=0, atol=pot_atol)
    # marginals of the returned plan
    np.testing.assert_allclose(P.sum(1), a64, rtol=0, atol=max(10 * tol, plan_atol))
    np.testing.assert_allclose(P.sum(0), b64, rtol=0, atol=max(10 * tol, plan_atol))


def test_balanced_relative_1e4_contract_float32():
    """The advertised float32 contract at default tol: cost and objective within 1e-4 of POT."""
    gen = _gen(7)
    C = torch.rand(12, 9, generator=gen, dtype=torch.float64)
    a, b = _simplex(12, gen), _simplex(9, gen)
    C32, a32, b32 = C.float(), a.float(), b.float()
    eps = 0.05
    res = flowfast.sinkhorn(C32, a=a32, b=b32, eps=eps)
    assert float(res.marginal_error) <= 1e-6 or int(res.n_iter) == 1000
    P_pot, _, _ = _pot_balanced(a32, b32, C32, eps)
    C64, a64, b64 = _np(C32), _np(a32), _np(b32)
    np.testing.assert_allclose(float(res.cost), (P_pot * C64).sum(), rtol=1e-4)
    np.testing.assert_allclose(float(res.value), _objective(P_pot, C64, a64, b64, eps), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# unbalanced: against POT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(6, 5), (3, 8)])
@pytest.mark.parametrize("eps,rho", [(0.1, 0.5), (0.05, 5.0), (0.5, 0.1)])
def test_unbalanced_matches_pot(device, dtype, n, m, eps, rho):
    gen = _gen(10 * n + m)
    C = torch.rand(n, m, generator=gen, dtype=torch.float64)
    a = _simplex(n, gen)
    b = _simplex(m, gen) * 1.7  # different total masses: only meaningful unbalanced
    Cd, ad, bd = C.to(device, dtype), a.to(device, dtype), b.to(device, dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-5  # change / eps: float32 potentials move by ulps
    rtol = 1e-9 if dtype == torch.float64 else 1e-4

    res = flowfast.sinkhorn(Cd, a=ad, b=bd, eps=eps, reg_m=rho, tol=tol, max_iter=100_000)
    assert res.reg_m == rho
    assert int(res.n_iter) < 100_000, "did not converge"
    _assert_all_finite(res)

    P_pot = _pot_unbalanced(ad, bd, Cd, eps, rho)
    P = _np(res.plan())
    C64, a64, b64 = _np(Cd), _np(ad), _np(bd)
    np.testing.assert_allclose(
        P.sum(), P_pot.sum(), rtol=max(rtol, 1e-4 if dtype == torch.float32 else 1e-10)
    )
    np.testing.assert_allclose(float(res.cost), (P_pot * C64).sum(), rtol=max(rtol, 1e-10))
    np.testing.assert_allclose(P, P_pot, rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)
    np.testing.assert_allclose(
        float(res.value), _objective(P_pot, C64, a64, b64, eps, rho), rtol=max(rtol, 1e-10)
    )
    # marginal_error (informative when unbalanced): row + column L1 deviation of the returned plan
    want_err = np.abs(P.sum(1) - a64).sum() + np.abs(P.sum(0) - b64).sum()
    np.testing.assert_allclose(
        float(res.marginal_error),
        want_err,
        rtol=1e-6 if dtype == torch.float64 else 1e-3,
        atol=1e-12,
    )


# --------------------------------------------------------------------------------------------
# batching, geometries, layouts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["dense", "cloud"])
@pytest.mark.parametrize("eps_scaling", [False, True])
@pytest.mark.parametrize("reg_m", [None, 0.7])
def test_batched_equals_loop(device, geometry, eps_scaling, reg_m):
    B, n, m, d = 4, 6, 5, 3
    gen = _gen(42)
    a, b = _simplex(n, gen, B), _simplex(m, gen, B)
    if geometry == "dense":
        C = (
            torch.rand(B, n, m, generator=gen, dtype=torch.float64)
            * torch.tensor([1.0, 3.0, 0.5, 2.0])[:, None, None]
        )
        inputs = [dict(cost=C.to(device))]
        per = lambda k: dict(cost=C[k].to(device))  # noqa: E731
    else:
        x = torch.randn(B, n, d, generator=gen, dtype=torch.float64)
        y = torch.randn(B, m, d, generator=gen, dtype=torch.float64) + 0.5
        inputs = [dict(x=x.to(device), y=y.to(device))]
        per = lambda k: dict(x=x[k].to(device), y=y[k].to(device))  # noqa: E731
    kw = dict(eps=0.2, reg_m=reg_m, eps_scaling=eps_scaling, **TIGHT)
    res = flowfast.sinkhorn(**inputs[0], a=a.to(device), b=b.to(device), **kw)
    assert res.f.shape == (B, n) and res.g.shape == (B, m) and res.n_iter.shape == (B,)
    assert res.value.shape == (B,) and res.cost.shape == (B,) and res.marginal_error.shape == (B,)
    plan = res.plan()
    assert plan.shape == (B, n, m)
    for k in range(B):
        one = flowfast.sinkhorn(**per(k), a=a[k].to(device), b=b[k].to(device), **kw)
        # eps_start is taken over the whole batch, so with eps_scaling the schedules (and the
        # iteration counts) may differ: compare the converged answers.
        if not eps_scaling:
            assert int(one.n_iter) == int(res.n_iter[k])
        np.testing.assert_allclose(_centered(res.f[k]), _centered(one.f), atol=1e-9, rtol=0)
        np.testing.assert_allclose(_centered(res.g[k]), _centered(one.g), atol=1e-9, rtol=0)
        np.testing.assert_allclose(_np(plan[k]), _np(one.plan()), atol=1e-10, rtol=0)
        np.testing.assert_allclose(float(res.value[k]), float(one.value), rtol=1e-10)
        np.testing.assert_allclose(float(res.cost[k]), float(one.cost), rtol=1e-10)


@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_point_cloud_equals_dense(device, dtype, d, reg_m):
    n, m = 9, 6
    gen = _gen(d)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(m, d, generator=gen, dtype=torch.float64) * 1.3 + 0.2
    a, b = _simplex(n, gen), _simplex(m, gen)
    xd, yd, ad, bd = (t.to(device, dtype) for t in (x, y, a, b))
    C = _sq_dists(xd.double(), yd.double()).to(
        dtype
    )  # the exact float64 distances of the cast points
    eps = 0.1 * float(C.max())
    tol, rtol, plan_atol, _ = _fp_tols(dtype)
    if reg_m is not None and dtype == torch.float64:
        tol = 1e-13  # unbalanced tol is on the potentials' change / eps
    kw = dict(a=ad, b=bd, eps=eps, reg_m=reg_m, tol=tol, max_iter=100_000)
    cloud = flowfast.sinkhorn(x=xd, y=yd, **kw)
    dense = flowfast.sinkhorn(C, **kw)
    _assert_all_finite(cloud)
    scale = float(C.max())
    np.testing.assert_allclose(
        _np(cloud.plan()),
        _np(dense.plan()),
        atol=plan_atol * (1 if dtype == torch.float64 else 10),
        rtol=0,
    )
    np.testing.assert_allclose(
        float(cloud.cost),
        float(dense.cost),
        rtol=max(rtol, 1e-10) * (1 if dtype == torch.float64 else 10),
    )
    np.testing.assert_allclose(
        float(cloud.value),
        float(dense.value),
        rtol=max(rtol, 1e-10) * (1 if dtype == torch.float64 else 10),
    )
    pot_atol = 1e-9 * scale if dtype == torch.float64 else 1e-3 * scale
    np.testing.assert_allclose(_centered(cloud.f), _centered(dense.f), atol=pot_atol, rtol=0)
    np.testing.assert_allclose(_centered(cloud.g), _centered(dense.g), atol=pot_atol, rtol=0)


def test_non_contiguous_inputs(device, dtype):
    gen = _gen(3)
    base = torch.rand(8, 6, generator=gen, dtype=torch.float64).to(device, dtype)
    C_t = base.t()  # (6, 8), last-dim stride 6
    a = _simplex(6, gen).to(device, dtype)
    b = _simplex(8, gen).to(device, dtype)
    r1 = flowfast.sinkhorn(C_t, a=a, b=b, eps=0.1, eps_scaling=False, max_iter=50)
    r2 = flowfast.sinkhorn(C_t.contiguous(), a=a, b=b, eps=0.1, eps_scaling=False, max_iter=50)
    torch.testing.assert_close(r1.f, r2.f, rtol=0, atol=0)
    torch.testing.assert_close(r1.plan(), r2.plan(), rtol=0, atol=0)
    xb = torch.randn(5, 4, generator=gen, dtype=torch.float64).to(device, dtype)
    x = xb[:, ::2]  # (5, 2), strided features
    y = torch.randn(2, 7, generator=gen, dtype=torch.float64).to(device, dtype).t()
    r3 = flowfast.sinkhorn(x=x, y=y, eps=0.5, eps_scaling=False, max_iter=50)
    r4 = flowfast.sinkhorn(
        x=x.contiguous(), y=y.contiguous(), eps=0.5, eps_scaling=False, max_iter=50
    )
    torch.testing.assert_close(r3.g, r4.g, rtol=0, atol=0)
    torch.testing.assert_close(r3.value, r4.value, rtol=0, atol=0)


def test_inputs_not_modified_and_grad_inputs_accepted(device, dtype):
    gen = _gen(5)
    C = torch.rand(2, 4, 5, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
    a = _simplex(4, gen, 2).to(device, dtype)
    before_C, before_a = C.detach().clone(), a.clone()
    res = flowfast.sinkhorn(C, a=a, eps=0.1)
    assert torch.equal(C.detach(), before_C) and torch.equal(a, before_a)
    assert res.value.requires_grad
    assert not res.f.requires_grad and not res.cost.requires_grad


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_backends_agree(device, backend):
    gen = _gen(11)
    C = torch.rand(3, 5, 4, generator=gen, dtype=torch.float64).to(device)
    res = flowfast.sinkhorn(C, eps=0.1, backend=backend, **TIGHT)
    base = flowfast.sinkhorn(C.cpu(), eps=0.1, backend="cpu", **TIGHT)
    assert res.f.device == C.device
    np.testing.assert_allclose(_np(res.plan()), _np(base.plan()), atol=1e-10, rtol=0)
    np.testing.assert_allclose(_np(res.value), _np(base.value), rtol=1e-10)


@pytest.mark.cuda
def test_backend_cpu_on_cuda_inputs_results_on_cuda():
    C = torch.rand(2, 5, 4, dtype=torch.float64, device="cuda")
    res = flowfast.sinkhorn(C, eps=0.1, backend="cpu")
    for name in ("f", "g", "n_iter", "marginal_error", "cost", "value"):
        assert getattr(res, name).device == C.device, name


@pytest.mark.cuda
def test_backend_cpu_on_cuda_inputs_plan_and_sample_on_cuda():
    C = torch.rand(2, 5, 4, dtype=torch.float64, device="cuda")
    res = flowfast.sinkhorn(C, eps=0.1, backend="cpu")
    assert res.plan().device == C.device
    assert res.sample(torch.Generator().manual_seed(0)).device == C.device


# --------------------------------------------------------------------------------------------
# kernels vs the pure-torch reference
# --------------------------------------------------------------------------------------------


def _geometry(kind: str, gen, dtype, device, B: int, n: int, m: int, d: int = 2) -> dict:
    """Keyword arguments of flowfast.sinkhorn: a random dense cost or random point clouds."""
    if kind == "dense":
        return dict(cost=torch.rand(B, n, m, generator=gen, dtype=torch.float64).to(device, dtype))
    return dict(
        x=torch.randn(B, n, d, generator=gen, dtype=torch.float64).to(device, dtype),
        y=torch.randn(B, m, d, generator=gen, dtype=torch.float64).to(device, dtype),
    )


def _op_geometry(kind: str, gen, dtype, B: int, n: int, m: int, d: int) -> tuple:
    """(cost, x, y) positional arguments of the flowfast::sinkhorn_* ops, on the CPU."""
    geo = _geometry(kind, gen, dtype, "cpu", B, n, m, d)
    return geo.get("cost"), geo.get("x"), geo.get("y")


def _problem(kind: str, gen, dtype, device):
    B, n, m, d = 2, 6, 7, 3
    a, b = _simplex(n, gen, B), _simplex(m, gen, B)
    return _geometry(kind, gen, dtype, device, B, n, m, d), a.to(device, dtype), b.to(device, dtype)


@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize("eps_scaling", [False, True])
@pytest.mark.parametrize("reg_m", [None, 0.3])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_kernel_matches_reference(device, dtype, kind, eps_scaling, reg_m, eps):
    geo, a, b = _problem(kind, _gen(17), dtype, device)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    kw = dict(
        a=a,
        b=b,
        eps=eps,
        reg_m=reg_m,
        eps_scaling=eps_scaling,
        tol=tol,
        max_iter=3000,
        check_every=5,
    )
    got = flowfast.sinkhorn(**geo, **kw)
    want = flowfast.sinkhorn(**geo, backend="torch", **kw)
    exact = (
        dtype == torch.float64 or device == "cpu"
    )  # CPU kernels iterate in double like the reference
    if exact:
        torch.testing.assert_close(got.n_iter, want.n_iter, rtol=0, atol=0)
    atol = 1e-10 if dtype == torch.float64 else (1e-5 if device == "cpu" else 1e-4)
    np.testing.assert_allclose(_centered(got.f), _centered(want.f), atol=atol, rtol=0)
    np.testing.assert_allclose(_centered(got.g), _centered(want.g), atol=atol, rtol=0)
    np.testing.assert_allclose(
        _np(got.value), _np(want.value), rtol=1e-9 if dtype == torch.float64 else 1e-5
    )
    np.testing.assert_allclose(
        _np(got.cost), _np(want.cost), rtol=1e-9 if dtype == torch.float64 else 1e-5
    )
    np.testing.assert_allclose(
        _np(got.marginal_error),
        _np(want.marginal_error),
        rtol=1e-4,
        atol=1e-12 if dtype == torch.float64 else 1e-6,
    )
    np.testing.assert_allclose(
        _np(got.plan()), _np(want.plan()), atol=1e-10 if dtype == torch.float64 else 1e-5, rtol=0
    )


# --------------------------------------------------------------------------------------------
# stability: never NaN / Inf
# --------------------------------------------------------------------------------------------

_RATIOS = [1.0, 1e-1, 1e-2, 1e-3, 1e-4]


def _check_stable(res, a: torch.Tensor, dtype) -> None:
    _assert_all_finite(res)
    P = res.plan().double()
    # rows are exact after the last f-update, whatever eps (log-domain updates)
    rtol = 1e-8 if dtype == torch.float64 else 3e-2
    np.testing.assert_allclose(_np(P.sum(-1)), _np(a), rtol=rtol, atol=0)


@pytest.mark.parametrize("ratio", _RATIOS)
@pytest.mark.parametrize("eps_scaling", [True, False])
def test_stable_small_eps_uniform_cost(device, dtype, ratio, eps_scaling):
    gen = _gen(21)
    C = torch.rand(3, 12, 10, generator=gen, dtype=torch.float64).to(device, dtype)
    a = _simplex(12, gen, 3).to(device, dtype)
    res = flowfast.sinkhorn(
        C, a=a, eps=ratio * float(C.max()), eps_scaling=eps_scaling, max_iter=300
    )
    assert bool((res.n_iter <= 300).all())
    _check_stable(res, a, dtype)


@pytest.mark.parametrize("ratio", _RATIOS)
@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_stable_huge_dynamic_range(device, dtype, ratio, reg_m):
    gen = _gen(22)
    C = (10.0 ** (torch.rand(2, 15, 11, generator=gen, dtype=torch.float64) * 6 - 3)).to(
        device, dtype
    )
    a = _simplex(15, gen, 2).to(device, dtype)
    res = flowfast.sinkhorn(C, a=a, eps=ratio * float(C.max()), reg_m=reg_m, max_iter=300)
    if reg_m is None:
        _check_stable(res, a, dtype)
    else:
        _assert_all_finite(res)


@pytest.mark.parametrize("ratio", _RATIOS)
@pytest.mark.parametrize("d", [2, 16])
def test_stable_duplicated_points(device, dtype, ratio, d):
    gen = _gen(23 + d)
    base = torch.randn(4, d, generator=gen, dtype=torch.float64)
    x = base.repeat(3, 1).to(device, dtype)  # every point three times
    y = x.clone()
    eps = ratio * float(_sq_dists(x.double(), y.double()).max())
    a = torch.full((12,), 1 / 12, dtype=dtype, device=device)
    res = flowfast.sinkhorn(x=x, y=y, eps=eps, max_iter=300)
    _check_stable(res, a, dtype)
    dense = flowfast.sinkhorn(_sq_dists(x, y), eps=eps, max_iter=300)
    _check_stable(dense, a, dtype)
    # identical columns receive identical mass
    P = _np(res.plan())
    np.testing.assert_allclose(
        P[:, :4], P[:, 4:8], atol=1e-6 if dtype == torch.float64 else 1e-3, rtol=0
    )


def test_stable_constant_and_zero_cost(device, dtype):
    for value in (0.0, 5.0, -3.0):
        C = torch.full((4, 6), value, dtype=dtype, device=device)
        res = flowfast.sinkhorn(C, eps=1e-3)
        _assert_all_finite(res)
        np.testing.assert_allclose(_np(res.plan()), np.full((4, 6), 1 / 24), rtol=1e-5, atol=0)
        np.testing.assert_allclose(float(res.cost), value, rtol=1e-5, atol=1e-6)
    x = torch.zeros(3, 2, dtype=dtype, device=device)  # all points equal: zero cost, zero diameter
    res = flowfast.sinkhorn(x=x, y=x, eps=1e-4)
    _assert_all_finite(res)
    assert float(res.cost) == 0.0


def test_eps_below_the_dtype_resolution_is_rejected_not_nan():
    """float32 potentials cannot resolve eps = 1e-12 x range: a clear error instead of inf/NaN."""
    C = torch.rand(2, 15, 11, generator=_gen(21), dtype=torch.float64)
    with pytest.raises(ValueError, match="eps.*too small.*float32"):
        flowfast.sinkhorn(C.float(), eps=1e-12 * float(C.max()), max_iter=300)
    _assert_all_finite(flowfast.sinkhorn(C, eps=1e-12 * float(C.max()), max_iter=300))
    _assert_all_finite(flowfast.sinkhorn(C.float(), eps=1e-5 * float(C.max()), max_iter=300))


@pytest.mark.parametrize("ratio", [1e-2, 1e-4])
def test_stable_large_point_coordinates(device, dtype, ratio):
    gen = _gen(29)
    x = (torch.randn(10, 3, generator=gen, dtype=torch.float64) * 1e3).to(device, dtype)
    y = (torch.randn(8, 3, generator=gen, dtype=torch.float64) * 1e3 + 500).to(device, dtype)
    eps = ratio * float(_sq_dists(x.double(), y.double()).max())
    res = flowfast.sinkhorn(x=x, y=y, eps=eps, max_iter=300)
    _check_stable(res, torch.full((10,), 0.1, dtype=torch.float64), dtype)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_sample_shape_range_determinism(device, dtype, batched, kind, backend):
    gen = _gen(31)
    B, n, m = 3, 40, 6
    geo = _geometry(kind, gen, dtype, device, B, n, m)
    if not batched:
        geo = {k: v[0] for k, v in geo.items()}
    res = flowfast.sinkhorn(**geo, eps=0.5, backend=backend)
    s1 = res.sample(torch.Generator(device=device).manual_seed(5))
    s2 = res.sample(torch.Generator(device=device).manual_seed(5))
    s3 = res.sample(torch.Generator(device=device).manual_seed(6))
    want_shape = (B, n) if batched else (n,)
    assert s1.shape == want_shape and s1.dtype == torch.int64 and s1.device.type == device
    assert bool(((s1 >= 0) & (s1 < m)).all())
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, s3)  # 40+ rows over 6 spread columns: equal by chance ~never
    # default generator: the one given to sinkhorn(), else the global CPU RNG
    res_g = flowfast.sinkhorn(
        **geo, eps=0.5, backend=backend, generator=torch.Generator(device=device).manual_seed(5)
    )
    assert torch.equal(res_g.sample(), s1)
    torch.manual_seed(77)
    t1 = res.sample()
    torch.manual_seed(77)
    assert torch.equal(res.sample(), t1)


@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize(
    "seed,offset", [(0, 0), (1, 2), (2**32 + 5, 3), (123456789, 2**33 + 17), (2**62 - 1, 2**62 - 3)]
)
def test_cpu_sample_equals_reference(dtype, kind, seed, offset):
    gen = _gen(seed % 1000 + offset % 1000)
    B, n, m, d = 2, 9, 7, 4
    la, lb = _simplex(n, gen, B).log().to(dtype), _simplex(m, gen, B).log().to(dtype)
    g = (torch.randn(B, m, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    geo = _op_geometry(kind, gen, dtype, B, n, m, d)
    for eps in (1.0, 0.1):
        got = ops.sinkhorn_sample(*geo, la, lb, g, eps, seed, offset)
        want = ref.sample(*geo, la, lb, g, eps, seed, offset)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["dense", "cloud"])
def test_cuda_sample_equals_cpu(kind):
    gen = _gen(9)
    B, n, m = 2, 33, 17
    la, lb = _simplex(n, gen, B).log(), _simplex(m, gen, B).log()
    g = torch.randn(B, m, generator=gen, dtype=torch.float64) * 0.1
    if kind == "dense":
        geo = (torch.rand(B, n, m, generator=gen, dtype=torch.float64), None, None)
    else:
        geo = (
            None,
            torch.randn(B, n, 3, generator=gen, dtype=torch.float64),
            torch.randn(B, m, 3, generator=gen, dtype=torch.float64),
        )
    on_cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    for seed, offset in [(0, 0), (2**40 + 1, 2**35 + 9)]:
        cpu = ops.sinkhorn_sample(*geo, la, lb, g, 0.3, seed, offset)
        gpu = ops.sinkhorn_sample(
            *map(on_cuda, geo), la.cuda(), lb.cuda(), g.cuda(), 0.3, seed, offset
        )
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dense", "cloud"])
def test_sample_distribution_chisquare(device, kind):
    """Empirical pair frequencies match P(j | i) = P_ij / sum_j P_ij (chi-square per row)."""
    gen = _gen(1)
    n, m, draws = 4, 5, 4000
    a, b = _simplex(n, gen), _simplex(m, gen)
    if kind == "dense":
        geo = dict(cost=torch.rand(n, m, generator=gen, dtype=torch.float64).to(device))
    else:
        geo = dict(
            x=torch.randn(n, 2, generator=gen, dtype=torch.float64).to(device),
            y=torch.randn(m, 2, generator=gen, dtype=torch.float64).to(device),
        )
    C = geo["cost"] if kind == "dense" else _sq_dists(geo["x"], geo["y"])
    res = flowfast.sinkhorn(
        **geo, a=a.to(device), b=b.to(device), eps=0.5 * float(C.max()), **TIGHT
    )
    P = _np(res.plan())
    probs = P / P.sum(1, keepdims=True)
    assert probs.min() * draws > 5, "test problem too peaked for a chi-square test"
    cost, x, y, log_a, log_b, _, g = res._inputs
    seed = 20240611
    counts = np.zeros((n, m), dtype=np.int64)
    for offset in range(draws):
        cols = ops.sinkhorn_sample(cost, x, y, log_a, log_b, g, res.eps, seed, offset)
        assert cols.shape == (1, n)
        counts[np.arange(n), cols[0].cpu().numpy()] += 1
    for i in range(n):
        p = chisquare(counts[i], probs[i] * draws).pvalue
        assert p > 1e-3, f"row {i}: counts {counts[i]} vs expected {probs[i] * draws} (p = {p:.2e})"


def test_sample_batch_copies_are_independent():
    """The Philox counter includes the batch index: identical problems of a batch draw
    independently."""
    C = torch.rand(1, 3, 4, generator=_gen(2), dtype=torch.float64).expand(500, 3, 4)
    res = flowfast.sinkhorn(C, eps=1.0)
    s = res.sample(_gen(3))
    probs = _np(res.plan()[0])
    probs = probs / probs.sum(1, keepdims=True)
    for i in range(3):
        counts = np.bincount(s[:, i].numpy(), minlength=4)
        assert chisquare(counts, probs[i] * 500).pvalue > 1e-3


# --------------------------------------------------------------------------------------------
# Philox4x32-10 known answers (Random123 kat_vectors)
# --------------------------------------------------------------------------------------------

_PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", _PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    words = [torch.tensor([c], dtype=torch.int64) for c in counter]
    out = ref.philox4x32(*words, *key)
    assert tuple(int(w) for w in out) == expected, [hex(int(w)) for w in out]


def test_philox_vectorized_and_uint32_range():
    """Many counters at once equal the one-at-a-time results and stay in [0, 2^32)."""
    c0 = torch.tensor([0, 1, 0xFFFFFFFF, 12345, 0x80000000], dtype=torch.int64)
    c1 = torch.tensor([0, 0, 0xFFFFFFFF, 7, 1], dtype=torch.int64)
    c2 = torch.tensor([0, 5, 0xFFFFFFFF, 0, 2], dtype=torch.int64)
    c3 = torch.tensor([0, 9, 0xFFFFFFFF, 3, 0x7FFFFFFF], dtype=torch.int64)
    key = (0xDEADBEEF, 0x12345678)
    batch = ref.philox4x32(c0, c1, c2, c3, *key)
    for k in range(5):
        one = ref.philox4x32(c0[k : k + 1], c1[k : k + 1], c2[k : k + 1], c3[k : k + 1], *key)
        assert [int(w) for w in one] == [int(w[k]) for w in batch]
    for w in batch:
        assert bool(((w >= 0) & (w <= 0xFFFFFFFF)).all())


def test_gumbel_moments():
    u = ref.gumbel(7, 11, torch.arange(200_000))
    assert bool(torch.isfinite(u).all())
    np.testing.assert_allclose(float(u.mean()), 0.5772156649, atol=0.01)  # Euler-Mascheroni
    np.testing.assert_allclose(float(u.var()), math.pi**2 / 6, rtol=0.02)


# --------------------------------------------------------------------------------------------
# gradients (envelope theorem at convergence)
# --------------------------------------------------------------------------------------------


def _converged(**kw):
    return flowfast.sinkhorn(**kw, tol=1e-12, max_iter=200_000)


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_value_grad_wrt_cost_is_plan(device, reg_m):
    gen = _gen(41)
    C = torch.rand(5, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    a, b = _simplex(5, gen).to(device), _simplex(4, gen).to(device)
    res = _converged(cost=C, a=a, b=b, eps=0.1, reg_m=reg_m)
    (grad,) = torch.autograd.grad(res.value, C)
    torch.testing.assert_close(grad, res.plan(), rtol=1e-12, atol=1e-14)


def test_value_grad_wrt_cost_batched_weights(device):
    gen = _gen(43)
    C = torch.rand(3, 5, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=device)
    res = _converged(cost=C, eps=0.2)
    (grad,) = torch.autograd.grad((w * res.value).sum(), C)
    torch.testing.assert_close(grad, w[:, None, None] * res.plan(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_value_grad_wrt_cost_matches_finite_difference(reg_m):
    gen = _gen(47)
    C = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    a, b = _simplex(5, gen), _simplex(4, gen)
    kw = dict(a=a, b=b, eps=0.1, reg_m=reg_m)
    Cg = C.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_converged(cost=Cg, **kw).value, Cg)
    h = 1e-5
    fd = torch.zeros_like(C)
    for i in range(5):
        for j in range(4):
            e = torch.zeros_like(C)
            e[i, j] = h
            fd[i, j] = (_converged(cost=C + e, **kw).value - _converged(cost=C - e, **kw).value) / (
                2 * h
            )
    torch.testing.assert_close(grad, fd, rtol=1e-4, atol=1e-8)


def _cloud_problem(device):
    gen = _gen(53)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(4, 2, generator=gen, dtype=torch.float64).to(device)
    a, b = _simplex(5, gen).to(device), _simplex(4, gen).to(device)
    return x, y, a, b


def _cloud_grads(x, y, a, b, reg_m, backend="auto"):
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    res = _converged(x=xg, y=yg, a=a, b=b, eps=0.3, reg_m=reg_m, backend=backend)
    return torch.autograd.grad(res.value, (xg, yg))


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_cloud_grad_matches_finite_difference(device, reg_m):
    x, y, a, b = _cloud_problem(device)
    gx, gy = _cloud_grads(x, y, a, b, reg_m)
    h = 1e-5

    def value(xx, yy):
        return float(_converged(x=xx, y=yy, a=a, b=b, eps=0.3, reg_m=reg_m).value)

    for t, grad, which in ((x, gx, "x"), (y, gy, "y")):
        fd = torch.zeros_like(t)
        for idx in np.ndindex(*t.shape):
            e = torch.zeros_like(t)
            e[idx] = h
            if which == "x":
                fd[idx] = (value(x + e, y) - value(x - e, y)) / (2 * h)
            else:
                fd[idx] = (value(x, y + e) - value(x, y - e)) / (2 * h)
        torch.testing.assert_close(grad, fd, rtol=1e-4, atol=1e-7, msg=f"d value / d {which}")


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_cloud_grad_matches_dense_grad(device, reg_m):
    """Chain rule through C = ||x - y||^2: the online backward equals autograd through a dense
    cost."""
    x, y, a, b = _cloud_problem(device)
    gx, gy = _cloud_grads(x, y, a, b, reg_m)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    res = _converged(cost=_sq_dists(xg, yg), a=a, b=b, eps=0.3, reg_m=reg_m)
    dx, dy = torch.autograd.grad(res.value, (xg, yg))
    torch.testing.assert_close(gx, dx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gy, dy, rtol=1e-9, atol=1e-12)


# Balanced only: unbalanced, the primal's extra terms rho * log(r_i / a_i) = -f_i cancel f + g at
# the optimum and autograd through the reference does give P (those cases pass).
_REG_M_CASES = [
    pytest.param(None, id="balanced"),
    pytest.param(0.5, id="unbalanced"),
]


@pytest.mark.parametrize("reg_m", _REG_M_CASES)
def test_reference_value_grad_wrt_cost_is_plan(reg_m):
    gen = _gen(41)
    C = torch.rand(5, 4, generator=gen, dtype=torch.float64).requires_grad_()
    res = _converged(cost=C, eps=0.1, reg_m=reg_m, backend="torch")
    (grad,) = torch.autograd.grad(res.value, C)
    torch.testing.assert_close(grad, res.plan(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reg_m", _REG_M_CASES)
def test_cloud_grad_matches_reference_autograd(reg_m):
    x, y, a, b = _cloud_problem("cpu")
    gx, gy = _cloud_grads(x, y, a, b, reg_m)
    rx, ry = _cloud_grads(x, y, a, b, reg_m, backend="torch")
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gy, ry, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------------


def _op_inputs(kind: str, dtype, requires_grad: bool = False):
    gen = _gen(61)
    B, n, m, d = 2, 3, 4, 2
    geo = _op_geometry(kind, gen, dtype, B, n, m, d)
    la, lb = _simplex(n, gen, B).log().to(dtype), _simplex(m, gen, B).log().to(dtype)
    f, g, _, _ = ops.sinkhorn_solve(
        *geo,
        la,
        lb,
        torch.zeros(B, n, dtype=dtype),
        torch.zeros(B, m, dtype=dtype),
        0.2,
        2.0,
        0.5,
        0.0,
        200,
        10,
        1e-6,
    )
    if requires_grad:
        geo = tuple(None if t is None else t.clone().requires_grad_() for t in geo)
    return geo, la, lb, f, g


@pytest.mark.parametrize("kind", ["dense", "cloud"])
@pytest.mark.parametrize("reg_m", [0.0, 0.5])
def test_opcheck_solve(dtype, kind, reg_m):
    geo, la, lb, f, g = _op_inputs(kind, dtype)
    torch.library.opcheck(
        ops.sinkhorn_solve,
        (
            *geo,
            la,
            lb,
            torch.zeros_like(f),
            torch.zeros_like(g),
            0.1,
            1.0,
            0.5,
            reg_m,
            50,
            10,
            1e-6,
        ),
    )
    # warm start from given potentials
    torch.library.opcheck(ops.sinkhorn_solve, (*geo, la, lb, f, g, 0.1, 0.1, 0.5, reg_m, 7, 3, 0.0))


@pytest.mark.parametrize("kind", ["dense", "cloud"])
def test_opcheck_stats_plan_sample(dtype, kind):
    geo, la, lb, f, g = _op_inputs(kind, dtype)
    torch.library.opcheck(ops.sinkhorn_stats, (*geo, la, lb, f, g, 0.2))
    torch.library.opcheck(ops.sinkhorn_plan, (*geo, la, lb, f, g, 0.2))
    for seed, offset in [(0, 0), (2**40 + 3, 2**35 + 7)]:
        torch.library.opcheck(ops.sinkhorn_sample, (*geo, la, lb, g, 0.2, seed, offset))


@pytest.mark.parametrize("reg_m", [0.0, 0.5])
def test_opcheck_value_dense(dtype, reg_m):
    geo, la, lb, f, g = _op_inputs("dense", dtype, requires_grad=True)
    torch.library.opcheck(ops.sinkhorn_value, (*geo, la, lb, f, g, 0.2, reg_m))


@pytest.mark.parametrize("reg_m", [0.0, 0.5])
def test_opcheck_value_cloud_no_grad(dtype, reg_m):
    geo, la, lb, f, g = _op_inputs("cloud", dtype, requires_grad=False)
    torch.library.opcheck(ops.sinkhorn_value, (*geo, la, lb, f, g, 0.2, reg_m))


@pytest.mark.parametrize("reg_m", [0.0, 0.5])
def test_opcheck_value_cloud_grad(dtype, reg_m):
    # All sub-tests, AOT dispatch included: the x/y backward goes through custom ops only.
    geo, la, lb, f, g = _op_inputs("cloud", dtype, requires_grad=True)
    torch.library.opcheck(ops.sinkhorn_value, (*geo, la, lb, f, g, 0.2, reg_m))


# --------------------------------------------------------------------------------------------
# convergence bookkeeping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps_scaling", [False, True])
@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_max_iter_one(device, dtype, eps_scaling, reg_m):
    C = torch.rand(2, 5, 4, generator=_gen(71), dtype=torch.float64).to(device, dtype)
    res = flowfast.sinkhorn(C, eps=0.01, reg_m=reg_m, max_iter=1, eps_scaling=eps_scaling)
    assert res.n_iter.dtype == torch.int64
    assert res.n_iter.tolist() == [1, 1]
    _assert_all_finite(res)


@pytest.mark.parametrize("max_iter", [1, 3, 10, 37])
@pytest.mark.parametrize("check_every", [1, 4, 10])
def test_n_iter_bounded(device, dtype, max_iter, check_every):
    C = torch.rand(3, 6, 5, generator=_gen(73), dtype=torch.float64).to(device, dtype)
    res = flowfast.sinkhorn(C, eps=0.05, max_iter=max_iter, check_every=check_every)
    n_iter = res.n_iter.cpu()
    assert bool(((n_iter >= 1) & (n_iter <= max_iter)).all()), n_iter
    stopped = n_iter < max_iter
    # convergence is only tested every check_every iterations
    assert bool((n_iter[stopped] % check_every == 0).all()), n_iter


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_tol_zero_runs_max_iter(device, dtype, reg_m):
    C = torch.rand(5, 4, generator=_gen(79), dtype=torch.float64).to(device, dtype)
    # small eps, no scaling: 25 iterations are far from an exact fixed point: tol = 0 runs them all
    res = flowfast.sinkhorn(C, eps=0.01, reg_m=reg_m, tol=0.0, max_iter=25, eps_scaling=False)
    assert int(res.n_iter) == 25
    _assert_all_finite(res)


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-9])
@pytest.mark.parametrize("kind", ["dense", "cloud"])
def test_converged_reports_error_below_tol(device, dtype, tol, kind):
    if dtype == torch.float32 and tol < 1e-5:
        pytest.skip("below float32's reachable marginal error floor (~1e-6)")
    gen = _gen(83)
    B, n, m = 3, 8, 6
    geo = _geometry(kind, gen, dtype, device, B, n, m)
    b = _simplex(m, gen, B).to(device, dtype)
    res = flowfast.sinkhorn(**geo, b=b, eps=0.1, tol=tol, max_iter=5000)
    assert bool((res.n_iter < 5000).all()), res.n_iter
    assert bool((res.marginal_error <= tol).all()), res.marginal_error
    # marginal_error is the L1 column-marginal error of the returned plan
    P = res.plan().double()
    want = (P.sum(-2) - b.double()).abs().sum(-1)
    # (the plan is stored in the input dtype, so float32 agrees only to its rounding floor)
    np.testing.assert_allclose(
        _np(res.marginal_error),
        _np(want),
        rtol=1e-6,
        atol=2e-6 if dtype == torch.float32 else 1e-14,
    )
    # cost is <P, C>
    C = (
        geo["cost"].double()
        if kind == "dense"
        else _sq_dists(res._inputs[1].double(), res._inputs[2].double())
    )
    np.testing.assert_allclose(
        _np(res.cost),
        _np((P * C.double()).sum((-2, -1))),
        rtol=1e-5 if dtype == torch.float32 else 1e-12,
    )


def test_not_converged_reports_large_error():
    C = torch.rand(10, 10, generator=_gen(89), dtype=torch.float64)
    b = _simplex(10, _gen(90))
    res = flowfast.sinkhorn(C, b=b, eps=1e-3, max_iter=2, eps_scaling=False, tol=1e-9)
    assert int(res.n_iter) == 2
    assert float(res.marginal_error) > 1e-9
    want = float((res.plan().sum(0) - b).abs().sum())
    np.testing.assert_allclose(float(res.marginal_error), want, rtol=1e-8)
