"""The one NaN policy (issue 24): every path's loss and sample, ``weight`` and ``odeint`` check their
inputs the same way (``check_finite=True``), refuse batches whose loss would overflow the dtype, and
never hand back a non-finite result without a word; plus the adaptive solver's floor and the
float32 Sinkhorn potentials that are returned as they were reported."""

from __future__ import annotations

import math

import pytest
import torch

import flowfast
from flowfast import paths
from flowfast.samplers import odeint

PATHS = {
    "icfm": lambda: paths.IndependentCFM(sigma=0.1),
    "otcfm": lambda: paths.OptimalTransportCFM(sigma=0.1),
    "sbcfm": lambda: paths.SchrodingerBridgeCFM(sigma=1.0),
    "target": lambda: paths.TargetCFM(sigma=0.1),
    "vp": lambda: paths.VariancePreservingCFM(sigma=0.1),
}


def _model(x, t):
    return 0.5 * x


def _batch(dtype=torch.float32, scale=1.0, n=8, d=3):
    g = torch.Generator().manual_seed(0)
    return (scale * torch.randn(n, d, generator=g)).to(dtype), (scale * torch.randn(n, d, generator=g) + 1).to(dtype)


def _planted(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("where", ["x0", "x1", "weight", "t"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_refused_by_every_path(name, fused, where, value):
    x0, x1 = _batch()
    args = {"x0": x0, "x1": x1, "weight": torch.ones(8), "t": torch.full((8,), 0.5)}
    args[where] = _planted(args[where], value)
    with pytest.raises(ValueError, match=rf"^{where} contains 1 NaN/Inf"):
        PATHS[name]().loss(_model, args["x0"], args["x1"], t=args["t"], weight=args["weight"], fused=fused)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("where", ["x0", "x1"])
def test_non_finite_batches_are_refused_by_the_samples(name, where):
    x0, x1 = _batch()
    batch = {"x0": x0, "x1": x1}
    batch[where] = _planted(batch[where], math.nan)
    path = PATHS[name]()
    with pytest.raises(ValueError, match=rf"^{where} contains 1 NaN/Inf"):
        path.sample_location_and_conditional_flow(batch["x0"], batch["x1"])
    with pytest.raises(ValueError, match=rf"^{where} contains 1 NaN/Inf"):
        path.sample_paired(batch["x0"], batch["x1"])


@pytest.mark.parametrize("name", ["icfm", "target", "vp"])
def test_check_finite_false_skips_the_check(name):
    x0, x1 = _batch()
    loss = PATHS[name]().loss(_model, _planted(x0, math.nan), x1, check_finite=False)
    assert torch.isnan(loss)


def test_ot_couplings_check_their_batch_even_without_the_path_check():
    x0, x1 = _batch()
    with pytest.raises(ValueError, match="NaN/Inf"):
        PATHS["otcfm"]().loss(_model, _planted(x0, math.nan), x1, check_finite=False)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("fused", [True, False])
def test_a_loss_that_would_overflow_float32_is_refused(name, fused):
    x0, x1 = _batch(scale=1e30)
    with pytest.raises(ValueError, match="overflows float32.*rescale the data"):
        PATHS[name]().loss(_model, x0, x1, fused=fused)


@pytest.mark.parametrize("name", ["icfm", "otcfm", "vp"])
def test_large_float32_batches_below_the_bound_give_finite_equal_losses(name):
    x0, x1 = _batch(scale=1e15, n=64, d=16)
    path = type(PATHS[name]())(sigma=0.0)  # no noise: the fused and eager losses are the same number
    t = torch.linspace(0, 1, 64)
    fused = path.loss(_model, x0, x1, t=t, fused=True)
    eager = path.loss(_model, x0, x1, t=t, fused=False)
    exact = path.loss(_model, x0.double(), x1.double(), t=t.double(), fused=False)
    assert torch.isfinite(fused) and torch.isfinite(eager)
    torch.testing.assert_close(fused.double(), exact, rtol=1e-5, atol=0)
    torch.testing.assert_close(eager.double(), exact, rtol=1e-5, atol=0)


def test_eager_loss_sums_without_overflowing_past_the_largest_term():
    # 16384 terms of ~1e35 each: a plain float32 sum of squares would pass 3.4e38.
    x0 = torch.zeros(4, 4096)
    x1 = torch.full((4, 4096), 2e17)
    path = paths.IndependentCFM()
    loss = path.loss(lambda x, t: torch.zeros_like(x), x0, x1, fused=False)
    torch.testing.assert_close(loss, torch.tensor(4e34), rtol=1e-5, atol=0)


def test_half_precision_bound_and_huge_weights():
    x0, x1 = _batch(dtype=torch.float16, scale=200.0)
    with pytest.raises(ValueError, match="overflows float16"):
        paths.IndependentCFM().loss(_model, x0, x1)
    x0, x1 = _batch(dtype=torch.float16)
    assert torch.isfinite(paths.IndependentCFM().loss(_model, x0, x1))
    x0, x1 = _batch()
    with pytest.raises(ValueError, match="weight reaches 1e\\+38.*scale the weights down"):
        paths.IndependentCFM().loss(_model, x0, x1, weight=torch.full((8,), 1e38))


# --- odeint ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_odeint_refuses_a_non_finite_end_state(method):
    with pytest.raises(ValueError, match="NaN/Inf entries although x0 is finite"):
        odeint(lambda x, t: x * math.nan, torch.ones(2, 2), method=method, steps=4)
    with pytest.raises(ValueError, match="overflowed float32"):
        odeint(lambda x, t: 1e30 * x, torch.ones(2, 2), method=method, steps=4)
    out = odeint(lambda x, t: x * math.nan, torch.ones(2, 2), method=method, steps=4, check_finite=False)
    assert torch.isnan(out.x).all()


def test_odeint_initial_state_policy():
    x0 = _planted(torch.ones(2, 2), math.inf)
    with pytest.raises(ValueError, match="^x0 contains 1 NaN/Inf"):
        odeint(lambda x, t: -x, x0)
    assert not torch.isfinite(odeint(lambda x, t: -x, x0, steps=2, check_finite=False).x).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_dopri5_with_rtol_zero_terminates_on_a_state_past_atol_resolution(dtype):
    # e^20 ~ 4.9e8: atol = 1e-5 is below float32's resolution there; the ulp floor lets it finish.
    out = odeint(lambda x, t: -20 * x, torch.ones(2, 2, dtype=dtype), t0=1.0, t1=0.0, method="dopri5", rtol=0.0)
    expected = math.exp(20)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert out.x.dtype == dtype
    assert abs(out.x.double().mean().item() / expected - 1) < tol


def test_dopri5_says_when_the_step_size_underflows():
    with pytest.raises(RuntimeError, match="step size underflowed"):
        odeint(lambda x, t: 1.0 / (0.5 - t[:, None]) ** 3 + 0 * x, torch.ones(2, 2, dtype=torch.float64),
               method="dopri5")


# --- float32 Sinkhorn potentials that are not shifted ---------------------------------------------
def _recomputed(result, cost):
    f, g = result.f.double(), result.g.double()
    n, m = cost.shape
    plan = torch.exp((f[:, None] + g[None, :] - cost.double()) / result.eps) / (n * m)
    return (plan.sum(0) - 1 / m).abs().sum().item(), (plan * cost.double()).sum().item()


@pytest.mark.parametrize("rel, wide", [(1e-2, False), (1e-4, True), (1e-5, True)])
def test_float32_clouds_at_small_eps_return_potentials_that_carry_the_plan(rel, wide):
    g = torch.Generator().manual_seed(3)
    x, y = 10 * torch.randn(60, 2, generator=g), 10 * torch.randn(80, 2, generator=g) + 3
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    result = flowfast.sinkhorn(x=x, y=y, eps=rel * cost.max().item(), max_iter=3000)
    assert result.f.dtype == (torch.float64 if wide else torch.float32)
    assert result.plan().dtype == torch.float32 and result.cost.dtype == torch.float32
    error, transport = _recomputed(result, cost)
    assert abs(error - result.marginal_error.item()) <= 1e-3 * max(error, 1e-4)
    assert abs(transport - result.cost.item()) <= 1e-5 * transport


def test_float32_unbalanced_dense_far_from_zero_is_solved_wide():
    cost = 1e4 + torch.rand(20, 30, generator=torch.Generator().manual_seed(1))
    result = flowfast.sinkhorn(cost, eps=1.0, reg_m=1e5)
    exact = flowfast.sinkhorn(cost.double(), eps=1.0, reg_m=1e5)
    assert result.f.dtype == torch.float64
    # Only the float32 uniform log-weights differ from the float64 run's; a float32 f would be off by
    # its ulp at 1e4, about 1e-3.
    torch.testing.assert_close(result.f, exact.f, rtol=1e-6, atol=0)
    torch.testing.assert_close(result.cost.double(), exact.cost, rtol=1e-6, atol=0)


def test_the_default_checks_host_batches_only():
    cpu, elsewhere = torch.zeros(2, 2), torch.empty(2, 2, device="meta")
    assert paths.wants_check(None, cpu) and not paths.wants_check(None, elsewhere)
    assert paths.wants_check(True, elsewhere) and not paths.wants_check(False, cpu)
    with pytest.raises(TypeError, match="check_finite must be None, True or False"):
        paths.wants_check("yes", cpu)


# --- found by the fuzz suite's paths and CLI families ---------------------------------------------
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_sb_cfm_float16_eager_is_finite_at_the_ends(t):
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).half()
    path = paths.SchrodingerBridgeCFM(0.5)
    loss = path.loss(_model, x, x.flip(0), t=t, fused=False)
    assert torch.isfinite(loss)
    _, xt, ut = path.sample_location_and_conditional_flow(x, x.flip(0), t=t)
    assert torch.isfinite(ut).all() and torch.isfinite(xt).all()


@pytest.mark.parametrize("fused", [True, False])
def test_a_checked_loss_that_overflows_float16_says_so(fused):
    path = paths.SchrodingerBridgeCFM(0.5)  # u_t ~ 1/sqrt(t) next to t = 0: its square passes 65504
    x0, x1 = torch.zeros(1, 3).half(), torch.ones(1, 3).half()
    with pytest.raises(FloatingPointError, match="non-finite.*overflowed float16.*bfloat16 or float32"):
        path.loss(lambda x, t: 0 * x, x0, x1, t=torch.tensor([1e-7]), fused=fused)
    assert not torch.isfinite(path.loss(lambda x, t: 0 * x, x0, x1, t=torch.tensor([1e-7]), fused=fused,
                                        check_finite=False))


def test_a_model_returning_nan_is_a_floating_point_error_when_checked():
    x0, x1 = _batch()
    with pytest.raises(FloatingPointError, match="model\\(x_t, t\\) returned NaN/Inf"):
        paths.IndependentCFM().loss(lambda x, t: x * math.nan, x0, x1)


def test_a_bad_t_is_named_before_the_coupling_can_refuse_the_batch():
    x0 = torch.rand(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e30
    path = paths.SchrodingerBridgeCFM(1.0)
    with pytest.raises(ValueError, match="^t contains 2 NaN/Inf"):
        path.loss(_model, x0, x0.flip(0), t=math.nan)
    with pytest.raises(ValueError, match="^t contains 2 NaN/Inf"):
        path.sample_location_and_conditional_flow(x0, x0.flip(0), t=math.nan)
    with pytest.raises(ValueError, match="too small") as error:
        path.loss(_model, x0, x0.flip(0))
    assert "float64 batches" not in str(error.value)  # the batch is float64 already


def test_float32_dense_costs_whose_range_outgrows_float32_potentials_report_what_they_return():
    # issue 22 §4: 3 x 3 costs ~1e30 at eps = 1.8e-5 x range used to report 0.0 for a plan off by 1e-3
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        cost = 1e30 * torch.rand(3, 3, generator=g)
        eps = 1.8e-5 * float(cost.max() - cost.min())
        result = flowfast.sinkhorn(cost, eps=eps)
        assert result.f.dtype == torch.float64
        error, _ = _recomputed(result, cost)
        assert error <= 1e-9 and result.marginal_error.item() <= 1e-9


# --- review findings -------------------------------------------------------------------------------
def test_float64_batches_past_the_float64_bound_are_a_value_error_not_an_overflow():
    x0 = torch.full((4, 2), 1e160, dtype=torch.float64)
    with pytest.raises(ValueError, match="overflows float64"):
        paths.IndependentCFM().loss(_model, x0, torch.zeros_like(x0))


def test_a_finite_weight_beyond_float16_is_named_as_such():
    x0, x1 = _batch(dtype=torch.float16)
    with pytest.raises(ValueError, match="weight reaches 1e\\+05"):
        paths.IndependentCFM().loss(_model, x0, x1, weight=torch.full((8,), 1e5))


def test_numpy_bools_are_bools():
    import numpy as np

    assert paths.wants_check(np.bool_(True), torch.empty(1, device="meta"))


def test_peaks_of_mixed_dtypes_are_read_in_float64():
    from flowfast._validate import checked_peaks, stacked_peaks

    named, bounds = stacked_peaks({"a": torch.ones(2), "b": torch.full((2,), 1e300, dtype=torch.float64)})
    assert checked_peaks(named, bounds.tolist()) == {"a": 1.0, "b": 1e300}


def test_wasserstein2_of_an_overflowing_cost_is_not_called_a_forbidden_edge():
    from flowfast.metrics import wasserstein2

    x = torch.zeros(4, 2, dtype=torch.float64)
    x[0, 0] = 1e160
    with pytest.raises(ValueError, match="NaN/Inf"):
        wasserstein2(x, torch.zeros(4, 2, dtype=torch.float64))
