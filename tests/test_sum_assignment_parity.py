"""flowfast.linear_sum_assignment against scipy itself (issue 22): the same inputs accepted, the
same optimal totals, index dtypes and row order, the same exception types; +/-inf as forbidden
edges against scipy and against scipy.sparse.csgraph.min_weight_full_bipartite_matching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

import flowfast

PROFILE = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["int64", "int8", "uint8", "bool", "float16", "float32", "float64", "list", "torch32", "torch64",
          "torch_int"]


def _as_input(cost: np.ndarray, kind: str):
    if kind == "list":
        return cost.tolist()
    if kind == "torch32":
        return torch.from_numpy(cost.astype(np.float32))
    if kind == "torch64":
        return torch.from_numpy(cost.astype(np.float64))
    if kind == "torch_int":
        return torch.from_numpy(cost.astype(np.int64))
    return cost.astype(kind)


def _outcome(fn, cost, maximize):
    try:
        rows, cols = fn(cost, maximize=maximize)
    except (ValueError, TypeError) as error:
        return type(error), None, None
    return None, rows, cols


def _reference_input(cost: np.ndarray, kind: str) -> np.ndarray:
    """What the call actually solves (after the dtype conversion of its input)."""
    if kind in ("list", "torch64"):
        return cost.astype(np.float64)
    if kind == "torch32":
        return cost.astype(np.float32).astype(np.float64)
    if kind == "torch_int":
        return cost.astype(np.int64).astype(np.float64)
    return cost.astype(kind).astype(np.float64)


@st.composite
def problems(draw):
    n, m = draw(st.integers(0, 9)), draw(st.integers(0, 9))
    kind = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ties = draw(st.booleans()) or kind in ("bool", "int8", "uint8", "torch_int")
    cost = rng.integers(0, 4, (n, m)).astype(np.float64) if ties else rng.normal(0, draw(st.sampled_from([1e-3, 1.0, 1e4])), (n, m))
    if kind == "bool":
        cost = cost > 1
    infs = draw(st.sampled_from([0.0, 0.0, 0.2, 0.5, 0.9])) if kind not in ("int64", "int8", "uint8", "bool", "torch_int") else 0.0
    maximize = draw(st.booleans())
    if infs and cost.size:
        mask = rng.random((n, m)) < infs
        cost = cost.astype(np.float64)
        cost[mask] = -math.inf if (maximize ^ draw(st.booleans() if draw(st.booleans()) else st.just(False))) else math.inf
    return cost, kind, maximize


@PROFILE
@given(problems())
def test_same_answer_as_scipy(problem):
    cost, kind, maximize = problem
    argument = _as_input(cost, kind)
    solved = _reference_input(cost, kind)
    theirs = _outcome(scipy_lsa, solved if isinstance(argument, torch.Tensor) else argument, maximize)
    ours = _outcome(flowfast.linear_sum_assignment, argument, maximize)
    assert ours[0] == theirs[0], (ours[0], theirs[0])
    if theirs[0] is not None:
        return
    _, rows, cols = ours
    if isinstance(argument, torch.Tensor):
        assert isinstance(rows, torch.Tensor) and rows.dtype == torch.int64
        rows, cols = rows.numpy(), cols.numpy()
    else:
        assert rows.dtype == theirs[1].dtype and cols.dtype == theirs[2].dtype
    assert rows.shape == theirs[1].shape == cols.shape
    np.testing.assert_array_equal(rows, np.sort(rows))
    assert len(set(cols.tolist())) == len(cols)
    total, expected = solved[rows, cols].sum(), solved[theirs[1], theirs[2]].sum()
    assert math.isfinite(total)
    scale = len(rows) * max(1.0, float(np.abs(solved[np.isfinite(solved)]).max(initial=0.0)))
    assert abs(total - expected) <= 1e-9 * scale, (total, expected)
    integral = kind in ("int64", "int8", "uint8", "bool", "torch_int") or np.all(solved[np.isfinite(solved)] % 1 == 0)
    if integral and np.array_equal(theirs[1], theirs[2]):
        np.testing.assert_array_equal(cols, rows)  # the identity is optimal: returned, as scipy does


@PROFILE
@given(n=st.integers(1, 9), extra=st.integers(0, 3), density=st.sampled_from([0.3, 0.5, 0.8]),
       seed=st.integers(0, 2**32 - 1))
def test_sparse_problems_agree_with_min_weight_full_bipartite_matching(n, extra, density, seed):
    rng = np.random.default_rng(seed)
    m = n + extra
    mask = rng.random((n, m)) < density
    weights = rng.integers(1, 20, (n, m)).astype(np.float64)
    graph = scipy.sparse.csr_matrix((weights[mask], np.nonzero(mask)), shape=(n, m))
    dense = np.where(mask, weights, math.inf)
    try:
        r, c = min_weight_full_bipartite_matching(graph)
    except ValueError:
        with pytest.raises(ValueError, match="infeasible"):
            flowfast.linear_sum_assignment(dense)
        return
    rows, cols = flowfast.linear_sum_assignment(dense)
    assert dense[rows, cols].sum() == weights[r, c].sum()
    assert mask[rows, cols].all()


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0)])
@pytest.mark.parametrize("kind", ["numpy", "torch", "list"])
def test_empty_matrices_give_empty_indices(shape, kind):
    cost = np.zeros(shape)
    argument = torch.from_numpy(cost) if kind == "torch" else cost.tolist() if kind == "list" else cost
    if kind == "list" and shape[0] == 0:  # [] is 1-D: scipy refuses it, and so does flowfast
        with pytest.raises(ValueError):
            scipy_lsa(argument)
        with pytest.raises(ValueError, match="2-D"):
            flowfast.linear_sum_assignment(argument)
        return
    rows, cols = flowfast.linear_sum_assignment(argument)
    assert len(rows) == len(cols) == 0
    assert (rows.dtype == torch.int64) if kind == "torch" else (rows.dtype == np.intp)


def test_constant_and_diagonal_optimal_matrices_return_the_identity():
    for n in (3, 17, 64):
        rows, cols = flowfast.linear_sum_assignment(np.ones((n, n)))
        np.testing.assert_array_equal(cols, np.arange(n))
        rows, cols = flowfast.linear_sum_assignment(torch.ones(n, n + 3, dtype=torch.float32))
        assert cols.tolist() == list(range(n))
    rows, cols = flowfast.linear_sum_assignment(np.ones((5, 2)))  # tall: the transpose's identity
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_array_equal(cols, [0, 1])


@pytest.mark.parametrize("maximize", [False, True])
def test_infinite_entries_follow_scipys_rules(maximize):
    forbidden, invalid = (-math.inf, math.inf) if maximize else (math.inf, -math.inf)
    feasible = np.array([[forbidden, 1.0, 2.0], [3.0, forbidden, 1.0], [2.0, 2.0, forbidden]])
    rows, cols = flowfast.linear_sum_assignment(feasible, maximize)
    r, c = scipy_lsa(feasible, maximize)
    assert feasible[rows, cols].sum() == feasible[r, c].sum()
    with pytest.raises(ValueError, match="NaN or"):
        flowfast.linear_sum_assignment(np.array([[invalid, 1.0], [1.0, 2.0]]), maximize)
    with pytest.raises(ValueError, match="NaN or"):
        flowfast.linear_sum_assignment(np.array([[math.nan, 1.0], [1.0, 2.0]]), maximize)
    with pytest.raises(ValueError, match="infeasible"):
        flowfast.linear_sum_assignment(np.array([[forbidden, forbidden], [1.0, 2.0]]), maximize)
    with pytest.raises(ValueError, match="infeasible"):
        flowfast.linear_sum_assignment(np.full((2, 3), forbidden), maximize)


@pytest.mark.parametrize("value, error", [(None, ValueError), (3.0, ValueError), ([1.0, 2.0], ValueError),
                                          ([["a", "b"], ["c", "d"]], ValueError), ([[1, 2], [3]], (ValueError, TypeError)),
                                          (np.array([[1, 2], [3, 4]], dtype=object), TypeError),
                                          (np.ones((2, 2, 2)), ValueError)], ids=repr)
def test_rejected_as_scipy_rejects(value, error):
    with pytest.raises(error):
        scipy_lsa(value)
    with pytest.raises(error, match="cost"):
        flowfast.linear_sum_assignment(value)


def test_large_integers_are_solved_exactly():
    rng = np.random.default_rng(0)
    cost = rng.integers(2**40, 2**40 + 1000, (30, 30))
    rows, cols = flowfast.linear_sum_assignment(cost)
    r, c = scipy_lsa(cost)
    assert cost[rows, cols].sum() == cost[r, c].sum()


def test_a_rounded_tie_does_not_hand_back_a_worse_identity():
    cost = np.array([[1e16, 1e16], [0.0, 1.0]])  # identity 1e16 + 1 rounds to the optimum 1e16
    for maximize, c in ((False, cost), (True, -cost)):
        rows, cols = flowfast.linear_sum_assignment(c, maximize)
        np.testing.assert_array_equal(cols, [1, 0])


def test_forbidden_edges_that_cannot_be_priced_say_why():
    cost = np.full((4, 4), 9e249)
    cost[0, 0] = math.inf
    with pytest.raises(ValueError, match="finite entries up to 9e\\+249.*rescale"):
        flowfast.linear_sum_assignment(cost)
