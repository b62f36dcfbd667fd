"""flowfast.compat.pot against POT itself (issue 22 §2): the same plans, losses and log entries
from POT's own kinds of problems (uniform and random histograms, several histograms in b, warm
starts, unbalanced KL), POT's defaults and its warnings."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch

from flowfast.compat import pot


def _problem(n=40, m=50, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 1
    M = ot.dist(x, y)
    M /= M.max()
    if not weights:
        return ot.unif(n), ot.unif(m), M
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return a / a.sum(), b / b.sum(), M


def _pot(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # POT must converge on the reference side
        return fn(*args, **kwargs)


@pytest.mark.parametrize("method", ["sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("reg", [0.5, 0.05])
def test_plan_and_log_match_pot(method, weights, reg):
    a, b, M = _problem(weights=weights)
    P_ref, log_ref = _pot(ot.sinkhorn, a, b, M, reg, method="sinkhorn_log", stopThr=1e-12, numItermax=50_000,
                          log=True)
    P, log = pot.sinkhorn(a, b, M, reg, method=method, stopThr=1e-12, numItermax=50_000, log=True)
    assert isinstance(P, np.ndarray) and P.dtype == np.float64 and P.shape == M.shape
    np.testing.assert_allclose(P, P_ref, rtol=1e-8, atol=1e-14)
    # potentials are defined up to (log u + c, log v - c): compare their sums over the grid
    grid = log["log_u"][:, None] + log["log_v"][None, :]
    grid_ref = log_ref["log_u"][:, None] + log_ref["log_v"][None, :]
    np.testing.assert_allclose(grid, grid_ref, rtol=0, atol=1e-7)
    np.testing.assert_allclose(log["u"][:, None] * log["v"][None, :], np.exp(grid), rtol=1e-12)
    assert set(log_ref) <= set(log) and 0 < log["niter"] <= 50_000 and log["err"][-1] <= 1e-12


def test_sinkhorn2_losses_match_pot_for_one_and_several_histograms():
    a, b, M = _problem(weights=True)
    b2 = np.stack([b, np.roll(b, 7), ot.unif(len(b))], axis=1)
    loss_ref = _pot(ot.sinkhorn2, a, b2, M, 0.1, stopThr=1e-12, numItermax=50_000)
    loss = pot.sinkhorn2(a, b2, M, 0.1, stopThr=1e-12, numItermax=50_000)
    assert loss.shape == (3,)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-9)
    one = pot.sinkhorn2(a, b, M, 0.1, stopThr=1e-12, numItermax=50_000)
    assert np.ndim(one) == 0 and isinstance(one, np.floating)
    np.testing.assert_allclose(one, _pot(ot.sinkhorn2, a, b, M, 0.1, stopThr=1e-12, numItermax=50_000), rtol=1e-9)
    with pytest.raises(ValueError, match="use sinkhorn2"):
        pot.sinkhorn(a, b2, M, 0.1)


def test_uniform_when_empty_and_torch_in_torch_out():
    a, b, M = _problem()
    np.testing.assert_allclose(pot.sinkhorn([], [], M, 0.1, stopThr=1e-11, numItermax=20_000),
                               _pot(ot.sinkhorn, a, b, M, 0.1, stopThr=1e-11, numItermax=20_000), rtol=1e-7, atol=1e-14)
    P = pot.sinkhorn(None, None, torch.from_numpy(M), 0.1, stopThr=1e-11, numItermax=20_000)
    assert isinstance(P, torch.Tensor) and P.dtype == torch.float64
    P32 = pot.sinkhorn(None, None, torch.from_numpy(M).float(), 0.1, stopThr=1e-5)
    assert P32.dtype == torch.float32
    np.testing.assert_allclose(P32.double().numpy(), P.numpy(), rtol=0, atol=1e-6)


def test_warm_start_continues_from_pot_potentials():
    a, b, M = _problem(weights=True, seed=2)
    _, log = pot.sinkhorn(a, b, M, 0.02, stopThr=1e-10, numItermax=50_000, log=True)
    P, log2 = pot.sinkhorn(a, b, M, 0.02, stopThr=1e-10, numItermax=50_000, log=True,
                           warmstart=(log["log_u"], log["log_v"]))
    assert log2["niter"] <= 10 < log["niter"]
    _, log_ref = _pot(ot.sinkhorn, a, b, M, 0.02, method="sinkhorn_log", stopThr=1e-10, numItermax=50_000, log=True)
    P_ref, log_ref2 = _pot(ot.sinkhorn, a, b, M, 0.02, method="sinkhorn_log", stopThr=1e-10, numItermax=50_000,
                           log=True, warmstart=(log_ref["log_u"], log_ref["log_v"]))
    np.testing.assert_allclose(P, P_ref, rtol=1e-6, atol=1e-14)


def test_not_converging_warns_like_pot():
    a, b, M = _problem()
    with pytest.warns(UserWarning, match="did not converge"):
        pot.sinkhorn(a, b, M, 1e-3, numItermax=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pot.sinkhorn(a, b, M, 1e-3, numItermax=5, warn=False)
        pot.sinkhorn2(a, b, M, 1e-3, numItermax=5)  # POT's sinkhorn2 defaults to warn=False


def test_epsilon_scaling_reaches_small_reg():
    a, b, M = _problem(weights=True)
    P, log = pot.sinkhorn(a, b, M, 1e-3, method="sinkhorn_epsilon_scaling", numItermax=20_000, stopThr=1e-9,
                          log=True)
    np.testing.assert_allclose(P.sum(0), b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(P.sum(1), a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("reg_m", [0.5, 5.0, (2.0, 2.0)])
def test_unbalanced_matches_pot(reg_m):
    a, b, M = _problem(weights=True)
    a = 2 * a  # unequal masses
    P_ref = _pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.1, reg_m, method="sinkhorn_stabilized",
                 stopThr=1e-14, numItermax=20_000)
    P = pot.sinkhorn_unbalanced(a, b, M, 0.1, reg_m, stopThr=1e-14, numItermax=20_000)
    np.testing.assert_allclose(P, P_ref, rtol=1e-7, atol=1e-14)
    loss_ref = _pot(ot.unbalanced.sinkhorn_unbalanced2, a, b, M, 0.1, reg_m, method="sinkhorn_stabilized",
                    stopThr=1e-14, numItermax=20_000)
    np.testing.assert_allclose(pot.sinkhorn_unbalanced2(a, b, M, 0.1, reg_m, stopThr=1e-14, numItermax=20_000),
                               loss_ref, rtol=1e-7)


def test_options_without_an_equivalent_are_refused():
    a, b, M = _problem()
    with pytest.raises(ValueError, match="Unknown method"):
        pot.sinkhorn(a, b, M, 0.1, method="sinkhorn_magic")
    with pytest.raises(TypeError, match="no equivalent.*print_period"):
        pot.sinkhorn(a, b, M, 0.1, print_period=5)
    with pytest.raises(ValueError, match="one weight"):
        pot.sinkhorn_unbalanced(a, b, M, 0.1, (1.0, 2.0))
    with pytest.raises(ValueError, match="reg_type='kl'"):
        pot.sinkhorn_unbalanced(a, b, M, 0.1, 1.0, reg_type="l2")
    with pytest.raises(ValueError, match="a must have shape"):
        pot.sinkhorn(np.ones(3) / 3, b, M, 0.1)


def test_unbalanced_log_and_warm_start_follow_pots_kl_convention():
    a, b, M = _problem(weights=True)
    P_ref, log_ref = _pot(ot.unbalanced.sinkhorn_unbalanced, 2 * a, b, M, 0.1, 1.0, stopThr=1e-12, numItermax=20_000,
                          log=True)
    P, log = pot.sinkhorn_unbalanced(2 * a, b, M, 0.1, 1.0, stopThr=1e-12, numItermax=20_000, log=True)
    assert {"err", "logu", "logv"} <= set(log)
    np.testing.assert_allclose(log["logu"][:, None] + log["logv"][None], log_ref["logu"][:, None] + log_ref["logv"][None],
                               rtol=0, atol=1e-8)
    warm = pot.sinkhorn_unbalanced(2 * a, b, M, 0.1, 1.0, stopThr=1e-12, numItermax=20_000,
                                   warmstart=(log_ref["logu"], log_ref["logv"]))
    np.testing.assert_allclose(warm, P_ref, rtol=1e-7, atol=1e-14)


def test_several_histograms_log_in_pots_shapes_and_warm_start():
    a, b, M = _problem(weights=True)
    b2 = np.stack([b, np.roll(b, 3)], axis=1)
    _, log_ref = _pot(ot.sinkhorn2, a, b2, M, 0.1, stopThr=1e-12, numItermax=50_000, log=True)
    loss, log = pot.sinkhorn2(a, b2, M, 0.1, stopThr=1e-12, numItermax=50_000, log=True)
    assert log["u"].shape == log_ref["u"].shape == (len(a), 2) and log["v"].shape == log_ref["v"].shape
    again, log2 = pot.sinkhorn2(a, b2, M, 0.1, stopThr=1e-12, numItermax=50_000, log=True,
                                warmstart=(log["log_u"], log["log_v"]))
    assert log2["niter"] <= 10
    np.testing.assert_allclose(again, loss, rtol=1e-12)


def test_bad_warm_starts_are_clear():
    a, b, M = _problem()
    with pytest.raises(ValueError, match=r"warmstart's log_u must have shape \(40,\)"):
        pot.sinkhorn(a, b, M, 0.1, warmstart=(np.zeros(3), np.zeros(50)))
    with pytest.raises(TypeError, match="warmstart must be a"):
        pot.sinkhorn(a, b, M, 0.1, warmstart=np.zeros(40))
