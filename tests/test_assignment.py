"""Exact assignment: optimality against scipy by total cost (optimal permutations are not unique).

Every solve goes through :func:`_check_optimal`, which checks the answer is a valid injection of the
right dtype/shape/device and that its total cost matches scipy's optimum on the very values the
solver saw (the float-cast cost, summed in float64). CUDA solves are also compared with the CPU
kernel on the same input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import flowfast
from flowfast import data, testing
from flowfast.reference.assignment import linear_assignment as reference_linear_assignment

RTOL = testing.OBJECTIVE_RTOL


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_float64_numpy(cost) -> np.ndarray:
    """The values the solver saw (already cast to its dtype), exactly, in float64."""
    if isinstance(cost, torch.Tensor):
        return cost.detach().cpu().to(torch.float64).numpy()
    return np.asarray(cost).astype(np.float64)


def _totals(cost64: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(B, n, m) costs and (B, n) columns -> (B,) totals in float64."""
    rows = np.arange(cost64.shape[1])
    return np.stack([cost64[b, rows, cols[b]].sum() for b in range(cost64.shape[0])])


def _scipy_totals(cost64: np.ndarray, maximize: bool) -> np.ndarray:
    out = []
    for c in cost64:
        r, k = scipy_lsa(c, maximize=maximize)
        out.append(c[r, k].sum())
    return np.asarray(out)


def _check_injection(cols: np.ndarray, B: int, n: int, m: int) -> None:
    assert cols.dtype == np.int64, cols.dtype
    assert cols.shape == (B, n), cols.shape
    assert (cols >= 0).all() and (cols < m).all(), f"columns out of [0, {m}): {cols}"
    for b in range(B):
        assert len(np.unique(cols[b])) == n, f"problem {b}: columns not distinct: {cols[b]}"


def _rtol_for(dtype) -> float:
    if isinstance(dtype, torch.dtype):
        return RTOL[dtype]
    return RTOL[torch.float32 if np.dtype(dtype) == np.float32 else torch.float64]


def _check_optimal(cost, cols, maximize: bool = False) -> np.ndarray:
    """Validate `cols` (the solver's answer for `cost`, 2-D or batched) and return its totals."""
    batched = cost.ndim == 3
    cost64 = _as_float64_numpy(cost)
    cols_np = cols.detach().cpu().numpy() if isinstance(cols, torch.Tensor) else np.asarray(cols)
    if not batched:
        cost64, cols_np = cost64[None], cols_np[None]
    B, n, m = cost64.shape
    _check_injection(cols_np, B, n, m)
    got = _totals(cost64, cols_np)
    want = _scipy_totals(cost64, maximize)
    np.testing.assert_allclose(got, want, rtol=_rtol_for(cost.dtype), atol=0)
    return got


def _solve_and_check(cost: torch.Tensor, maximize: bool = False, **kwargs) -> torch.Tensor:
    """Solve with flowfast.linear_assignment, check it, and on CUDA compare with the CPU kernel."""
    cols = flowfast.linear_assignment(cost, maximize, **kwargs)
    assert isinstance(cols, torch.Tensor)
    assert cols.device == cost.device, (cols.device, cost.device)
    assert cols.dtype == torch.int64
    assert cols.shape == cost.shape[:-1]
    got = _check_optimal(cost, cols, maximize)
    if cost.device.type == "cuda":
        cpu_cols = flowfast.linear_assignment(cost.cpu(), maximize)
        cpu_got = _check_optimal(cost.cpu(), cpu_cols, maximize)
        np.testing.assert_allclose(got, cpu_got, rtol=_rtol_for(cost.dtype), atol=0)
    return cols


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# optimality on random / structured inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 200])
def test_random_square(device, dtype, n):
    cost = torch.rand(n, n, generator=_gen(n), dtype=torch.float64).to(device, dtype)
    _solve_and_check(cost)


def test_random_512(device):
    cost = torch.rand(512, 512, generator=_gen(512), dtype=torch.float64).to(device)
    _solve_and_check(cost)


@pytest.mark.parametrize("n,m", [(1, 2), (1, 50), (2, 3), (5, 9), (37, 100), (99, 100), (10, 300)])
def test_random_rectangular(device, dtype, n, m):
    cost = torch.rand(n, m, generator=_gen(n * 1000 + m), dtype=torch.float64).to(device, dtype)
    _solve_and_check(cost)


@pytest.mark.parametrize("shape", [(7, 7), (30, 30), (20, 45), (1, 5), (64, 64), (6, 4, 9)])
@pytest.mark.parametrize("maximize", [False, True])
def test_tied_integer_costs(device, dtype, shape, maximize):
    """Costs in {0, 1, 2, 3}: massive ties, many optimal permutations."""
    cost = torch.randint(0, 4, shape, generator=_gen(sum(shape))).to(device, dtype)
    _solve_and_check(cost, maximize)


@pytest.mark.parametrize("shape", [(1, 1), (6, 6), (5, 9), (40, 40), (3, 8, 8)])
@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 1e6])
def test_all_equal_costs(device, dtype, shape, value):
    cost = torch.full(shape, value, dtype=dtype, device=device)
    cols = _solve_and_check(cost)
    # every injection is optimal: each total is exactly n * value
    got = cost.to(torch.float64).gather(-1, cols.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(got, torch.full_like(got, shape[-2] * value), rtol=0, atol=0)


def _point_cloud_cost(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Squared-Euclidean costs computed exactly (difference form) in float64."""
    diff = x0.to(torch.float64)[:, None, :] - x1.to(torch.float64)[None, :, :]
    return (diff * diff).sum(-1)


@pytest.mark.parametrize("n_unique,repeats,n0", [(4, 5, 20), (8, 3, 12), (1, 10, 10), (5, 4, 7)])
def test_duplicated_points(device, dtype, n_unique, repeats, n0):
    """x1 has repeated rows and x0 is a subset of x1's rows: the optimum is exactly 0."""
    g = _gen(n_unique * 100 + repeats)
    base = torch.randn(n_unique, 3, generator=g, dtype=torch.float64)
    x1 = base.repeat(repeats, 1)[torch.randperm(n_unique * repeats, generator=g)]
    x0 = x1[torch.randperm(x1.shape[0], generator=g)[:n0]]
    cost = _point_cloud_cost(x0, x1).to(device, dtype)
    cols = _solve_and_check(cost)
    totals = _check_optimal(cost, cols)
    assert totals[0] == 0.0, totals
    torch.testing.assert_close(x1[cols.cpu()], x0, rtol=0, atol=0)


def test_duplicated_points_self(device, dtype):
    """x0 == x1 with duplicates: a zero-cost pairing (not necessarily the identity)."""
    g = _gen(7)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64).repeat(4, 1)
    cost = _point_cloud_cost(x, x).to(device, dtype)
    cols = _solve_and_check(cost)
    torch.testing.assert_close(x[cols.cpu()], x, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(7, 7), (64, 64), (50, 80), (4, 20, 20)])
def test_huge_dynamic_range(device, dtype, shape):
    """Costs spanning 1e-6..1e6; float32 is compared with scipy on the same float32-cast values."""
    rng = np.random.default_rng(sum(shape))
    cost = torch.from_numpy(10.0 ** rng.uniform(-6.0, 6.0, size=shape)).to(device, dtype)
    _solve_and_check(cost)
    _solve_and_check(cost, maximize=True)


@pytest.mark.parametrize("shape", [(16, 16), (40, 40), (100, 100), (3, 33, 33)])
@pytest.mark.parametrize("outlier", [1e8, 1e20])
def test_few_huge_outliers(device, dtype, shape, outlier):
    """Unit costs plus a few entries many orders larger: the range is the outliers', the optimum
    the unit costs'. (A warm start that prices columns on the range's scale would round the unit
    costs away; the CPU solver falls back to the plain start there.)"""
    g = _gen(sum(shape) + int(math.log10(outlier)))
    cost = torch.rand(shape, generator=g, dtype=torch.float64)
    flat = cost.view(-1)
    flat[torch.randint(0, flat.numel(), (3,), generator=g)] = outlier
    _solve_and_check(cost.to(device, dtype))
    _solve_and_check(cost.to(device, dtype), maximize=True)


def _tiny_matching(rng, n):
    """U(0, 1) costs plus a sparse set of 1e-20-scale entries that holds a perfect matching."""
    cost = rng.random((n, n))
    for extra in range(4):
        cols = rng.permutation(n) if extra == 0 else rng.integers(0, n, n)
        cost[np.arange(n), cols] = 1e-20 * rng.random(n)
    return cost


def _tiny_matching_in_few_rows(rng, n):
    """As _tiny_matching, but the extra tiny near-ties sit only in rows that the CPU solver's
    32 sampled rows (i = q n / 32) skip: a check of sampled rows alone would miss them."""
    cost = rng.random((n, n))
    cost[np.arange(n), rng.permutation(n)] = 1e-20 * rng.random(n)
    sampled = {q * n // 32 for q in range(min(32, n))}
    rows = np.array([i for i in range(n) if i not in sampled])
    if rows.size == 0:
        return cost
    for _ in range(3):
        cost[rows, rng.integers(0, n, rows.size)] = 1e-20 * rng.random(rows.size)
    return cost


def _clustered_duplicates(rng, n):
    """Squared distances between two copies of 4-point clusters jittered by 1e-8."""
    centers = rng.random((n // 4 + 1, 2))
    labels = np.repeat(np.arange(n // 4 + 1), 4)[:n]
    x = centers[labels] + 1e-8 * rng.standard_normal((n, 2))
    y = centers[rng.permutation(labels)] + 1e-8 * rng.standard_normal((n, 2))
    return ((x[:, None] - y[None]) ** 2).sum(-1)


def _bimodal(rng, n):
    """U(0, 1) costs, 60% of them lifted by 1e12 (a low-cost permutation kept)."""
    cost = rng.random((n, n))
    high = rng.random((n, n)) < 0.6
    high[np.arange(n), rng.permutation(n)] = False
    cost[high] += 1e12
    return cost


@pytest.mark.parametrize("family", [_tiny_matching, _tiny_matching_in_few_rows, _clustered_duplicates, _bimodal])
@pytest.mark.parametrize("n", [17, 64, 128])
def test_optimum_far_below_the_cost_range(device, family, n):
    """The costs that decide the optimum are 1e-12..1e-20 of the range: solved to their own
    resolution. (Auction prices on the range's scale round them away; the CPU solver detects this
    and keeps the plain start.)"""
    cost = torch.from_numpy(family(np.random.default_rng(n), n)).to(device)
    _solve_and_check(cost)
    _solve_and_check(cost, maximize=True)


@pytest.mark.parametrize("source,target", [("gaussian", "8gaussians"), ("gaussian", "moons"), ("moons", "8gaussians")])
@pytest.mark.parametrize("n", [16, 100, 256])
def test_structured_2d_clouds(device, dtype, source, target, n):
    """The OT-CFM case: squared distances between two differently shaped 2-D clouds (on the CPU
    these take the auction warm start)."""
    g = _gen(n)
    x0, x1 = data.get_sampler(source)(n, g), data.get_sampler(target)(n, g)
    _solve_and_check(_point_cloud_cost(x0, x1).to(device, dtype))


@pytest.mark.parametrize("low,high", [(-10.0, 0.0), (-5.0, 5.0), (-1e4, -1e3)])
@pytest.mark.parametrize("shape", [(9, 9), (13, 31), (50, 50)])
def test_negative_costs(device, dtype, low, high, shape):
    cost = (low + (high - low) * torch.rand(shape, generator=_gen(sum(shape)), dtype=torch.float64))
    _solve_and_check(cost.to(device, dtype))


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (12, 30), (100, 100), (5, 10, 15)])
def test_maximize(device, dtype, shape):
    cost = torch.randn(shape, generator=_gen(sum(shape)), dtype=torch.float64).to(device, dtype)
    cols_max = _solve_and_check(cost, maximize=True)
    cols_min = _solve_and_check(cost, maximize=False)
    # maximize on C is minimize on -C
    cols_neg = flowfast.linear_assignment(-cost)
    c64 = cost.to(torch.float64)
    tot = lambda cols: c64.gather(-1, cols.unsqueeze(-1)).sum()  # noqa: E731
    torch.testing.assert_close(tot(cols_max), tot(cols_neg), rtol=RTOL[dtype], atol=0)
    assert float(tot(cols_max)) >= float(tot(cols_min))


@pytest.mark.parametrize("B,n,m", [(5, 7, 7), (17, 12, 20), (32, 30, 30), (8, 1, 6), (6, 40, 41)])
@pytest.mark.parametrize("maximize", [False, True])
def test_batched_matches_per_problem_scipy(device, dtype, B, n, m, maximize):
    cost = torch.rand(B, n, m, generator=_gen(B * n * m), dtype=torch.float64).to(device, dtype)
    cols = _solve_and_check(cost, maximize)  # per-problem totals vs scipy
    # and each problem solved alone gives the same totals
    c64 = _as_float64_numpy(cost)
    batched_totals = _totals(c64, cols.cpu().numpy())
    single_cols = [flowfast.linear_assignment(cost[b], maximize).cpu().numpy() for b in range(B)]
    single_totals = _totals(c64, np.stack(single_cols))
    np.testing.assert_allclose(batched_totals, single_totals, rtol=RTOL[dtype], atol=0)


def test_batched_mixed_problems(device, dtype):
    """A batch mixing random, tied, constant and negative problems, each against scipy."""
    g = _gen(3)
    n, m = 10, 14
    cost = torch.stack(
        [
            torch.rand(n, m, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (n, m), generator=g).double(),
            torch.full((n, m), 3.0, dtype=torch.float64),
            -100 * torch.rand(n, m, generator=g, dtype=torch.float64),
            10.0 ** (12 * torch.rand(n, m, generator=g, dtype=torch.float64) - 6),
        ]
    )
    _solve_and_check(cost.to(device, dtype))


# --------------------------------------------------------------------------------------------
# layouts and array types
# --------------------------------------------------------------------------------------------


def test_transposed_view(device, dtype):
    storage = torch.rand(23, 11, generator=_gen(1), dtype=torch.float64).to(device, dtype)
    cost = storage.T  # (11, 23), stride (1, 11)
    assert not cost.is_contiguous()
    cols = _solve_and_check(cost)
    contiguous_cols = flowfast.linear_assignment(cost.contiguous())
    torch.testing.assert_close(cols, contiguous_cols, rtol=0, atol=0)


def test_strided_slices(device, dtype):
    big = torch.rand(40, 60, generator=_gen(2), dtype=torch.float64).to(device, dtype)
    for cost in (big[::2, ::3], big[1::3, 5:45], big[:, 10:50], big[::4], big[3:9]):
        assert not cost.is_contiguous() or cost.storage_offset() > 0
        _solve_and_check(cost)


def test_batched_non_contiguous(device, dtype):
    base = torch.rand(9, 6, 12, generator=_gen(3), dtype=torch.float64).to(device, dtype)
    cases = [
        base.permute(1, 0, 2),  # (6, 9, 12): batch stride smaller than row stride
        base.transpose(1, 2)[:, :6, :],  # (9, 6, 6), last-dim stride 12
        base[::2, :, ::2],  # strided last dim
        base[:, 1:5, 2:11],  # offset slice with unit last stride
        base[:1].expand(4, 6, 12),  # stride-0 batch dimension
    ]
    for cost in cases:
        assert not cost.is_contiguous()
        _solve_and_check(cost)


def test_numpy_in_numpy_out(dtype):
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    rng = np.random.default_rng(0)
    for cost in (
        rng.random((8, 8)).astype(np_dtype),
        rng.random((5, 9)).astype(np_dtype),
        rng.random((4, 6, 7)).astype(np_dtype),
        np.asfortranarray(rng.random((6, 10)).astype(np_dtype)),
        rng.random((20, 30)).astype(np_dtype)[::2, ::3],
    ):
        cols = flowfast.linear_assignment(cost)
        assert isinstance(cols, np.ndarray), type(cols)
        assert cols.dtype == np.int64
        _check_optimal(cost, cols)
        cols_max = flowfast.linear_assignment(cost, maximize=True)
        assert isinstance(cols_max, np.ndarray)
        _check_optimal(cost, cols_max, maximize=True)


def test_torch_in_torch_out(device, dtype):
    cost = torch.rand(6, 9, dtype=dtype, device=device)
    cols = flowfast.linear_assignment(cost)
    assert isinstance(cols, torch.Tensor) and not isinstance(cols, np.ndarray)
    assert cols.device == cost.device


def test_input_not_modified(device, dtype):
    cost = torch.randn(4, 7, 9, dtype=dtype, device=device)
    before = cost.clone()
    flowfast.linear_assignment(cost, maximize=True)
    flowfast.linear_assignment(cost)
    torch.testing.assert_close(cost, before, rtol=0, atol=0)


def test_requires_grad_input(device, dtype):
    cost = torch.rand(5, 6, dtype=dtype, device=device, requires_grad=True)
    cols = _solve_and_check(cost)
    assert not cols.requires_grad


def test_numpy_bool_maximize():
    cost = np.random.default_rng(1).random((6, 6))
    cols = flowfast.linear_assignment(cost, np.bool_(True))
    _check_optimal(cost, cols, maximize=True)


# --------------------------------------------------------------------------------------------
# kernel vs pure-torch reference, and the backend switch
# --------------------------------------------------------------------------------------------


def _reference_cases():
    g = _gen(11)
    return [
        torch.rand(1, 1, 1, generator=g, dtype=torch.float64),
        torch.rand(3, 5, 5, generator=g, dtype=torch.float64),
        torch.rand(2, 17, 30, generator=g, dtype=torch.float64),
        torch.rand(1, 40, 40, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (4, 12, 12), generator=g).double(),
        torch.randint(0, 4, (2, 25, 40), generator=g).double(),
        torch.randint(-2, 2, (1, 40, 40), generator=g).double(),
        torch.full((1, 9, 13), 2.0, dtype=torch.float64),
    ]


@pytest.mark.parametrize("case", range(len(_reference_cases())))
@pytest.mark.parametrize("maximize", [False, True])
def test_kernel_matches_reference(device, dtype, case, maximize):
    cost = _reference_cases()[case].to(device, dtype)
    ref_cols = reference_linear_assignment(cost, maximize)
    assert ref_cols.device == cost.device
    ref_totals = _check_optimal(cost, ref_cols, maximize)  # the oracle itself is optimal
    ker_cols = torch.ops.flowfast.linear_assignment(cost, maximize)
    ker_totals = _check_optimal(cost, ker_cols, maximize)
    np.testing.assert_allclose(ker_totals, ref_totals, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
@pytest.mark.parametrize("maximize", [False, True])
def test_backends_agree(device, dtype, backend, maximize):
    g = _gen(5)
    for cost in (
        torch.rand(12, 20, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (3, 15, 15), generator=g).double(),
    ):
        cost = cost.to(device, dtype)
        _solve_and_check(cost, maximize, backend=backend)


@pytest.mark.cuda
def test_backend_cuda_explicit(dtype):
    cost = torch.rand(4, 30, 50, dtype=dtype, device="cuda")
    cols = _solve_and_check(cost, backend="cuda")
    assert cols.is_cuda


# --------------------------------------------------------------------------------------------
# flowfast.linear_sum_assignment: scipy drop-in
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (6, 6), (5, 9), (9, 5), (40, 25), (25, 40), (100, 100)]
)
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize(
    "kind,device",
    [("numpy", "cpu"), ("torch", "cpu"), pytest.param("torch", "cuda", marks=pytest.mark.cuda)],
)
def test_linear_sum_assignment_dropin(device, dtype, shape, maximize, kind):
    g = _gen(sum(shape))
    cost_t = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    if shape[0] % 2:  # also some ties
        cost_t = torch.round(cost_t * 3)
    cost = cost_t.numpy() if kind == "numpy" else cost_t.to(device)

    rows, cols = flowfast.linear_sum_assignment(cost, maximize)
    c64 = _as_float64_numpy(cost)
    ref_rows, ref_cols = scipy_lsa(c64, maximize=maximize)

    if kind == "numpy":
        assert isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)
        rows_np, cols_np = rows, cols
    else:
        assert isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor)
        assert rows.device == cost.device and cols.device == cost.device
        rows_np, cols_np = rows.cpu().numpy(), cols.cpu().numpy()
    k = min(shape)
    for idx, hi in ((rows_np, shape[0]), (cols_np, shape[1])):
        assert idx.dtype == np.int64
        assert idx.shape == (k,)
        assert (idx >= 0).all() and (idx < hi).all()
        assert len(np.unique(idx)) == k
    assert (np.diff(rows_np) > 0).all(), f"row_ind not sorted: {rows_np}"
    if shape[0] <= shape[1]:
        np.testing.assert_array_equal(rows_np, np.arange(shape[0]))
    np.testing.assert_allclose(
        c64[rows_np, cols_np].sum(), c64[ref_rows, ref_cols].sum(), rtol=RTOL[dtype], atol=0
    )


# --------------------------------------------------------------------------------------------
# flowfast.ot_pairing
# --------------------------------------------------------------------------------------------


def _match_rows(paired: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """Indices p with paired == x1[p], requiring p to be a permutation (each row used once)."""
    a = paired.detach().cpu().reshape(paired.shape[0], -1).to(torch.float64)
    b = x1.detach().cpu().reshape(x1.shape[0], -1).to(torch.float64)
    d = torch.cdist(a, b)
    perm = d.argmin(1)
    torch.testing.assert_close(a, b[perm], rtol=0, atol=0)
    p = perm.numpy()
    assert sorted(p.tolist()) == list(range(x1.shape[0])), f"x1 rows not used exactly once: {p}"
    return p


def _sqdist_cost64(x0: torch.Tensor, x1: torch.Tensor, cost: str = "sqeuclidean") -> np.ndarray:
    a = x0.detach().cpu().reshape(x0.shape[0], -1).to(torch.float64)
    b = x1.detach().cpu().reshape(x1.shape[0], -1).to(torch.float64)
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return (sq if cost == "sqeuclidean" else sq.sqrt()).numpy()


@pytest.mark.parametrize(
    "shape", [(1, 2), (2, 2), (16, 2), (64, 5), (128, 3), (30, 3, 4, 4), (10,)]
)
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_ot_pairing_optimal_permutation(device, dtype, shape, cost):
    g = _gen(sum(shape))
    x0 = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    x1 = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
    x0_before, x1_before = x0.clone(), x1.clone()

    out0, out1 = flowfast.ot_pairing(x0, x1, cost)

    torch.testing.assert_close(out0, x0_before, rtol=0, atol=0)  # x0 unchanged
    torch.testing.assert_close(x1, x1_before, rtol=0, atol=0)  # inputs not modified
    assert out1.shape == x1.shape and out1.dtype == x1.dtype and out1.device == x1.device
    perm = _match_rows(out1, x1)

    c64 = _sqdist_cost64(x0, x1, cost)
    r, k = scipy_lsa(c64)
    optimum = c64[r, k].sum()
    paired = c64[np.arange(len(perm)), perm].sum()
    np.testing.assert_allclose(paired, optimum, rtol=RTOL[dtype], atol=0)


def test_ot_pairing_image_shaped(device, dtype):
    g = _gen(4)
    x0 = torch.randn(24, 3, 4, 4, generator=g, dtype=torch.float64).to(device, dtype)
    x1 = torch.rand(24, 3, 4, 4, generator=g, dtype=torch.float64).to(device, dtype)
    out0, out1 = flowfast.ot_pairing(x0, x1)
    assert out0.shape == out1.shape == (24, 3, 4, 4)
    perm = _match_rows(out1, x1)
    c64 = _sqdist_cost64(x0, x1)
    r, k = scipy_lsa(c64)
    paired = c64[np.arange(24), perm].sum()
    np.testing.assert_allclose(paired, c64[r, k].sum(), rtol=RTOL[dtype], atol=0)


def test_ot_pairing_lowers_mean_distance(device, dtype):
    g = _gen(6)
    x0 = torch.randn(256, 2, generator=g, dtype=torch.float64).to(device, dtype)
    x1 = (torch.randn(256, 2, generator=g, dtype=torch.float64) * 0.5 + 3.0).to(device, dtype)
    _, x1p = flowfast.ot_pairing(x0, x1)
    identity = (x0 - x1).double().pow(2).sum(-1).mean().item()
    paired = (x0 - x1p).double().pow(2).sum(-1).mean().item()
    assert paired < identity, (paired, identity)
    # the OT pairing is at least as good as any other pairing, e.g. a random one
    shuffled = x1[torch.randperm(256, generator=g).to(device)]
    assert paired <= (x0 - shuffled).double().pow(2).sum(-1).mean().item()


def test_ot_pairing_1d_is_monotone(device, dtype):
    """In 1-D the W2-optimal pairing matches sorted x0 with sorted x1 (distinct values)."""
    g = _gen(8)
    x0 = torch.randn(50, generator=g, dtype=torch.float64).to(device, dtype)
    x1 = (3 * torch.randn(50, generator=g, dtype=torch.float64)).to(device, dtype)
    _, x1p = flowfast.ot_pairing(x0, x1)
    order = torch.argsort(x0)
    torch.testing.assert_close(x1p[order], torch.sort(x1).values, rtol=0, atol=0)


def test_ot_pairing_duplicates_and_identical(device, dtype):
    g = _gen(9)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64).repeat(4, 1).to(device, dtype)
    shuffled = x[torch.randperm(20, generator=g).to(device)]
    _, paired = flowfast.ot_pairing(x, shuffled)
    torch.testing.assert_close(paired, x, rtol=0, atol=0)


def test_ot_pairing_keeps_autograd(dtype):
    x0 = torch.randn(8, 3, dtype=dtype, requires_grad=True)
    x1 = torch.randn(8, 3, dtype=dtype, requires_grad=True)
    out0, out1 = flowfast.ot_pairing(x0, x1)
    (out0.sum() + (out1 * 2).sum()).backward()
    torch.testing.assert_close(x0.grad, torch.ones_like(x0))
    torch.testing.assert_close(x1.grad, 2 * torch.ones_like(x1))  # a permutation: each row once


@pytest.mark.cuda
def test_ot_pairing_cuda_matches_cpu(dtype):
    g = _gen(10)
    x0 = torch.randn(128, 8, generator=g, dtype=torch.float64).to(dtype)
    x1 = torch.randn(128, 8, generator=g, dtype=torch.float64).to(dtype)
    _, p_cpu = flowfast.ot_pairing(x0, x1)
    _, p_gpu = flowfast.ot_pairing(x0.cuda(), x1.cuda())
    assert p_gpu.is_cuda
    c_cpu = (x0 - p_cpu).double().pow(2).sum().item()
    c_gpu = (x0 - p_gpu.cpu()).double().pow(2).sum().item()
    np.testing.assert_allclose(c_gpu, c_cpu, rtol=RTOL[dtype], atol=0)
