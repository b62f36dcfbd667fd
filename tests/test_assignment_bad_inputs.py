"""The bad-input surface of the assignment family: every bad input raises ValueError or TypeError
naming the offending argument (never a crash, never a silent garbage answer), plus hypothesis
property tests of optimality on small adversarial matrices."""

from __future__ import annotations


import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linear_sum_assignment as scipy_lsa

import flowfast
from flowfast import _arrays, _C, testing

PROFILE = testing.bad_input_settings(60)

BAD_VALUES = testing.NON_FINITE


_raises = testing.raises_naming


def _make(array: np.ndarray, kind: str):
    return array if kind == "numpy" else torch.from_numpy(array)


# --------------------------------------------------------------------------------------------
# NaN / Inf
# --------------------------------------------------------------------------------------------


@st.composite
def _nonfinite_costs(draw):
    batched = draw(st.booleans())
    B = draw(st.integers(1, 4)) if batched else 1
    n = draw(st.integers(1, 8))
    m = draw(st.integers(n, 10))
    np_dtype = draw(st.sampled_from([np.float32, np.float64]))
    cost = draw(arrays(np.float64, (B, n, m), elements=st.floats(-10, 10))).astype(np_dtype)
    k = draw(st.integers(1, 3))  # how many bad entries
    for _ in range(k):
        b, i = draw(st.integers(0, B - 1)), draw(st.integers(0, n - 1))
        j = draw(st.integers(0, m - 1))
        cost[b, i, j] = draw(st.sampled_from(BAD_VALUES))
    return cost if batched else cost[0]


@PROFILE
@given(
    cost=_nonfinite_costs(),
    kind=st.sampled_from(["numpy", "torch"]),
    maximize=st.booleans(),
    backend=st.sampled_from(["auto", "cpu", "torch"]),
)
def test_nonfinite_cost_rejected(cost, kind, maximize, backend):
    """NaN and the refused infinity are errors; the forbidden one (+inf minimizing, -inf
    maximizing) is solved around, or is "infeasible" exactly where scipy says so."""
    forbidden, refused = (-math.inf, math.inf) if maximize else (math.inf, -math.inf)
    if np.isnan(cost).any() or (cost == refused).any():
        with _raises(ValueError, "cost", "NaN or"):
            flowfast.linear_assignment(_make(cost, kind), maximize, backend=backend)
        return
    problems = cost.reshape(-1, *cost.shape[-2:])
    try:
        expected = [problem[scipy_lsa(problem, maximize)].sum() for problem in problems]
    except ValueError:
        with _raises(ValueError, "infeasible"):
            flowfast.linear_assignment(_make(cost, kind), maximize, backend=backend)
        return
    cols = np.asarray(flowfast.linear_assignment(_make(cost, kind), maximize, backend=backend)).reshape(len(problems), -1)
    for problem, c, total in zip(problems, cols, expected):
        ours = problem[np.arange(len(c)), c]
        assert (ours != forbidden).all()
        np.testing.assert_allclose(ours.astype(np.float64).sum(), total, rtol=1e-5, atol=1e-5)


@PROFILE
@given(
    n=st.integers(1, 8),
    m=st.integers(1, 8),
    bad=st.sampled_from(BAD_VALUES),
    data=st.data(),
    kind=st.sampled_from(["numpy", "torch"]),
)
def test_nonfinite_cost_rejected_linear_sum_assignment(n, m, bad, data, kind):
    """The scipy drop-in too, including tall (n > m) matrices solved on the transpose; with scipy's
    rules, NaN and -inf are invalid and +inf is a forbidden edge (tests/test_sum_assignment_parity.py)."""
    cost = np.random.default_rng(n * 10 + m).random((n, m))
    cost[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, m - 1))] = bad
    if bad == math.inf:
        try:
            scipy_lsa(cost)
        except ValueError:
            with _raises(ValueError, "infeasible"):
                flowfast.linear_sum_assignment(_make(cost, kind))
            return
        rows, cols = flowfast.linear_sum_assignment(_make(cost, kind))
        assert not np.isinf(cost[np.asarray(rows), np.asarray(cols)]).any()
        return
    with _raises(ValueError, "cost", "NaN or"):
        flowfast.linear_sum_assignment(_make(cost, kind))


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("where", ["first", "last", "all"])
def test_nonfinite_cost_rejected_fixed(device, dtype, bad, where):
    cost = torch.rand(3, 4, 5, dtype=dtype, device=device)
    if where == "first":
        cost[0, 0, 0] = bad
    elif where == "last":
        cost[-1, -1, -1] = bad
    else:
        cost.fill_(bad)
    for maximize, view in ((False, cost), (True, cost.transpose(0, 1))):  # the second non-contiguous
        if math.isnan(bad) or (bad > 0) == maximize:  # NaN or the refused infinity
            with _raises(ValueError, "cost", "NaN or"):
                flowfast.linear_assignment(view, maximize)
        elif where == "all":
            with _raises(ValueError, "cost matrix is infeasible for problem(s) [0, 1"):
                flowfast.linear_assignment(view, maximize)
        else:  # one forbidden edge: avoided
            cols = flowfast.linear_assignment(view, maximize)
            assert torch.isfinite(view.gather(2, cols[..., None])).all()
    if bad == math.inf and where != "all":
        return  # a forbidden edge for the scipy drop-in (tests/test_sum_assignment_parity.py)
    message = "infeasible" if bad == math.inf else "NaN or"
    with _raises(ValueError, "cost", message):
        flowfast.linear_sum_assignment(cost.flatten(0, 1))  # tall (12, 5): solved on the transpose
    with _raises(ValueError, "cost", message):
        flowfast.linear_sum_assignment(cost.flatten(0, 1).T)  # wide, non-contiguous


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


@PROFILE
@given(
    n=st.integers(2, 20),
    data=st.data(),
    batched=st.booleans(),
    kind=st.sampled_from(["numpy", "torch"]),
)
def test_more_rows_than_columns_solved_on_the_transpose(n, data, batched, kind):
    m = data.draw(st.integers(1, n - 1))
    shape = (2, n, m) if batched else (n, m)
    cost = np.random.default_rng(n * 7 + m).random(shape)
    cols = flowfast.linear_assignment(_make(cost, kind))
    cols = np.asarray(cols).reshape(-1, n)
    for problem, c in zip(cost.reshape(-1, n, m), cols):
        assigned = np.nonzero(c >= 0)[0]
        assert len(assigned) == m and len(set(c[assigned].tolist())) == m and (c[c < 0] == -1).all()
        r, k = scipy_lsa(problem)
        np.testing.assert_allclose(problem[assigned, c[assigned]].sum(), problem[r, k].sum(), rtol=1e-12, atol=0)


def test_more_rows_than_columns_is_fine_for_linear_sum_assignment():
    cost = np.random.default_rng(0).random((7, 3))
    rows, cols = flowfast.linear_sum_assignment(cost)
    r, c = scipy_lsa(cost)
    np.testing.assert_allclose(cost[rows, cols].sum(), cost[r, c].sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(), (3,), (1,), (2, 2, 3, 3), (1, 1, 1, 1), (1, 1, 1, 1, 1)])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_wrong_ndim_rejected(shape, kind):
    cost = _make(np.ones(shape), kind)
    with _raises(ValueError, "cost", "(n, m) or (B, n, m)"):
        flowfast.linear_assignment(cost)
    with _raises(ValueError, "cost"):
        flowfast.linear_assignment(cost, maximize=True, backend="torch")


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_zero_dim_message_reports_callers_shape(kind):
    with _raises(ValueError, "cost", "got shape ()"):
        flowfast.linear_assignment(_make(np.ones(()), kind))


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 3), (1, 1, 1, 1)])
def test_wrong_ndim_rejected_linear_sum_assignment(shape):
    with _raises(ValueError, "cost"):
        flowfast.linear_sum_assignment(torch.ones(shape, dtype=torch.float64))


@pytest.mark.parametrize(
    "shape", [(0, 3), (3, 0), (0, 0), (0, 3, 3), (2, 0, 3), (2, 3, 0), (0, 0, 0)]
)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_empty_rejected(shape, kind):
    cost = _make(np.ones(shape), kind)
    with _raises(ValueError, "cost", "empty"):
        flowfast.linear_assignment(cost)  # the scipy drop-in returns empty indices instead


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_empty_message_reports_callers_shape(shape):
    with _raises(ValueError, "cost", f"shape {shape}"):
        flowfast.linear_assignment(torch.ones(shape, dtype=torch.float64))


@PROFILE
@given(
    shape=st.lists(st.integers(0, 3), min_size=2, max_size=3).filter(lambda s: 0 in s),
    kind=st.sampled_from(["numpy", "torch"]),
)
def test_empty_rejected_property(shape, kind):
    with _raises(ValueError, "cost"):
        flowfast.linear_assignment(_make(np.ones(shape), kind))


# --------------------------------------------------------------------------------------------
# dtypes and input types
# --------------------------------------------------------------------------------------------

BAD_TORCH_DTYPES = list(testing.NON_KERNEL_DTYPES)
BAD_NUMPY_DTYPES = [
    np.int8,
    np.uint8,
    np.int32,
    np.int64,
    np.bool_,
    np.float16,
    np.complex64,
    np.complex128,
    object,
]


@pytest.mark.parametrize("dt", BAD_TORCH_DTYPES, ids=str)
def test_bad_torch_dtype_rejected(dt):
    cost = torch.ones(3, 4).to(dt)
    with _raises(TypeError, "cost"):
        flowfast.linear_assignment(cost)
    with _raises(TypeError, "cost"):
        flowfast.linear_assignment(cost.unsqueeze(0), backend="torch")
    if cost.is_complex():  # real dtypes are solved by the scipy drop-in, as scipy does
        with _raises(TypeError, "cost"):
            flowfast.linear_sum_assignment(cost)


@pytest.mark.parametrize("dt", BAD_NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_numpy_dtype_rejected(dt):
    cost = np.ones((3, 4), dtype=dt)
    with _raises(TypeError, "cost"):
        flowfast.linear_assignment(cost)
    if np.dtype(dt).kind in "cO":  # real dtypes are solved by the scipy drop-in, as scipy does
        with _raises(TypeError, "cost"):
            flowfast.linear_sum_assignment(cost)


@pytest.mark.parametrize(
    "value",
    [[[1.0, 2.0], [3.0, 4.0]], "cost", None, 3.0, 7, (1.0, 2.0), {"a": 1}, b"\x00"],
    ids=repr,
)
def test_non_array_cost_rejected(value):
    with _raises(TypeError, "cost"):
        flowfast.linear_assignment(value)
    # the scipy drop-in takes array-likes as scipy does: a nested list is solved, others refused
    if isinstance(value, list):
        assert flowfast.linear_sum_assignment(value)[1].tolist() == [0, 1]
    else:
        with _raises((TypeError, ValueError), "cost"):
            flowfast.linear_sum_assignment(value)


@PROFILE
@given(
    value=st.one_of(
        st.none(),
        st.text(max_size=5),
        st.integers(),
        st.floats(),
        st.lists(st.floats(allow_nan=False), max_size=4),
        st.lists(
            st.lists(st.floats(allow_nan=False), min_size=1, max_size=3), min_size=1, max_size=3
        ),
    )
)
def test_non_array_cost_rejected_property(value):
    with _raises(TypeError, "cost"):
        flowfast.linear_assignment(value)


@pytest.mark.parametrize(
    "maximize", ["yes", "True", "", 1, 0, 1.0, None, [True], torch.tensor(True)], ids=repr
)
def test_bad_maximize_rejected(maximize):
    cost = torch.rand(3, 3)
    with _raises(TypeError, "maximize"):
        flowfast.linear_assignment(cost, maximize)
    with _raises(TypeError, "maximize"):
        flowfast.linear_assignment(cost, maximize=maximize, backend="torch")
    with _raises(TypeError, "maximize"):
        flowfast.linear_sum_assignment(cost, maximize)
    with _raises(TypeError, "maximize"):
        flowfast.linear_sum_assignment(cost.T.contiguous()[:2].T, maximize)  # tall path


@pytest.mark.parametrize(
    "backend", ["gpu", "CPU", "Torch", "", " cpu", "cuda:0", None, 0, ["cpu"]], ids=repr
)
def test_bad_backend_rejected(backend):
    with _raises(ValueError, "backend"):
        flowfast.linear_assignment(torch.rand(3, 3), backend=backend)


@PROFILE
@given(backend=st.text(max_size=8).filter(lambda s: s not in ("auto", "cpu", "cuda", "torch")))
def test_bad_backend_rejected_property(backend):
    with _raises(ValueError, "backend"):
        flowfast.linear_assignment(np.ones((2, 2)), backend=backend)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_backend_cuda_on_cpu_input_rejected(dtype, kind):
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    cost = _make(np.random.default_rng(0).random((4, 5)).astype(np_dtype), kind)
    with _raises(ValueError, "backend", "cuda"):
        flowfast.linear_assignment(cost, backend="cuda")


def test_big_endian_numpy_solved_or_rejected_by_name():
    cost = np.random.default_rng(0).random((4, 4)).astype(">f8")
    try:
        cols = flowfast.linear_assignment(cost)
    except (ValueError, TypeError) as exc:
        assert "cost" in str(exc), str(exc)
    else:
        r, c = scipy_lsa(cost)
        np.testing.assert_allclose(cost[np.arange(4), cols].sum(), cost[r, c].sum(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# ot_pairing
# --------------------------------------------------------------------------------------------


def test_ot_pairing_shape_mismatch_rejected(dtype):
    x0 = torch.rand(5, 3, dtype=dtype)
    for shape in ((4, 3), (5, 2), (5, 3, 1)):
        x1 = torch.rand(shape, dtype=dtype)
        with _raises(ValueError, "x0", "x1"):
            flowfast.ot_pairing(x0, x1)
        with _raises(ValueError, "x0", "x1"):
            flowfast.ot_pairing(x1, x0)


def test_ot_pairing_dtype_mismatch_rejected():
    x = torch.rand(5, 3)
    with _raises(TypeError, "x0", "x1"):
        flowfast.ot_pairing(x, x.double())
    with _raises(TypeError, "x0", "x1"):
        flowfast.ot_pairing(x.double(), x)


@pytest.mark.parametrize(
    "dt", [torch.int64, torch.bool, torch.float16, torch.bfloat16, torch.complex64], ids=str
)
def test_ot_pairing_bad_dtype_rejected(dt):
    good = torch.rand(4, 2)
    bad = torch.ones(4, 2).to(dt)
    with _raises(TypeError, "x0"):
        flowfast.ot_pairing(bad, good)
    with _raises(TypeError, "x1"):
        flowfast.ot_pairing(good, bad)


@pytest.mark.parametrize(
    "value", [[[1.0]], "x", None, 1.0, np.ones((4, 2))], ids=lambda v: type(v).__name__
)
def test_ot_pairing_non_tensor_rejected(value):
    good = torch.rand(4, 2, dtype=torch.float64)
    with _raises(TypeError, "x0"):
        flowfast.ot_pairing(value, good)
    with _raises(TypeError, "x1"):
        flowfast.ot_pairing(good, value)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0,), (0, 2, 2), (2, 0, 4)])
def test_ot_pairing_empty_rejected(shape):
    x = torch.ones(shape)
    with _raises(ValueError, "x0"):
        flowfast.ot_pairing(x, x.clone())


def test_ot_pairing_zero_dim_rejected():
    with _raises(ValueError, "x0"):
        flowfast.ot_pairing(torch.tensor(1.0), torch.tensor(2.0))


@pytest.mark.parametrize("cost", ["l1", "cosine", "", None, 2], ids=repr)
def test_ot_pairing_bad_cost_rejected(cost):
    x = torch.rand(4, 2)
    with _raises(ValueError, "cost"):
        flowfast.ot_pairing(x, x.clone(), cost)


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("which", ["x0", "x1"])
def test_ot_pairing_nonfinite_rejected(device, dtype, bad, which):
    x0 = torch.rand(6, 3, dtype=dtype, device=device)
    x1 = torch.rand(6, 3, dtype=dtype, device=device)
    (x0 if which == "x0" else x1)[2, 1] = bad
    with _raises(ValueError, "NaN/Inf"):
        flowfast.ot_pairing(x0, x1)


@pytest.mark.parametrize("which", ["x0", "x1"])
def test_ot_pairing_nonfinite_message_names_input(which):
    x0, x1 = torch.rand(6, 3), torch.rand(6, 3)
    (x0 if which == "x0" else x1)[2, 1] = float("nan")
    with _raises(ValueError, which):
        flowfast.ot_pairing(x0, x1)


@pytest.mark.cuda
def test_ot_pairing_device_mismatch_rejected(dtype):
    cpu = torch.rand(5, 3, dtype=dtype)
    gpu = cpu.cuda()
    with _raises(ValueError, "x0", "x1"):
        flowfast.ot_pairing(cpu, gpu)
    with _raises(ValueError, "x0", "x1"):
        flowfast.ot_pairing(gpu, cpu)


# --------------------------------------------------------------------------------------------
# the C++ dispatch's own checks (last line of defence for direct flowfast._C callers)
# --------------------------------------------------------------------------------------------


def _direct(cost: torch.Tensor, out: torch.Tensor) -> None:
    _C.linear_assignment(_arrays.describe(cost), _arrays.describe(out), False, 0, 0, 0)


@pytest.mark.parametrize(
    "cost,out,needle",
    [
        (torch.rand(1, 3, 2), torch.empty(1, 3, dtype=torch.int64), "n <= m"),
        (torch.ones(1, 2, 2, dtype=torch.int64), torch.empty(1, 2, dtype=torch.int64), "float32"),
        (torch.ones(1, 2, 2, dtype=torch.float16), torch.empty(1, 2, dtype=torch.int64), "float32"),
        (torch.rand(1, 4, 4).transpose(1, 2), torch.empty(1, 4, dtype=torch.int64), "unit stride"),
        (torch.rand(3, 3), torch.empty(3, dtype=torch.int64), "dims"),
        (torch.rand(1, 2, 2), torch.empty(1, 3, dtype=torch.int64), "shape (B, n)"),
        (torch.rand(1, 2, 2), torch.empty(1, 2, dtype=torch.int32), "int64"),
        (torch.rand(2, 3, 3), torch.empty(3, 2, dtype=torch.int64).T, "contiguous"),
    ],
    ids=["n>m", "int64", "float16", "stride", "ndim", "out-shape", "out-dtype", "out-contiguous"],
)
def test_core_dispatch_checks(cost, out, needle):
    with _raises(ValueError, "linear_assignment", needle):
        _direct(cost, out)


# --------------------------------------------------------------------------------------------
# optimality properties on small adversarial matrices
# --------------------------------------------------------------------------------------------


@st.composite
def _small_costs(draw, np_dtype, tall: bool = False):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 12)) if tall else draw(st.integers(n, 12))
    width = 32 if np_dtype == np.float32 else 64
    floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=width)
    pool = draw(st.lists(floats, min_size=1, max_size=4))  # repeated values -> ties
    elements = st.one_of(st.sampled_from(pool), floats)
    return draw(arrays(np_dtype, (n, m), elements=elements))


def _check_total(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray, maximize: bool) -> None:
    c64 = cost.astype(np.float64)
    k = min(cost.shape)
    assert cols.dtype == np.int64 and cols.shape == (k,)
    assert len(np.unique(cols)) == k and len(np.unique(rows)) == k
    r, c = scipy_lsa(c64, maximize=maximize)
    rtol = testing.OBJECTIVE_RTOL[torch.float32 if cost.dtype == np.float32 else torch.float64]
    np.testing.assert_allclose(c64[rows, cols].sum(), c64[r, c].sum(), rtol=rtol, atol=1e-9)


@PROFILE
@given(
    cost=_small_costs(np.float64), maximize=st.booleans(), kind=st.sampled_from(["numpy", "torch"])
)
def test_property_optimal_float64(cost, maximize, kind):
    cols = flowfast.linear_assignment(_make(cost, kind), maximize)
    cols = cols if kind == "numpy" else cols.numpy()
    _check_total(cost, np.arange(cost.shape[0]), cols, maximize)


@PROFILE
@given(
    cost=_small_costs(np.float32), maximize=st.booleans(), kind=st.sampled_from(["numpy", "torch"])
)
def test_property_optimal_float32(cost, maximize, kind):
    cols = flowfast.linear_assignment(_make(cost, kind), maximize)
    cols = cols if kind == "numpy" else cols.numpy()
    _check_total(cost, np.arange(cost.shape[0]), cols, maximize)


@PROFILE
@given(cost=_small_costs(np.float64, tall=True), maximize=st.booleans())
def test_property_linear_sum_assignment_any_shape(cost, maximize):
    rows, cols = flowfast.linear_sum_assignment(cost, maximize)
    assert (np.diff(rows) > 0).all()
    _check_total(cost, rows, cols, maximize)


TIE_VALUES = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0, 1e3])


@st.composite
def _tied_batches(draw):
    B, n = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    m = draw(st.integers(n, 9))
    return draw(arrays(np.float64, (B, n, m), elements=TIE_VALUES))


@PROFILE
@given(batch=_tied_batches())
def test_property_batched_tied(batch):
    cols = flowfast.linear_assignment(batch)
    for b in range(batch.shape[0]):
        _check_total(batch[b], np.arange(batch.shape[1]), cols[b], False)
