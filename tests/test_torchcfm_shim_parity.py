"""flowfast.compat.torchcfm against torchcfm itself (installed), on the same seeds: identical t,
x_t, u_t, eps and pairs, the same plans, wasserstein to the last digit, the same signatures and
errors (issue 22 §2). Entropic comparisons use float64 batches and a reg where POT converges
(POT's Gibbs kernel is float32 for a float32 cost, moving the plan by ~1e-7)."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
import torch

from flowfast.compat import torchcfm as shim

tcfm = pytest.importorskip("torchcfm.conditional_flow_matching")
tot = pytest.importorskip("torchcfm.optimal_transport")
ot = pytest.importorskip("ot")

SEED = 1994


def _quiet(fn, *args, **kwargs):
    """Call torchcfm (POT warns about convergence; torchcfm's own suite ignores UserWarnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _seeded(fn, seed=SEED):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return fn()


def _batches(shape, dtype=torch.float32, n=64, seed=0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=dtype)
    x1 = torch.randn(n, *shape, generator=g, dtype=dtype) + shift
    return x0, x1


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None
            continue
        assert type(a) is type(b)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            assert torch.equal(a, b) or (torch.isnan(b).any() and torch.equal(a.isnan(), b.isnan())
                                         and torch.equal(a[~a.isnan()], b[~b.isnan()]))
        else:
            assert np.array_equal(a, b)


# --- the public API ------------------------------------------------------------------------------


def _public(module):
    return {name: obj for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__}


@pytest.mark.parametrize("module", [tcfm, tot], ids=lambda m: m.__name__)
def test_every_public_name_with_torchcfm_signatures(module):
    for name, theirs in _public(module).items():
        ours = getattr(shim, name)
        members = [(name, theirs, ours)]
        if inspect.isclass(theirs):
            members += [(f"{name}.{m}", getattr(theirs, m), getattr(ours, m)) for m in vars(theirs)
                        if not m.startswith("_") or m == "__init__"]
        for what, t, o in members:
            if not callable(t):
                continue
            tp = list(inspect.signature(t).parameters.values())
            op = [p for p in inspect.signature(o).parameters.values() if p.kind != p.KEYWORD_ONLY]
            assert [(p.name, p.kind, p.default) for p in op] == [(p.name, p.kind, p.default) for p in tp], what


def test_errors_are_torchcfm_errors():
    with pytest.raises(ValueError, match="Unknown method: bogus"):
        shim.OTPlanSampler("bogus")
    with pytest.raises(ValueError, match="Unknown method: noname"):
        shim.wasserstein(torch.randn(4, 2), torch.randn(4, 2), "noname")
    with pytest.raises(AssertionError):
        shim.wasserstein(torch.randn(4, 2), torch.randn(4, 2), power=3)
    for sigma in (0, 0.0, -1.0):
        with pytest.raises(ValueError, match="Sigma must be strictly positive"):
            shim.SchrodingerBridgeConditionalFlowMatcher(sigma=sigma)
    x0, x1 = _batches((2,), n=8)
    for cls in (shim.ConditionalFlowMatcher, shim.ExactOptimalTransportConditionalFlowMatcher):
        with pytest.raises(AssertionError, match="t has to have batch size dimension"):
            cls().sample_location_and_conditional_flow(x0, x1, t=torch.rand(3))
    with pytest.warns(UserWarning, match="Small sigma values"):
        shim.SchrodingerBridgeConditionalFlowMatcher(sigma=5e-4)
    assert shim.OTPlanSampler("exact", num_threads="max").num_threads == "max"


# --- flow matchers ------------------------------------------------------------------------------

MATCHERS = [
    ("ConditionalFlowMatcher", {"sigma": 0.0}, torch.float32),
    ("ConditionalFlowMatcher", {"sigma": 0.5}, torch.float64),
    ("ExactOptimalTransportConditionalFlowMatcher", {"sigma": 0.0}, torch.float32),
    ("ExactOptimalTransportConditionalFlowMatcher", {"sigma": 1}, torch.float64),
    ("TargetConditionalFlowMatcher", {"sigma": 0.0}, torch.float32),
    ("TargetConditionalFlowMatcher", {"sigma": 0.1}, torch.float64),
    ("SchrodingerBridgeConditionalFlowMatcher", {"sigma": 0.1}, torch.float32),
    ("SchrodingerBridgeConditionalFlowMatcher", {"sigma": 1.5}, torch.float64),
    ("SchrodingerBridgeConditionalFlowMatcher", {"sigma": 0.5, "ot_method": "sinkhorn"}, torch.float64),
    ("SchrodingerBridgeConditionalFlowMatcher", {"sigma": 1.0, "ot_method": "unbalanced"}, torch.float64),
    ("VariancePreservingConditionalFlowMatcher", {"sigma": 0.0}, torch.float32),
    ("VariancePreservingConditionalFlowMatcher", {"sigma": 0.3}, torch.float64),
]


def _pair(name, kwargs):
    return getattr(shim, name)(**kwargs), _quiet(getattr(tcfm, name), **kwargs)


@pytest.mark.parametrize("name,kwargs,dtype", MATCHERS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(2,), (1, 2), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("return_noise", [False, True])
def test_flow_matchers_draw_what_torchcfm_draws(name, kwargs, dtype, shape, return_noise):
    ours, theirs = _pair(name, kwargs)
    x0, x1 = _batches(shape, dtype)
    with warnings.catch_warnings():  # where torchcfm's POT warns (non-convergence, massless plans), the shim does
        warnings.filterwarnings("ignore", "(Sinkhorn did not converge|Numerical errors in OT plan)", UserWarning)
        got = _seeded(lambda: ours.sample_location_and_conditional_flow(x0, x1, return_noise=return_noise))
        t = torch.rand(x0.shape[0], dtype=dtype)
        got2 = _seeded(lambda: (*ours.sample_location_and_conditional_flow(x0, x1, t, return_noise), torch.rand(2),
                                np.random.rand(2)))
    want = _seeded(lambda: _quiet(theirs.sample_location_and_conditional_flow, x0, x1, return_noise=return_noise))
    _assert_same(got, want)
    # given t, and the state of both RNGs afterwards
    got = got2
    want = _seeded(lambda: (*_quiet(theirs.sample_location_and_conditional_flow, x0, x1, t, return_noise),
                            torch.rand(2), np.random.rand(2)))
    _assert_same(got, want)
    _assert_same([ours.compute_lambda(t)], [theirs.compute_lambda(t)])


@pytest.mark.parametrize("name,kwargs,dtype", [m for m in MATCHERS if "Transport" in m[0] or "Bridge" in m[0]],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("return_noise", [False, True])
@pytest.mark.parametrize("labels", ["both", "y0", "none"])
def test_guided_sampling_is_torchcfm(name, kwargs, dtype, return_noise, labels):
    ours, theirs = _pair(name, kwargs)
    x0, x1 = _batches((3,), dtype)
    y0 = torch.arange(64) if labels != "none" else None
    y1 = torch.arange(64) + 100 if labels == "both" else None
    got = _seeded(lambda: ours.guided_sample_location_and_conditional_flow(x0, x1, y0, y1, return_noise=return_noise))
    want = _seeded(lambda: _quiet(theirs.guided_sample_location_and_conditional_flow, x0, x1, y0, y1,
                                  return_noise=return_noise))
    assert len(got) == (6 if return_noise else 5)  # (t, xt, ut, y0, y1[, eps]): the noise last
    _assert_same(got, want)


def test_small_sigma_sb_cfm_works_in_float32():
    """torchcfm's suite case SB-CFM(sigma=5e-4, "sinkhorn"): reg = 5e-7 is solved in float64
    (flowfast's float32 Sinkhorn refuses it), self-consistently with OTPlanSampler."""
    with pytest.warns(UserWarning, match="Small sigma"):
        fm = shim.SchrodingerBridgeConditionalFlowMatcher(sigma=5e-4, ot_method="sinkhorn")
    x0, x1 = _batches((2,), n=32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sinkhorn did not converge", UserWarning)
        t, xt, ut, eps = _seeded(lambda: fm.sample_location_and_conditional_flow(x0, x1, return_noise=True))
        a, b = _seeded(lambda: shim.OTPlanSampler("sinkhorn", reg=2 * 5e-4**2).sample_plan(x0, x1))
    assert xt.dtype == torch.float32 and bool(torch.isfinite(xt).all() and torch.isfinite(ut).all())
    torch.manual_seed(SEED)
    t2 = torch.rand(32)
    torch.testing.assert_close(t, t2, rtol=0, atol=0)
    torch.testing.assert_close(ut, fm.compute_conditional_flow(a, b, t, xt), rtol=0, atol=0)
    # eps = 5e-7 is far below the cost's gaps: the entropic pairs are (almost all) optimal pairs
    cols = shim.OTPlanSampler("exact").get_map(x0, x1).argmax(1)
    rows = torch.cdist(a, x0).argmin(1)
    # (torchcfm's POT underflows here and pairs from the uniform plan: about 1 in 32 would be optimal)
    assert float((torch.cdist(b, x1).argmin(1) == torch.as_tensor(cols)[rows]).double().mean()) > 0.5


# --- OTPlanSampler ------------------------------------------------------------------------------

SAMPLERS = [
    ("exact", {}, torch.float32),
    ("exact", {"normalize_cost": True}, torch.float64),
    ("sinkhorn", {"reg": 0.5}, torch.float64),
    ("sinkhorn", {"reg": 0.1, "normalize_cost": True}, torch.float64),
    ("unbalanced", {"reg": 0.5, "reg_m": 1.0}, torch.float64),
    ("unbalanced", {"reg": 0.2, "reg_m": 5.0}, torch.float64),
]


@pytest.mark.parametrize("method,kwargs,dtype", SAMPLERS, ids=str)
@pytest.mark.parametrize("shape", [(2,), (2, 2, 2)], ids=str)
def test_plans_are_torchcfm_plans(method, kwargs, dtype, shape):
    x0, x1 = _batches(shape, dtype, n=48)
    ours = shim.OTPlanSampler(method, **kwargs).get_map(x0, x1)
    theirs = _quiet(tot.OTPlanSampler(method, **kwargs).get_map, x0, x1)
    assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype == np.float64 and ours.shape == theirs.shape
    if method == "exact":
        assert np.array_equal(ours, theirs)
    else:  # POT's iterates; its unbalanced solver stops at a relative change of 1e-6
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9 if method == "sinkhorn" else 1e-7)


@pytest.mark.parametrize("method,kwargs,dtype", SAMPLERS, ids=str)
@pytest.mark.parametrize("replace", [True, False])
def test_pairs_are_torchcfm_pairs(method, kwargs, dtype, replace):
    x0, x1 = _batches((2,), dtype, n=48, seed=3)
    y0, y1 = torch.arange(48), torch.arange(48) * 10
    ours, theirs = shim.OTPlanSampler(method, **kwargs), _quiet(tot.OTPlanSampler, method, **kwargs)
    for call in ("sample_plan", "sample_plan_with_labels"):
        args = (x0, x1) if call == "sample_plan" else (x0, x1, y0, y1)
        got = _seeded(lambda: (*getattr(ours, call)(*args, replace=replace), np.random.rand(3)))
        want = _seeded(lambda: (*_quiet(getattr(theirs, call), *args, replace=replace), np.random.rand(3)))
        _assert_same(got, want)
    pi = theirs.get_map(x0, x1) if method == "exact" else _quiet(theirs.get_map, x0, x1)
    got = _seeded(lambda: ours.sample_map(pi, 48, replace=replace))
    want = _seeded(lambda: theirs.sample_map(pi, 48, replace=replace))
    _assert_same(got, want)
    assert isinstance(got, tuple) and got[0].dtype == np.int64


def test_sample_map_on_numpy_and_tensor_plans():
    """torchcfm's test_sample_map: without replacement, a permutation plan is drawn cell by cell."""
    permuted = np.random.default_rng(0).permutation(np.eye(64), axis=1)
    sampler = shim.OTPlanSampler("exact")
    for plan in (permuted, torch.from_numpy(permuted), torch.from_numpy(permuted).float()):
        i, j = sampler.sample_map(plan, batch_size=64, replace=False)
        rebuilt = np.zeros((64, 64))
        rebuilt[i, j] = 1
        assert np.array_equal(rebuilt, permuted)
    got = _seeded(lambda: sampler.sample_map(permuted, 100))
    want = _seeded(lambda: tot.OTPlanSampler("exact").sample_map(permuted, 100))
    _assert_same(got, want)


def test_exact_plans_between_batches_of_different_sizes():
    torch.manual_seed(0)  # fixed data: the equalities below must not depend on the test order
    for n, m in [(12, 8), (8, 12), (30, 45), (7, 5)]:
        x0, x1 = torch.randn(n, 3, dtype=torch.float64), torch.randn(m, 3, dtype=torch.float64)
        ours = shim.OTPlanSampler("exact").get_map(x0, x1)
        theirs = tot.OTPlanSampler("exact").get_map(x0, x1)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-15)
        np.testing.assert_allclose(ours.sum(1), np.full(n, 1 / n), rtol=1e-14)
        np.testing.assert_allclose(ours.sum(0), np.full(m, 1 / m), rtol=1e-14)
        w = shim.wasserstein(x0, x1)
        assert math.isclose(w, tot.wasserstein(x0, x1), rel_tol=1e-14)


@pytest.mark.parametrize("method,kwargs", [("exact", {}), ("sinkhorn", {"reg": 0.5})], ids=str)
@pytest.mark.parametrize("shape", [(2,), (2, 3)], ids=str)
def test_trajectories_are_torchcfm_trajectories(method, kwargs, shape):
    torch.manual_seed(1)
    X = torch.randn(32, 4, *shape, dtype=torch.float64) + torch.arange(4.0, dtype=torch.float64).reshape(
        1, 4, *([1] * len(shape)))
    ours, theirs = shim.OTPlanSampler(method, **kwargs), tot.OTPlanSampler(method, **kwargs)
    ours.warn = False  # POT does not converge on every step either (and warns)
    got = _seeded(lambda: ours.sample_trajectory(X))
    want = _seeded(lambda: _quiet(theirs.sample_trajectory, X))
    assert isinstance(got, np.ndarray) and got.shape == (32, 4, *shape) and got.dtype == want.dtype
    assert np.array_equal(got, want)
    if method == "exact":  # float32: POT's Gibbs kernel is float32, the shim's plan float64
        assert np.array_equal(_seeded(lambda: ours.sample_trajectory(X.float())),
                              _seeded(lambda: _quiet(theirs.sample_trajectory, X.float())))


def test_partial_is_the_converged_entropic_plan():
    """POT's entropic_partial_wasserstein with its default m (all the mass) solves the balanced
    entropic problem; torchcfm stops it after 1000 projections (and gets NaN at small reg)."""
    x0, x1 = _batches((2,), torch.float64, n=40)
    ours = shim.OTPlanSampler("partial", reg=0.5).get_map(x0, x1)
    M = (torch.cdist(x0, x1) ** 2).numpy()
    a = ot.unif(40)
    converged = _quiet(ot.partial.entropic_partial_wasserstein, a, a, M, reg=0.5, numItermax=100000)
    np.testing.assert_allclose(ours, converged, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours, _quiet(tot.OTPlanSampler("partial", reg=0.5).get_map, x0, x1), atol=5e-3)
    assert np.isfinite(shim.OTPlanSampler("partial", warn=False).get_map(x0, x1)).all()  # default reg 0.05


def test_unresolvable_reg_falls_back_to_the_uniform_plan_as_torchcfm():
    x0, x1 = _batches((2,), n=16)
    with pytest.warns(UserWarning, match="reverting to uniform plan"):
        plan = shim.OTPlanSampler("sinkhorn", reg=1e-300).get_map(x0, x1)
    assert np.array_equal(plan, np.full((16, 16), 1 / 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shim.OTPlanSampler("sinkhorn", reg=1e-300, warn=False).get_map(x0, x1)


def test_non_convergence_warns_only_with_warn():
    x0, x1 = _batches((2,), n=64)
    with pytest.warns(UserWarning, match="did not converge"):
        shim.OTPlanSampler("sinkhorn", reg=1e-3).get_map(x0, x1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shim.OTPlanSampler("sinkhorn", reg=1e-3, warn=False).get_map(x0, x1)


# --- wasserstein --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_exact_wasserstein_is_pots_to_the_last_digit(seed, dtype):
    torch.manual_seed(seed)
    n = [128, 64, 17][seed % 3]
    x0, x1 = torch.randn(n, 2, 2, 2, dtype=dtype), torch.randn(n, 2, 2, 2, dtype=dtype)
    M = torch.cdist(x0.reshape(n, -1), x1.reshape(n, -1))
    for power, want in [(2, np.sqrt(ot.emd2(ot.unif(n), ot.unif(n), (M**2).numpy()))),
                        (1, ot.emd2(ot.unif(n), ot.unif(n), M.numpy()))]:
        for method in (None, "exact"):
            got = shim.wasserstein(x0, x1, method, power=power)
            assert got == want and got == tot.wasserstein(x0, x1, method, power=power)
            assert type(got) is type(tot.wasserstein(x0, x1, method, power=power)) is float


def test_entropic_wasserstein_matches_where_pot_converges():
    x0, x1 = _batches((3,), torch.float64, n=50)
    for power in (1, 2):
        got = shim.wasserstein(x0, x1, "sinkhorn", reg=0.5, power=power)
        want = _quiet(tot.wasserstein, x0, x1, "sinkhorn", reg=0.5, power=power)
        assert type(got) is type(want) and math.isclose(got, want, rel_tol=1e-9)


# --- flowfast's opt-ins -------------------------------------------------------------------------


def test_generator_draws_leave_the_global_rngs_alone():
    x0, x1 = _batches((2,), n=32)
    fm = shim.ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)
    torch.manual_seed(0)
    np.random.seed(0)
    a = fm.sample_location_and_conditional_flow(x0, x1, return_noise=True, generator=torch.Generator().manual_seed(5))
    b = fm.sample_location_and_conditional_flow(x0, x1, return_noise=True, generator=torch.Generator().manual_seed(5))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert torch.equal(torch.rand(3), _seeded(lambda: torch.rand(3), 0))
    assert np.array_equal(np.random.rand(3), _seeded(lambda: np.random.rand(3), 0))
    traj = shim.OTPlanSampler("exact").sample_trajectory(torch.stack([x0, x1], 1), generator=torch.Generator())
    assert isinstance(traj, torch.Tensor) and traj.shape == (32, 2, 2)
    with pytest.raises(TypeError, match="generator"):
        fm.sample_location_and_conditional_flow(x0, x1, generator=np.random.default_rng(0))


@pytest.mark.parametrize("cls", ["ExactOptimalTransportConditionalFlowMatcher", "SchrodingerBridgeConditionalFlowMatcher"])
def test_flowfast_permutation_coupling_opt_in(cls):
    """coupling="exact": flowfast's optimal permutation (x0 in order, every x1 once), no numpy draws."""
    x0, x1 = _batches((2,), torch.float64, n=32)
    fm = getattr(shim, cls)(sigma=0.5, coupling="exact")
    t = torch.full((32,), 0.5, dtype=torch.float64)
    np.random.seed(0)
    _, xt, ut, eps = fm.sample_location_and_conditional_flow(x0, x1, t, return_noise=True,
                                                             generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.random.rand(2), _seeded(lambda: np.random.rand(2), 0))
    sigma_t = 0.5 if cls.startswith("Exact") else 0.5 * math.sqrt(0.25)
    mid = xt - sigma_t * eps  # (x0 + x1') / 2 for the partner x1' of each x0
    partners = 2 * mid - x0
    assert sorted(map(tuple, partners.round(decimals=9).tolist())) == sorted(map(tuple, x1.round(decimals=9).tolist()))
    cols = shim.OTPlanSampler("exact").get_map(x0, x1).argmax(1)
    torch.testing.assert_close(partners, x1[torch.as_tensor(cols)])
