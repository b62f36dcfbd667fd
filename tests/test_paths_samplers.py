"""flowfast.paths (CFM family), flowfast.samplers (ODE solvers), flowfast.metrics, and the torchcfm
flow-matcher shims: formulas against torchcfm, solver orders of convergence, a short training run."""

import math

import numpy as np
import pytest
import torch

from flowfast import data, metrics, paths
from flowfast.compat import torchcfm as compat
from flowfast.samplers import odeint

torchcfm = pytest.importorskip("torchcfm.conditional_flow_matching")


def _batch(shape=(16, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64) + 2
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    return x0, x1, t, eps


PAIRS = [
    (compat.ConditionalFlowMatcher(sigma=0.1), torchcfm.ConditionalFlowMatcher(sigma=0.1)),
    (compat.ExactOptimalTransportConditionalFlowMatcher(sigma=0.1),
     torchcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)),
    (compat.TargetConditionalFlowMatcher(sigma=0.05), torchcfm.TargetConditionalFlowMatcher(sigma=0.05)),
    (compat.SchrodingerBridgeConditionalFlowMatcher(sigma=0.7), torchcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=0.7)),
    (compat.VariancePreservingConditionalFlowMatcher(sigma=0.2),
     torchcfm.VariancePreservingConditionalFlowMatcher(sigma=0.2)),
]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 5, 5)])
def test_path_formulas_match_torchcfm(ours, theirs, shape):
    x0, x1, t, eps = _batch(shape)
    torch.testing.assert_close(ours.compute_mu_t(x0, x1, t), theirs.compute_mu_t(x0, x1, t))
    torch.testing.assert_close(torch.as_tensor(ours.compute_sigma_t(t), dtype=torch.float64),
                               torch.as_tensor(theirs.compute_sigma_t(t), dtype=torch.float64))
    xt = ours.sample_xt(x0, x1, t, eps)
    torch.testing.assert_close(xt, theirs.sample_xt(x0, x1, t, eps))
    torch.testing.assert_close(ours.compute_conditional_flow(x0, x1, t, xt),
                               theirs.compute_conditional_flow(x0, x1, t, xt))
    torch.testing.assert_close(torch.as_tensor(ours.compute_lambda(t), dtype=torch.float64),
                               torch.as_tensor(theirs.compute_lambda(t), dtype=torch.float64))


@pytest.mark.parametrize("ours", [m for m, _ in PAIRS], ids=lambda m: type(m).__name__)
def test_sample_location_and_conditional_flow_contract(ours):
    x0, x1, _, _ = _batch((32, 2))
    g = torch.Generator().manual_seed(1)
    t, xt, ut, eps = ours.sample_location_and_conditional_flow(x0, x1, return_noise=True, generator=g)
    assert t.shape == (32,) and xt.shape == x0.shape and ut.shape == x0.shape and eps.shape == x0.shape
    assert bool(((t >= 0) & (t <= 1)).all())
    t2, xt2, ut2 = ours.sample_location_and_conditional_flow(x0, x1, t=t)
    torch.testing.assert_close(t2, t)


def test_flowfast_ot_cfm_pairs_by_a_permutation():
    x0, x1, t, _ = _batch((64, 2))
    path = paths.OptimalTransportCFM(sigma=0.0)
    a, b = path.couple(x0, x1)
    torch.testing.assert_close(a, x0)
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))
    w2 = float(((a - b) ** 2).sum(-1).mean())
    assert abs(w2 - metrics.wasserstein2(x0, x1) ** 2) < 1e-9
    # with sigma = 0 the conditional flow is x1 - x0 of the coupled pairs
    _, xt, ut = path.sample_location_and_conditional_flow(x0, x1, t=t)
    torch.testing.assert_close(ut, b - a)
    torch.testing.assert_close(xt, t[:, None] * b + (1 - t[:, None]) * a)


def test_sb_cfm_couples_with_entropic_plan():
    x0, x1, t, _ = _batch((48, 2))
    path = paths.SchrodingerBridgeCFM(sigma=1.0)
    a, b = path.couple(x0, x1, torch.Generator().manual_seed(0))
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))
    assert float(((a - b) ** 2).sum(-1).mean()) < float(((x0 - x1) ** 2).sum(-1).mean())


def test_guided_sampling_carries_labels():
    x0, x1, _, _ = _batch((32, 2))
    y0, y1 = torch.arange(32), torch.arange(32) + 100
    cfm = compat.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    t, xt, ut, l0, l1 = cfm.guided_sample_location_and_conditional_flow(x0, x1, y0, y1)
    torch.testing.assert_close(ut, x1[l1 - 100] - x0[l0])


def test_paths_reject_bad_input():
    x0, x1, t, _ = _batch((8, 2))
    path = paths.IndependentCFM()
    with pytest.raises(ValueError, match="x0 and x1"):
        path.sample_location_and_conditional_flow(x0, x1[:4])
    with pytest.raises(ValueError, match="t must lie"):
        path.sample_location_and_conditional_flow(x0, x1, t=t + 1)
    with pytest.raises(ValueError, match="t"):
        path.sample_location_and_conditional_flow(x0, x1, t=torch.full((8,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="t must be"):
        path.sample_location_and_conditional_flow(x0, x1, t=t[:3])
    with pytest.raises(TypeError, match="x0"):
        path.sample_location_and_conditional_flow(x0.long(), x1)
    with pytest.raises(ValueError, match="sigma"):
        paths.IndependentCFM(sigma=-1.0)
    with pytest.raises(ValueError, match="model"):
        path.loss(lambda x, t: x[:, :1], x0, x1)


# --- samplers ------------------------------------------------------------------------------------

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)


def _linear(x, t):
    return x @ A.T


def _exact(x0, t):
    return x0 @ torch.linalg.matrix_exp(A * t).T


@pytest.mark.parametrize("path", [paths.IndependentCFM(0.1), paths.SchrodingerBridgeCFM(0.7), paths.TargetCFM(0.05),
                                  paths.VariancePreservingCFM(0.2)], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_prediction_loss_is_the_loss_of_the_sampled_target(path, dtype):
    x0, x1, t, _ = _batch((64, 3), seed=4)
    x0, x1, t = x0.to(dtype), x1.to(dtype), t.to(dtype)
    t_, xt, ut, eps = path.sample_paired(x0, x1, t, return_noise=True, generator=torch.Generator().manual_seed(1))
    v = (ut.double() + 0.3 * torch.randn(ut.shape, generator=torch.Generator().manual_seed(2),
                                         dtype=torch.float64)).to(dtype).requires_grad_()
    weight = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    loss = path.prediction_loss(v, x0, x1, t_, eps, weight=weight)
    # the kernel computes u_t in double from (x0, x1, t, eps); the eager u_t was rounded to dtype
    target = path.conditional_flow_from_noise(x0.double(), x1.double(), t_.double(), xt.double(), eps.double())
    diff = v.detach().double() - target
    want = ((diff ** 2).mean(1) * weight.double()).mean()
    tol = 1e-12 if dtype == torch.float64 else (1e-6 if dtype == torch.float32 else 1e-2)
    assert loss.dtype == dtype
    assert abs(float(loss.detach()) - float(want)) <= tol * float(want)
    loss.backward()
    grad = 2 * diff * weight.double()[:, None] / v.numel()
    torch.testing.assert_close(v.grad.double(), grad, rtol=tol * 10, atol=tol * float(grad.abs().max()) * 10)


def test_prediction_loss_rejects_what_it_cannot_use():
    x0, x1, t, eps = _batch((8, 2))
    with pytest.raises(ValueError, match="noise"):
        paths.TargetCFM(0.1).prediction_loss(x0, x0, x1, t)  # u_t needs the noise that made x_t
    with pytest.raises(ValueError, match="noise must be shaped like x0"):
        paths.SchrodingerBridgeCFM(0.5).prediction_loss(x0, x0, x1, t, eps[:4])
    with pytest.raises(TypeError, match="v "):
        paths.IndependentCFM().prediction_loss(None, x0, x1, t)
    with pytest.raises(ValueError, match="t must lie in"):
        paths.IndependentCFM().prediction_loss(x0, x0, x1, t + 1)
    v = x0.clone()
    v[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        paths.IndependentCFM().prediction_loss(v, x0, x1, t)



@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_order_of_convergence(method, order):
    x0 = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=torch.float64)
    errors = []
    for steps in (10, 20, 40):
        res = odeint(_linear, x0, method=method, steps=steps)
        assert res.nfe == steps * {"euler": 1, "midpoint": 2, "rk4": 4}[method]
        errors.append(float((res.x - _exact(x0, 1.0)).abs().max()))
    rates = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    assert all(abs(r - order) < 0.3 for r in rates), rates


def test_dopri5_meets_tolerance_and_counts_nfe():
    x0 = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=torch.float64)
    loose = odeint(_linear, x0, method="dopri5", atol=1e-4, rtol=1e-4)
    tight = odeint(_linear, x0, method="dopri5", atol=1e-10, rtol=1e-10, return_path=True)
    assert float((tight.x - _exact(x0, 1.0)).abs().max()) < 1e-8
    assert float((loose.x - _exact(x0, 1.0)).abs().max()) < 1e-3
    assert tight.nfe > loose.nfe
    accepted = tight.path.shape[0] - 1
    assert tight.nfe == 1 + 6 * (accepted + tight.n_rejected)
    torch.testing.assert_close(tight.times[-1], torch.tensor(1.0, dtype=torch.float64))
    back = odeint(_linear, tight.x, t0=1.0, t1=0.0, method="dopri5", atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(back.x, x0, atol=1e-7, rtol=0)


def test_odeint_rejects_bad_input():
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="method"):
        odeint(_linear, x0, method="heun")
    with pytest.raises(ValueError, match="steps"):
        odeint(_linear, x0, steps=0)
    with pytest.raises(TypeError, match="x0"):
        odeint(_linear, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="velocity"):
        odeint(lambda x, t: x[:, :1], x0)


# --- metrics and a short training run ----------------------------------------------------------------


def test_wasserstein2_matches_pot():
    ot = pytest.importorskip("ot")
    x, _, _, _ = _batch((40, 3))
    y = torch.randn(40, 3, dtype=torch.float64) * 2
    M = (torch.cdist(x, y) ** 2).numpy()
    w = np.full(40, 1 / 40)
    assert abs(metrics.wasserstein2(x, y) - math.sqrt(ot.emd2(w, w, M))) < 1e-9
    with pytest.raises(ValueError, match="same shape"):
        metrics.wasserstein2(x, y[:10])


@pytest.mark.parametrize("path", [paths.IndependentCFM(sigma=0.1), paths.OptimalTransportCFM(sigma=0.1)],
                         ids=["icfm", "otcfm"])
def test_short_training_lowers_w2(path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SELU(), torch.nn.Linear(64, 64), torch.nn.SELU(),
                              torch.nn.Linear(64, 2))

    def model(x, t):
        return net(torch.cat([x, t[:, None]], dim=-1))

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x_eval0, target = data.gaussian(512, g), data.eight_gaussians(512, g)
    with torch.no_grad():
        before = metrics.wasserstein2(odeint(model, x_eval0, method="euler", steps=20).x, target)
    for _ in range(400):
        loss = path.loss(model, data.gaussian(256, g), data.eight_gaussians(256, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = metrics.wasserstein2(odeint(model, x_eval0, method="euler", steps=20).x, target)
    assert after < 0.5 * before, (before, after)
    assert after < 2.0
