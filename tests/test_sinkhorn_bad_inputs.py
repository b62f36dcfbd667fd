"""The bad-input surface of :func:`flowfast.sinkhorn`: every bad input raises ValueError or
TypeError naming the offending argument (never a crash, never a silent NaN), plus hypothesis
property tests that valid adversarial problems are solved with finite outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import flowfast
from flowfast import testing

PROFILE = testing.bad_input_settings(40)

BAD_VALUES = testing.NON_FINITE
F64 = torch.float64


_raises = testing.raises_naming


def _dense(n=3, m=4, B=None, dtype=F64, device="cpu"):
    shape = (n, m) if B is None else (B, n, m)
    return torch.rand(*shape, dtype=F64).to(device, dtype)


def _cloud(n=3, m=4, d=2, B=None, dtype=F64, device="cpu"):
    lead = () if B is None else (B,)
    return (
        torch.randn(*lead, n, d, dtype=F64).to(device, dtype),
        torch.randn(*lead, m, d, dtype=F64).to(device, dtype),
    )


def _uniform(k, dtype=F64, device="cpu"):
    return torch.full((k,), 1.0 / k, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# cost vs point clouds
# --------------------------------------------------------------------------------------------


def test_both_cost_and_clouds_rejected():
    x, y = _cloud()
    for kw in (dict(x=x, y=y), dict(x=x), dict(y=y)):
        with _raises(ValueError, "cost", "x", "y", "not both"):
            flowfast.sinkhorn(_dense(), eps=0.1, **kw)


def test_neither_cost_nor_clouds_rejected():
    with _raises(ValueError, "cost", "x", "y", "neither"):
        flowfast.sinkhorn(eps=0.1)
    with _raises(ValueError, "cost", "x", "y"):
        flowfast.sinkhorn(None, x=None, y=None, eps=0.1, a=_uniform(3))


@pytest.mark.parametrize("which", ["x", "y"])
def test_one_cloud_only_rejected(which):
    x, y = _cloud()
    kw = {which: x if which == "x" else y}
    with _raises(ValueError, "x", "y"):
        flowfast.sinkhorn(eps=0.1, **kw)


def test_eps_is_required():
    with pytest.raises(TypeError, match="eps"):
        flowfast.sinkhorn(_dense())  # the missing keyword-only argument itself


# --------------------------------------------------------------------------------------------
# NaN / Inf
# --------------------------------------------------------------------------------------------


@st.composite
def _nonfinite_problem(draw):
    """A small problem with 1-3 NaN/Inf entries planted in one of cost / x / y / a / b."""
    target = draw(st.sampled_from(["cost", "x", "y", "a", "b"]))
    batched = draw(st.booleans())
    B = draw(st.integers(1, 3)) if batched else None
    n, m, d = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    lead = () if B is None else (B,)
    kw = {}
    if target in ("x", "y") or (target in ("a", "b") and draw(st.booleans())):
        kw["x"] = torch.randn(*lead, n, d, dtype=F64).to(dtype)
        kw["y"] = torch.randn(*lead, m, d, dtype=F64).to(dtype)
    else:
        kw["cost"] = torch.rand(*lead, n, m, dtype=F64).to(dtype)
    if target in ("a", "b"):
        k = n if target == "a" else m
        w = torch.full((*lead, k), 1.0 / k, dtype=dtype)
        kw[target] = w
    t = kw[target].view(-1)
    for _ in range(draw(st.integers(1, 3))):
        t[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(BAD_VALUES))
    return target, kw


@PROFILE
@given(
    problem=_nonfinite_problem(),
    reg_m=st.sampled_from([None, 1.0]),
    backend=st.sampled_from(["auto", "cpu", "torch"]),
)
def test_nonfinite_rejected(problem, reg_m, backend):
    target, kw = problem
    with _raises(ValueError, target, "NaN/Inf"):
        flowfast.sinkhorn(**kw, eps=0.1, reg_m=reg_m, backend=backend)


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("target", ["cost", "x", "y", "a", "b"])
def test_nonfinite_rejected_fixed(device, dtype, bad, target):
    if target in ("x", "y"):
        x, y = _cloud(dtype=dtype, device=device)
        kw = dict(x=x, y=y)
    else:
        kw = dict(cost=_dense(dtype=dtype, device=device))
    if target in ("a", "b"):
        kw[target] = _uniform(3 if target == "a" else 4, dtype, device)
    kw[target].view(-1)[-1] = bad
    with _raises(ValueError, target, "NaN/Inf"):
        flowfast.sinkhorn(**kw, eps=0.1)


def test_nonfinite_in_non_contiguous_view_rejected():
    C = _dense(4, 3).t()  # (3, 4) view
    C[2, 1] = float("nan")
    with _raises(ValueError, "cost", "NaN/Inf"):
        flowfast.sinkhorn(C, eps=0.1)


# --------------------------------------------------------------------------------------------
# dtypes and types
# --------------------------------------------------------------------------------------------

BAD_DTYPES = list(testing.NON_KERNEL_DTYPES)


def _ones(shape, dtype):
    return torch.ones(shape, dtype=dtype)


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_bad_cost_dtype_rejected(bad):
    with _raises(TypeError, "cost", "float32 or float64"):
        flowfast.sinkhorn(_ones((3, 4), bad), eps=0.1)


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("which", ["x", "y"])
def test_bad_cloud_dtype_rejected(bad, which):
    kw = dict(
        x=_ones((3, 2), bad if which == "x" else F64), y=_ones((4, 2), bad if which == "y" else F64)
    )
    with _raises(TypeError, which):
        flowfast.sinkhorn(**kw, eps=0.1)


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("which", ["a", "b"])
def test_bad_weight_dtype_rejected(bad, which):
    k = 3 if which == "a" else 4
    with _raises(TypeError, which):
        flowfast.sinkhorn(_dense(), eps=0.1, **{which: _ones((k,), bad)})


@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("problem", ["dense", "cloud"])
def test_mismatched_weight_dtype_rejected(which, problem):
    for main, other in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        kw = (
            dict(cost=_dense(dtype=main))
            if problem == "dense"
            else dict(zip("xy", _cloud(dtype=main), strict=True))
        )
        k = 3 if which == "a" else 4
        kw[which] = _uniform(k, other)
        with _raises(TypeError, which, str(other).replace("torch.", "")):
            flowfast.sinkhorn(**kw, eps=0.1)


def test_mismatched_cloud_dtypes_rejected():
    x, y = _cloud()
    for kw in (dict(x=x, y=y.float()), dict(x=x.float(), y=y)):
        with _raises(TypeError, "x", "y", "dtype"):
            flowfast.sinkhorn(**kw, eps=0.1)


@pytest.mark.parametrize(
    "bad",
    [[[0.1, 0.2], [0.3, 0.4]], 3.0, "cost"],
    ids=["list", "float", "str"],
)
def test_cost_not_a_tensor(bad):  # (a numpy cost is taken: tests/test_array_interop.py)
    with _raises(TypeError, "cost", "torch.Tensor"):
        flowfast.sinkhorn(bad, eps=0.1)


@pytest.mark.parametrize("which", ["x", "y"])
@pytest.mark.parametrize("bad, says", [([[0.1, 0.2]], "torch.Tensor"), (np.ones((2, 2)), "one library")],
                         ids=["list", "numpy-next-to-torch"])
def test_cloud_not_a_tensor(which, bad, says):
    x, y = _cloud(2, 2)
    kw = dict(x=x, y=y)
    kw[which] = bad
    with _raises(TypeError, which, says):
        flowfast.sinkhorn(**kw, eps=0.1)


@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("bad, says", [([0.5, 0.5], "torch.Tensor"), (np.full(2, 0.5), "one library"),
                                       (0.5, "torch.Tensor")], ids=["list", "numpy-next-to-torch", "float"])
def test_weights_not_a_tensor(which, bad, says):
    with _raises(TypeError, which, says):
        flowfast.sinkhorn(_dense(2, 2), eps=0.1, **{which: bad})


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (3,), (1,), (1, 2, 3, 3), (1, 1, 1, 1, 1)])
def test_wrong_cost_ndim(shape):
    with _raises(ValueError, "cost", "(n, m) or (B, n, m)"):
        flowfast.sinkhorn(torch.ones(shape, dtype=F64), eps=0.1)


@pytest.mark.parametrize("which", ["x", "y"])
@pytest.mark.parametrize("shape", [(), (3,), (1, 2, 3, 2)])
def test_wrong_cloud_ndim(which, shape):
    x, y = _cloud()
    kw = dict(x=x, y=y)
    kw[which] = torch.ones(shape, dtype=F64)
    with _raises(ValueError, which):
        flowfast.sinkhorn(**kw, eps=0.1)


@pytest.mark.parametrize(
    "xs,ys",
    [
        ((3, 2), (4, 3)),
        ((2, 3, 2), (3, 4, 2)),
        ((3, 2), (1, 4, 2)),
        ((1, 3, 2), (4, 2)),
        ((2, 3, 2), (2, 4, 5)),
    ],
)
def test_cloud_shapes_disagree(xs, ys):
    with _raises(ValueError, "x", "y", "agree"):
        flowfast.sinkhorn(x=torch.ones(xs, dtype=F64), y=torch.ones(ys, dtype=F64), eps=0.1)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0), (0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_cost(shape):
    with _raises(ValueError, "cost", "empty"):
        flowfast.sinkhorn(torch.ones(shape, dtype=F64), eps=0.1)


@pytest.mark.parametrize(
    "xs,ys,name",
    [
        ((0, 2), (3, 2), "x"),
        ((3, 2), (0, 2), "y"),
        ((3, 0), (3, 0), "x"),
        ((0, 3, 2), (0, 4, 2), "x"),
        ((2, 0, 2), (2, 4, 2), "x"),
    ],
)
def test_empty_cloud(xs, ys, name):
    with _raises(ValueError, name, "empty"):
        flowfast.sinkhorn(x=torch.ones(xs, dtype=F64), y=torch.ones(ys, dtype=F64), eps=0.1)


@PROFILE
@given(shape=st.lists(st.integers(0, 3), min_size=2, max_size=3).filter(lambda s: 0 in s))
def test_empty_cost_property(shape):
    with _raises(ValueError, "cost"):
        flowfast.sinkhorn(torch.ones(shape, dtype=F64), eps=0.1)


@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("shape", [(), (2,), (5,), (1, 5), (2, 3), (2, 4), (1, 1, 3), (3, 1)])
def test_weights_wrong_shape(which, shape):
    # problem: cost (3, 4): a must be (3,) / (1, 3), b (4,) / (1, 4)
    with _raises(ValueError, which, "shape"):
        flowfast.sinkhorn(_dense(), eps=0.1, **{which: torch.full(shape, 0.25, dtype=F64)})


@pytest.mark.parametrize("which", ["a", "b"])
def test_weights_wrong_batch(which):
    C = _dense(B=3)
    k = 3 if which == "a" else 4
    with _raises(ValueError, which, f"(3, {k})"):
        flowfast.sinkhorn(C, eps=0.1, **{which: torch.full((2, k), 1.0 / k, dtype=F64)})
    x, y = _cloud(B=3)
    with _raises(ValueError, which):
        flowfast.sinkhorn(x=x, y=y, eps=0.1, **{which: torch.full((4, k), 1.0 / k, dtype=F64)})


@PROFILE
@given(
    n=st.integers(1, 5),
    m=st.integers(1, 5),
    k=st.integers(1, 7),
    which=st.sampled_from(["a", "b"]),
    batched=st.booleans(),
)
def test_weights_wrong_length_property(n, m, k, which, batched):
    want = n if which == "a" else m
    if k == want:
        k += 1
    C = torch.rand((2, n, m) if batched else (n, m), dtype=F64)
    with _raises(ValueError, which):
        flowfast.sinkhorn(C, eps=0.1, **{which: torch.full((k,), 1.0 / k, dtype=F64)})


# --------------------------------------------------------------------------------------------
# weights: values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("bad", [0.0, -0.0, -0.25, -1e-300])
@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_weights_nonpositive(device, dtype, which, bad, reg_m):
    k = 3 if which == "a" else 4
    w = _uniform(k, dtype, device)
    w[0] = bad
    w[1:] = (1.0 - bad) / (
        k - 1
    )  # keep the total mass right: the positivity check must fire anyway
    with _raises(ValueError, which, "positive"):
        flowfast.sinkhorn(_dense(dtype=dtype, device=device), eps=0.1, reg_m=reg_m, **{which: w})


@PROFILE
@given(data=st.data(), which=st.sampled_from(["a", "b"]), n=st.integers(1, 5), m=st.integers(1, 5))
def test_weights_nonpositive_property(data, which, n, m):
    k = n if which == "a" else m
    w = data.draw(arrays(np.float64, (k,), elements=st.floats(1e-3, 10)))
    w[data.draw(st.integers(0, k - 1))] = data.draw(st.sampled_from([0.0, -0.0, -1.0, -1e-12]))
    with _raises(ValueError, which):
        flowfast.sinkhorn(
            torch.rand(n, m, dtype=F64), eps=0.1, reg_m=1.0, **{which: torch.from_numpy(w)}
        )


@pytest.mark.parametrize(
    "a_mass,b_mass", [(1.0, 2.0), (2.0, 1.0), (1.0, 1.001), (3.0, None), (None, 0.5)]
)
def test_balanced_needs_equal_mass(device, a_mass, b_mass):
    kw = {}
    if a_mass is not None:
        kw["a"] = _uniform(3, device=device) * a_mass
    if b_mass is not None:
        kw["b"] = _uniform(4, device=device) * b_mass
    with _raises(ValueError, "a.sum() == b.sum()", "reg_m"):
        flowfast.sinkhorn(_dense(device=device), eps=0.1, **kw)
    res = flowfast.sinkhorn(_dense(device=device), eps=0.1, reg_m=1.0, **kw)  # fine when unbalanced
    assert bool(torch.isfinite(res.value).all())


def test_balanced_mass_checked_per_problem():
    a = torch.full((2, 3), 1 / 3, dtype=F64)
    b = torch.full((2, 4), 1 / 4, dtype=F64)
    b[1] *= 2
    with _raises(ValueError, "a.sum() == b.sum()"):
        flowfast.sinkhorn(_dense(B=2), a=a, b=b, eps=0.1)


def test_balanced_equal_non_unit_mass_accepted():
    res = flowfast.sinkhorn(
        _dense(), a=_uniform(3) * 3, b=_uniform(4) * 3, eps=0.1, tol=1e-12, max_iter=10_000
    )
    np.testing.assert_allclose(res.plan().sum().item(), 3.0, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# scalar parameters
# --------------------------------------------------------------------------------------------

_BAD_SCALARS = {
    "eps": [
        (0.0, ValueError),
        (-0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (float("-inf"), ValueError),
        ("0.1", TypeError),
        (None, TypeError),
        (True, TypeError),
        ([0.1], TypeError),
        (1j, TypeError),
        (torch.tensor([0.1, 0.2]), TypeError),
        (torch.tensor(0.0), ValueError),
        (np.float64("nan"), ValueError),
    ],
    "reg_m": [
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1", TypeError),
        (True, TypeError),
        ([1.0], TypeError),
    ],
    "max_iter": [
        (0, ValueError),
        (-5, ValueError),
        (1.0, TypeError),
        (10.5, TypeError),
        ("10", TypeError),
        (True, TypeError),
        (None, TypeError),
        (float("inf"), TypeError),
    ],
    "check_every": [
        (0, ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (None, TypeError),
        (False, TypeError),
    ],
    "tol": [
        (-1e-6, (ValueError, TypeError)),
        (float("nan"), (ValueError, TypeError)),
        (float("inf"), (ValueError, TypeError)),
        ("1e-6", (ValueError, TypeError)),
        (None, (ValueError, TypeError)),
        (True, (ValueError, TypeError)),
    ],
    "eps_scaling": [
        (1, TypeError),
        (0, TypeError),
        ("yes", TypeError),
        (None, TypeError),
        (1.0, TypeError),
    ],
    "backend": [
        ("gpu", ValueError),
        ("", ValueError),
        (None, ValueError),
        ("CPU", ValueError),
        (1, ValueError),
        ("reference", ValueError),
    ],
}

_SCALAR_CASES = [
    pytest.param(name, value, exc, id=f"{name}={value!r}")
    for name, cases in _BAD_SCALARS.items()
    for value, exc in cases
]


@pytest.mark.parametrize("name,value,exc", _SCALAR_CASES)
@pytest.mark.parametrize("problem", ["dense", "cloud"])
def test_bad_scalar_rejected(name, value, exc, problem):
    kw = dict(cost=_dense()) if problem == "dense" else dict(zip("xy", _cloud(), strict=True))
    kw.setdefault("eps", 0.1)
    kw[name] = value
    with _raises(exc, name):
        flowfast.sinkhorn(**kw)


@PROFILE
@given(
    eps=st.one_of(
        st.floats(max_value=0.0),
        st.just(float("nan")),
        st.just(float("inf")),
        st.text(max_size=3),
        st.none(),
        st.booleans(),
        st.lists(st.floats(0.1, 1), max_size=2),
    )
)
def test_bad_eps_property(eps):
    with _raises((ValueError, TypeError), "eps"):
        flowfast.sinkhorn(_dense(), eps=eps)


@PROFILE
@given(
    reg_m=st.one_of(
        st.floats(max_value=0.0),
        st.just(float("nan")),
        st.just(float("inf")),
        st.booleans(),
        st.text(max_size=3),
    )
)
def test_bad_reg_m_property(reg_m):
    with _raises((ValueError, TypeError), "reg_m"):
        flowfast.sinkhorn(_dense(), eps=0.1, reg_m=reg_m)


@PROFILE
@given(
    max_iter=st.one_of(
        st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)
    )
)
def test_bad_max_iter_property(max_iter):
    with _raises((ValueError, TypeError), "max_iter"):
        flowfast.sinkhorn(_dense(), eps=0.1, max_iter=max_iter)


@PROFILE
@given(
    tol=st.one_of(
        st.floats(max_value=-1e-300),
        st.just(float("nan")),
        st.just(float("inf")),
        st.text(max_size=3),
    )
)
def test_bad_tol_property(tol):
    with _raises((ValueError, TypeError), "tol"):
        flowfast.sinkhorn(_dense(), eps=0.1, tol=tol)


def test_accepted_scalar_forms():
    """The documented-compatible forms still work (no over-eager validation)."""
    C = _dense()
    for eps in (0.1, 1, np.float64(0.1), np.float32(0.1), torch.tensor(0.1), torch.tensor([0.1])):
        assert bool(torch.isfinite(flowfast.sinkhorn(C, eps=eps).value))
    for tol in (0, 0.0, 1e-3, np.float64(1e-6)):
        assert int(flowfast.sinkhorn(C, eps=0.1, tol=tol, max_iter=20).n_iter) <= 20
    assert flowfast.sinkhorn(C, eps=0.1, reg_m=np.float64(2.0)).reg_m == 2.0


def test_backend_cuda_on_cpu_tensors():
    with _raises(ValueError, "backend", "cuda"):
        flowfast.sinkhorn(_dense(), eps=0.1, backend="cuda")
    x, y = _cloud()
    with _raises(ValueError, "backend", "cuda"):
        flowfast.sinkhorn(x=x, y=y, eps=0.1, backend="cuda")


@pytest.mark.cuda
def test_mixed_devices_rejected():
    C = _dense(device="cuda")
    with _raises(ValueError, "a", "cuda", "cpu"):
        flowfast.sinkhorn(C, a=_uniform(3), eps=0.1)
    with _raises(ValueError, "b"):
        flowfast.sinkhorn(C, b=_uniform(4), eps=0.1)
    x, y = _cloud()
    with _raises(ValueError, "x", "y"):
        flowfast.sinkhorn(x=x.cuda(), y=y, eps=0.1)


# --------------------------------------------------------------------------------------------
# regressions: bugs found while writing this suite, fixed since
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["sinkhorn", "sample"])
def test_bad_generator_rejected(where):
    C = _dense()
    with _raises(TypeError, "generator"):
        if where == "sinkhorn":
            flowfast.sinkhorn(C, eps=0.1, generator="not a generator").sample()
        else:
            flowfast.sinkhorn(C, eps=0.1).sample(5)


@pytest.mark.parametrize("name", ["max_iter", "check_every"])
def test_int_overflow_rejected(name):
    with _raises(ValueError, name):
        flowfast.sinkhorn(_dense(), eps=0.1, **{name: 2**70})


@pytest.mark.parametrize("problem", ["dense", "cloud"])
def test_unsupported_device_rejected(problem):
    if problem == "dense":
        kw, name = dict(cost=torch.ones(3, 4, dtype=F64, device="meta")), "cost"
    else:
        kw, name = (
            dict(
                x=torch.ones(3, 2, dtype=F64, device="meta"),
                y=torch.ones(4, 2, dtype=F64, device="meta"),
            ),
            "x",
        )
    with _raises(ValueError, name, "meta"):
        flowfast.sinkhorn(**kw, eps=0.1)


def _finite_or_rejected(name: str, **kw) -> None:
    """Either a finite answer or a ValueError naming `name` (a message about an internal
    parameter, or a silent NaN, both fail)."""
    try:
        res = flowfast.sinkhorn(**kw)
    except ValueError as err:
        if name not in str(err):
            raise AssertionError(f"ValueError does not name {name!r}: {err}") from err
        return
    for field in ("f", "g", "value", "cost"):
        t = getattr(res, field)
        if not bool(torch.isfinite(t).all()):
            raise AssertionError(f"finite {name} gave a non-finite result.{field}: {t}")


@pytest.mark.parametrize("dtype,big", [(torch.float64, 1e308), (torch.float32, 3e38)])
def test_cost_range_overflow(dtype, big):
    C = torch.tensor([[big, -big], [0.0, 1.0]], dtype=dtype)
    _finite_or_rejected("cost", cost=C, eps=1.0)


@pytest.mark.parametrize("eps_scaling", [False, True])
def test_cloud_distance_overflow(eps_scaling):
    x = torch.tensor([[1e200], [0.0]], dtype=F64)
    y = torch.tensor([[0.0], [1.0]], dtype=F64)
    _finite_or_rejected("x", x=x, y=y, eps=1.0, eps_scaling=eps_scaling)


def test_subnormal_eps():
    _finite_or_rejected("eps", cost=torch.rand(3, 4, dtype=F64), eps=1e-310, eps_scaling=False)


# --------------------------------------------------------------------------------------------
# properties: valid adversarial problems are solved, finite, with correct row masses
# --------------------------------------------------------------------------------------------


@st.composite
def _valid_problem(draw):
    batched = draw(st.booleans())
    B = draw(st.integers(1, 3)) if batched else None
    lead = () if B is None else (B,)
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    kind = draw(st.sampled_from(["dense", "cloud"]))
    # Unbalanced with strongly negative costs has a legitimately huge optimal mass (about
    # exp(-C / (eps + 2 reg_m))) that overflows float32: keep unbalanced costs >= 0.
    unbalanced = draw(st.booleans())
    if kind == "dense":
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6]))
        vals = draw(arrays(np.float64, (*lead, n, m), elements=st.floats(-1, 1)))
        if draw(st.booleans()):  # 1e6 dynamic range
            vals = np.sign(vals) * 10.0 ** (6 * np.abs(vals) - 3)
        if unbalanced:
            vals = np.abs(vals)
        kw = dict(cost=torch.from_numpy(vals * scale).to(dtype))
        cmax = float(kw["cost"].double().abs().max())
    else:
        d = draw(st.integers(1, 3))
        vals = draw(arrays(np.float64, (*lead, n + m, d), elements=st.floats(-100, 100)))
        if draw(st.booleans()):  # duplicates: y == x
            m = n
            vals = np.concatenate([vals[..., :n, :], vals[..., :n, :]], axis=-2)
        t = torch.from_numpy(vals).to(dtype)
        kw = dict(x=t[..., :n, :], y=t[..., n : n + m, :])
        diff = kw["x"].double().unsqueeze(-2) - kw["y"].double().unsqueeze(-3)
        cmax = float((diff**2).sum(-1).max())
    ratio = draw(st.sampled_from([1.0, 1e-1, 1e-2, 1e-3, 1e-4]))
    kw["eps"] = max(ratio * cmax, 1e-6)
    if draw(st.booleans()):
        a = draw(arrays(np.float64, (*lead, n), elements=st.floats(0.01, 1)))
        kw["a"] = torch.from_numpy(a / a.sum(-1, keepdims=True)).to(dtype)
    if unbalanced:
        kw["reg_m"] = draw(st.sampled_from([0.1, 1.0, 10.0]))
    kw["eps_scaling"] = draw(st.booleans())
    return kw, dtype, lead, n


@PROFILE
@given(problem=_valid_problem())
def test_valid_problems_are_finite(problem):
    kw, dtype, lead, n = problem
    res = flowfast.sinkhorn(**kw, max_iter=200)
    for field in ("f", "g", "value", "cost", "marginal_error"):
        t = getattr(res, field)
        assert bool(torch.isfinite(t).all()), (field, t)
        # float32 potentials that could not carry the plan to 1e-4 eps come back float64 (documented)
        wide_ok = field in ("f", "g") and dtype == torch.float32 and t.dtype == torch.float64
        assert t.dtype == dtype or wide_ok
    assert res.f.shape == (*lead, n)
    assert bool((res.n_iter >= 1).all()) and bool((res.n_iter <= 200).all())
    P = res.plan()
    assert bool(torch.isfinite(P).all()) and bool((P >= 0).all())
    if kw.get("reg_m") is None:  # balanced: rows are exact after the last f-update
        a = kw.get("a", torch.full((*lead, n), 1.0 / n, dtype=dtype))
        rtol = 1e-6 if dtype == torch.float64 else 5e-2
        np.testing.assert_allclose(
            P.double().sum(-1).numpy(), a.double().numpy(), rtol=rtol, atol=0
        )
    s = res.sample(torch.Generator().manual_seed(0))
    assert s.shape == (*lead, n) and bool((s >= 0).all()) and bool((s < P.shape[-1]).all())
    assert math.isfinite(res.eps)
