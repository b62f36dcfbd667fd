"""Regression tests of issue 24's path findings: fused and eager losses agree on all of [0, 1],
and 16-bit batches are coupled (in float32) instead of refused."""

from __future__ import annotations

import math

import pytest
import torch

from flowfast import couplings, paths
from flowfast.compat import torchcfm as compat

PATHS = [paths.IndependentCFM(0.1), paths.OptimalTransportCFM(0.0), paths.SchrodingerBridgeCFM(0.5),
         paths.TargetCFM(0.0), paths.TargetCFM(0.2), paths.VariancePreservingCFM(0.1)]


def _model(x, t):
    return torch.sin(x) * t[:, None] + 0.5 * x


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{type(p).__name__}-{p.sigma}")
@pytest.mark.parametrize("t_value", [0.0, 0.5, 1.0])
def test_fused_and_eager_losses_agree_at_the_endpoints(path, t_value):
    """Same coupling (a fixed generator), given noise-free endpoints excepted: both losses are
    finite and, where the noise coefficient vanishes (t in {0, 1} for the bridge, sigma = 0), equal."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 3, generator=g, dtype=torch.float64)
    b = torch.randn(8, 3, generator=g, dtype=torch.float64) + 1
    t = torch.full((8,), t_value, dtype=torch.float64)
    fused = path.loss(_model, a, b, t=t, generator=torch.Generator().manual_seed(1), fused=True)
    eager = path.loss(_model, a, b, t=t, generator=torch.Generator().manual_seed(1), fused=False)
    assert bool(torch.isfinite(fused)) and bool(torch.isfinite(eager)), (fused, eager)
    noiseless = (isinstance(path, paths.SchrodingerBridgeCFM) and t_value in (0.0, 1.0)) or (
        not isinstance(path, (paths.TargetCFM, paths.SchrodingerBridgeCFM)) and path.sigma == 0.0)
    if noiseless:
        torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{type(p).__name__}-{p.sigma}")
@pytest.mark.parametrize("t_value", [0.0, 0.3, 1.0])
def test_eager_target_equals_the_kernels_formula_with_the_same_noise(path, t_value):
    """The eager u_t equals the fused kernels' (x0, x1, noise) formula (the reference's) on the
    noise the eager step drew: the two losses differ only by their noise draws."""
    from flowfast import ops, reference

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.full((6,), t_value, dtype=torch.float64)
    _, xt, ut, noise = path.sample_paired(a, b, t, return_noise=True, generator=g)
    kind = ops.interpolant.KINDS[path.kernel_path]
    want_u = reference.interpolant.target(a, b, t, noise, kind, path.sigma, 0, 0)
    want_x, _ = reference.interpolant.sample(a, b, t, noise, kind, path.sigma, 0, 0, False)
    torch.testing.assert_close(xt, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ut, want_u.reshape(ut.shape), rtol=1e-12, atol=1e-12)


def test_target_cfm_eager_is_finite_at_t1_sigma0():
    """The issue's reproduction: 0/0 in the eager formula at t = 1 with sigma = 0."""
    p = paths.TargetCFM(sigma=0.0)
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    eager = p.loss(lambda x, t: x, a, b, t=torch.ones(4), fused=False)
    assert bool(torch.isfinite(eager))


def test_torchcfm_shim_keeps_torchcfm_formula():
    """compat.torchcfm follows torchcfm itself, whose formula is 0/0 there."""
    m = compat.TargetConditionalFlowMatcher(sigma=0.0)
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    _, _, ut = m.sample_location_and_conditional_flow(a, b, t=torch.ones(4))
    assert bool(torch.isnan(ut).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", [paths.OptimalTransportCFM(0.1), paths.SchrodingerBridgeCFM(0.5)],
                         ids=["otcfm", "sbcfm"])
def test_half_precision_batches_are_coupled(dtype, path):
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(32, 2, generator=g).to(dtype), (torch.randn(32, 2, generator=g) + 2).to(dtype)
    loss = path.loss(lambda x, t: x * 0.5, x0, x1, generator=torch.Generator().manual_seed(3))
    assert loss.dtype == dtype and bool(torch.isfinite(loss))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_exact_pairing_is_the_float32_optimum(dtype):
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(24, 3, generator=g).to(dtype), torch.randn(24, 3, generator=g).to(dtype)
    x0p, x1p, (i, j) = couplings.pair(x0, x1)
    assert x0p.dtype == dtype and x1p.dtype == dtype
    cols32 = couplings.linear_assignment(couplings.pairwise_cost(x0.float(), x1.float()))
    assert torch.equal(j, cols32)
    _, x1q = couplings.ot_pairing(x0, x1)
    assert torch.equal(x1q, x1[cols32])


def test_bf16_dopri5_moves_like_float32():
    """The issue's reproduction: increments below bf16 resolution were lost (9.7 instead of ~5e21)."""
    from flowfast.samplers import odeint

    # (rtol=0 as in the report cannot be met at |x| ~ 5e21 in any float dtype: a relative tolerance)
    x = odeint(lambda x, t: -50 * x, torch.ones(2, 2).bfloat16(), t0=1.0, t1=0.0, method="dopri5", rtol=1e-4).x
    assert x.dtype == torch.bfloat16
    torch.testing.assert_close(x.float(), torch.full((2, 2), math.exp(50.0)), rtol=2e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_tight_rtol_is_not_reported_as_nan(dtype):
    from flowfast.samplers import odeint

    res = odeint(lambda x, t: -x, torch.ones(3, 2).to(dtype), method="dopri5", rtol=1e-9, atol=1e-6)
    assert bool(torch.isfinite(res.x.float()).all())
    torch.testing.assert_close(res.x.float(), torch.full((3, 2), float(torch.tensor(-1.0).exp())), rtol=1e-2, atol=0)


def test_odeint_rejects_nan_initial_state():
    from flowfast.samplers import odeint

    x0 = torch.zeros(3, 2)
    x0[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x0 contains 1 NaN/Inf"):
        odeint(lambda x, t: x, x0)


def test_pairwise_cost_keeps_the_digits_of_points_far_from_zero():
    """float32 points at 1e6 with unit spread: the matmul form cancelled every digit (the fuzz suite
    found a non-optimal ot_pairing from it); centring first keeps them."""
    g = torch.Generator().manual_seed(6)
    a = 1e6 + torch.randn(40, 3, generator=g, dtype=torch.float64)
    b = 1e6 + torch.randn(40, 3, generator=g, dtype=torch.float64)
    a32, b32 = a.float(), b.float()
    want = ((a32.double()[:, None] - b32.double()[None]) ** 2).sum(-1)  # exact distances of the float32 points
    got = couplings.pairwise_cost(a32, b32)
    assert float((got.double() - want).abs().max()) < 1e-5 * float(want.max())
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    exact = ((a32.double()[:, None] - b32.double()[None]) ** 2).sum(-1).numpy()
    r, c = scipy_lsa(exact)
    _, b_paired = couplings.ot_pairing(a32, b32)
    total = float(((a32.double() - b_paired.double()) ** 2).sum())
    assert total <= exact[r, c].sum() * (1 + 1e-4)
