"""flowfast.couplings.pair and the torchcfm-compatible shim (flowfast.compat.torchcfm)."""

import numpy as np
import pytest
import torch

import flowfast
from flowfast.compat.torchcfm import OTPlanSampler, wasserstein
from flowfast.couplings import pair, pair_indices
from flowfast.testing import devices


def _clouds(n=64, d=2, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=dtype)
    x1 = torch.randn(n, d, generator=g, dtype=dtype) * 2 + 3
    return x0.to(device), x1.to(device)


def _sq_cost(a, b):
    return ((a - b) ** 2).sum(-1)


def _optimal_total(x0, x1):
    from scipy.optimize import linear_sum_assignment

    C = torch.cdist(x0.double().cpu(), x1.double().cpu()) ** 2
    r, c = linear_sum_assignment(C.numpy())
    return float(C[r, c].sum())


@pytest.mark.parametrize("device", devices())
def test_exact_pair_is_optimal_permutation(device):
    x0, x1 = _clouds(device=device)
    a, b, (i, j) = pair(x0, x1, method="exact")
    assert torch.equal(i.cpu(), torch.arange(64))
    assert sorted(j.tolist()) == list(range(64))
    torch.testing.assert_close(a, x0)
    assert abs(float(_sq_cost(a, b).sum()) - _optimal_total(x0, x1)) <= 1e-9 * _optimal_total(x0, x1)


@pytest.mark.parametrize("device", devices())
def test_exact_pair_with_replacement_follows_the_optimal_map(device):
    x0, x1 = _clouds(device=device)
    sigma = flowfast.linear_assignment(torch.cdist(x0, x1) ** 2)
    g = torch.Generator().manual_seed(3)
    _, _, (i, j) = pair(x0, x1, method="exact", replace=True, generator=g)
    assert torch.equal(j, sigma[i])
    assert i.unique().numel() < 64  # with replacement, some rows repeat (probability ~1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("method", ["sinkhorn", "unbalanced"])
def test_entropic_pair_without_replacement_is_a_reproducible_permutation(device, method):
    x0, x1 = _clouds(device=device)
    i1, j1 = pair_indices(x0, x1, method=method, reg=0.05, generator=torch.Generator().manual_seed(1))
    i2, j2 = pair_indices(x0, x1, method=method, reg=0.05, generator=torch.Generator().manual_seed(1))
    assert torch.equal(j1, j2) and torch.equal(i1, i2)
    assert sorted(j1.tolist()) == list(range(64))


def test_entropic_pair_interpolates_between_exact_and_independent():
    x0, x1 = _clouds(n=128)
    optimal = _optimal_total(x0, x1)
    independent = float(_sq_cost(x0, x1).sum())
    g = torch.Generator().manual_seed(0)
    a, b, _ = pair(x0, x1, method="sinkhorn", reg=1e-3, generator=g)
    sharp = float(_sq_cost(a, b).sum())
    a, b, _ = pair(x0, x1, method="sinkhorn", reg=10.0, generator=g)
    blurry = float(_sq_cost(a, b).sum())
    assert optimal <= sharp <= optimal * 1.02
    assert sharp < blurry
    assert blurry > 0.8 * independent


@pytest.mark.parametrize("device", devices())
def test_entropic_pair_with_replacement_samples_the_plan(device):
    x0, x1 = _clouds(n=16, device=device)
    g = torch.Generator().manual_seed(0)
    res = flowfast.sinkhorn(x=x0, y=x1, eps=0.05 * float((torch.cdist(x0, x1) ** 2).max()))
    plan = res.plan().cpu()
    counts = torch.zeros(16, 16, dtype=torch.float64)
    for _ in range(300):
        i, j = pair_indices(x0, x1, method="sinkhorn", reg=0.05, replace=True, generator=g)
        counts.index_put_((i.cpu(), j.cpu()), torch.ones(16, dtype=torch.float64), accumulate=True)
    freq = counts / counts.sum()
    # total variation between empirical joint frequencies and the plan, 4800 draws over 256 cells
    assert 0.5 * float((freq - plan).abs().sum()) < 0.15


def test_pair_rejects_bad_input():
    x0, x1 = _clouds()
    with pytest.raises(ValueError, match="method"):
        pair(x0, x1, method="hungarian")
    with pytest.raises(ValueError, match="reg"):
        pair(x0, x1, method="sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="x0 as x1"):
        pair(x0, x1[:10])
    with pytest.raises(ValueError, match="x0 and x1"):
        pair(x0, torch.randn(64, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        pair(x0, x1.float())
    bad = x1.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x1"):
        pair(x0, bad)
    with pytest.raises(TypeError, match="replace"):
        pair(x0, x1, replace="no")


# --- torchcfm compatibility -------------------------------------------------------------------


def test_ot_plan_sampler_exact_plan_is_a_scaled_permutation():
    x0, x1 = _clouds(n=32)
    pi = OTPlanSampler("exact").get_map(x0, x1)
    # a float64 numpy array, as torchcfm's get_map (the shim's drop-in contract)
    assert isinstance(pi, np.ndarray) and pi.dtype == np.float64 and pi.shape == (32, 32)
    np.testing.assert_allclose(pi.sum(0), np.full(32, 1 / 32))
    np.testing.assert_allclose(pi.sum(1), np.full(32, 1 / 32))
    C = (torch.cdist(x0, x1) ** 2).double().numpy()
    assert abs(float((pi * C).sum()) * 32 - _optimal_total(x0, x1)) < 1e-9 * _optimal_total(x0, x1)


def test_ot_plan_sampler_agrees_with_torchcfm_on_exact_plans():
    tcfm = pytest.importorskip("torchcfm.optimal_transport")
    x0, x1 = _clouds(n=48, d=3)
    ours = OTPlanSampler("exact").get_map(x0, x1)
    theirs = tcfm.OTPlanSampler("exact").get_map(x0, x1)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_ot_plan_sampler_sinkhorn_close_to_torchcfm():
    tcfm = pytest.importorskip("torchcfm.optimal_transport")
    x0, x1 = _clouds(n=40)
    ours = OTPlanSampler("sinkhorn", reg=0.1, normalize_cost=True).get_map(x0, x1)
    theirs = tcfm.OTPlanSampler("sinkhorn", reg=0.1, normalize_cost=True).get_map(x0, x1)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_torchcfm_style_usage():
    """The usage pattern of torchcfm's OT-CFM examples, unchanged but for the import."""
    x0, x1 = _clouds(n=128)
    ot_sampler = OTPlanSampler(method="exact")
    a, b = ot_sampler.sample_plan(x0, x1)
    assert a.shape == x0.shape and b.shape == x1.shape
    a, b = ot_sampler.sample_plan(x0, x1, replace=False)
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))  # a permutation of x1
    labels0, labels1 = torch.arange(128), torch.arange(128) + 1000
    a, b, y0, y1 = ot_sampler.sample_plan_with_labels(x0, x1, labels0, labels1)
    torch.testing.assert_close(a, x0[y0])
    torch.testing.assert_close(b, x1[y1 - 1000])
    traj = OTPlanSampler("exact").sample_trajectory(torch.stack([x0, x1, x1 + 1], dim=1))
    assert isinstance(traj, np.ndarray) and traj.shape == (128, 3, 2)  # numpy, as torchcfm's
    traj = torch.from_numpy(traj)
    sigma = flowfast.linear_assignment(torch.cdist(x0, x1) ** 2)
    # each trajectory steps along the exact map between consecutive times
    start = torch.cdist(traj[:, 0], x0).argmin(1)
    torch.testing.assert_close(traj[:, 1], x1[sigma[start]])
    for method in ("sinkhorn", "unbalanced"):
        a, b = OTPlanSampler(method=method, reg=0.5).sample_plan(x0, x1)
        assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_wasserstein_matches_pot():
    ot = pytest.importorskip("ot")
    x0, x1 = _clouds(n=50)
    M = (torch.cdist(x0, x1) ** 2).numpy()
    w = np.full(50, 1 / 50)
    assert abs(wasserstein(x0, x1) - np.sqrt(ot.emd2(w, w, M))) < 1e-9
    assert abs(wasserstein(x0, x1[:40]) - np.sqrt(ot.emd2(w, np.full(40, 1 / 40), M[:, :40], numItermax=int(1e7)))) < 1e-9
    assert wasserstein(x0, x1, method="sinkhorn", reg=0.5) > 0


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_pair_within_labels_never_crosses_labels(method):
    from flowfast.couplings import pair_with_labels

    x0, x1 = _clouds(n=60)
    y0 = torch.arange(60) % 3
    y1 = torch.arange(60).flip(0) % 3
    a, b, l0, l1 = pair_with_labels(x0, x1, y0, y1, method=method, within_labels=True,
                                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(l0, l1)
    assert sorted(map(tuple, b.tolist())) == sorted(map(tuple, x1.tolist()))
    if method == "exact":
        # exact OT inside each label: per-label totals equal the per-label optimum
        for c in range(3):
            total = float(_sq_cost(a[l0 == c], b[l1 == c]).sum())
            assert abs(total - _optimal_total(x0[y0 == c], x1[y1 == c])) < 1e-9 * total
    # without the constraint, labels are just carried along
    a, b, l0, l1 = pair_with_labels(x0, x1, y0, y1, method=method)
    torch.testing.assert_close(a, x0[torch.cdist(a, x0).argmin(1)])
    assert torch.equal(l1, y1[torch.cdist(b, x1).argmin(1)])


def test_pair_trajectory_chains_permutations():
    from flowfast.couplings import pair_trajectory

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 4, 2, generator=g, dtype=torch.float64)
    for method in ("exact", "sinkhorn"):
        traj = pair_trajectory(X, method=method, generator=g)
        assert traj.shape == X.shape
        for t in range(4):  # every time point is a permutation of the original samples
            assert sorted(map(tuple, traj[:, t].tolist())) == sorted(map(tuple, X[:, t].tolist()))
    traj = pair_trajectory(X, method="exact")
    for t in range(3):  # each step is the exact OT map between consecutive times
        cols = flowfast.linear_assignment(torch.cdist(traj[:, t], X[:, t + 1]) ** 2)
        torch.testing.assert_close(traj[:, t + 1], X[cols, t + 1])
    with pytest.raises(ValueError, match="X"):
        pair_trajectory(torch.randn(3))
