"""Fuzz cases of the public API, as plain JSON-able specs, and their checks against the peers.

A spec names an op and how to build its inputs (shape, dtype, scale, offset, ties, NaN/Inf
positions, layout, and the caller's array library: torch, numpy, negative-stride numpy, JAX); :func:`run_case` builds them deterministically from the spec's seed, calls
flowfast, and classifies the outcome:

    correct   agrees with the peer (scipy / float64 recomputation)
    error     a clear ValueError / TypeError / MemoryError (what bad input must give)
    wrong     a value that disagrees with the peer, or an error type that is not a clear one
    nonfinite NaN/Inf in an output for finite inputs, without an error

Crashes and hangs are classified by the harness that runs the case in a child process.
"""

from __future__ import annotations

import math

import numpy as np
import torch

OPS = ("linear_sum_assignment", "linear_assignment", "sinkhorn", "ot_pairing", "pair_sinkhorn", "odeint", "cfm_loss",
       "cfm_sample")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLEAR_ERRORS = (ValueError, TypeError, MemoryError)


def _tensor(spec: dict, shape: tuple) -> torch.Tensor:
    """Values scale * (offset + U(0, 1)) (ties: integers 0..3), with NaN/Inf planted, in the spec's
    dtype and layout (transposed / broadcast / sliced)."""
    g = torch.Generator().manual_seed(spec["seed"])
    base = torch.rand(shape, generator=g, dtype=torch.float64)
    if spec.get("ties"):
        base = (base * 4).floor()
    values = spec["scale"] * (spec["offset"] + base)
    special = spec.get("special")
    if special and values.numel():
        values.view(-1)[spec["special_at"] % values.numel()] = float(special)
    t = values.to(DTYPES[spec["dtype"]])
    layout = spec.get("layout", "contiguous")
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "sliced" and t.dim() >= 1:
        t = torch.cat([t, t], dim=-1)[..., ::2]
    return t


def _in_library(spec: dict, t: torch.Tensor):
    """``t`` as the spec's caller array library (the entry points' array layer, flowfast._interop):
    torch as it is, numpy (its strides kept), numpy as a negative-stride view of the same values,
    or JAX (float64 stays torch: JAX without x64 has none). bfloat16 has no numpy dtype."""
    library = spec.get("library", "torch")
    if library.startswith("numpy") and t.dtype != torch.bfloat16:
        array = t.numpy()
        if library == "numpy_reversed" and array.ndim:
            array = np.ascontiguousarray(array[::-1])[::-1]  # same values, negative leading stride
        return array
    if library == "jax" and t.dtype != torch.float64:
        try:
            import jax
        except ImportError:
            return t
        return jax.dlpack.from_dlpack(t.contiguous())
    return t


def _torch(value) -> torch.Tensor:
    """A result of any array library as a torch tensor (a copy)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return torch.from_dlpack(value).clone()  # JAX (bfloat16 included)


def _finite(*ts) -> bool:
    return all(bool(torch.isfinite(t.detach().double()).all()) for t in ts)


def _inputs_finite(*ts) -> bool:
    return all(bool(torch.isfinite(t.double()).all()) for t in ts)


def _check_assignment(spec: dict) -> str:
    """scipy's semantics for both entry points: +inf a forbidden edge, NaN / -inf refused, n > m on
    the transpose (linear_assignment: -1 for the rows left out); linear_sum_assignment also takes
    empty matrices and non-float dtypes, as scipy does."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    import flowfast

    n, m = spec["n"], spec["m"]
    C = _tensor(spec, (n, m))
    C64 = C.double().numpy()
    try:
        r, c = scipy_lsa(C64)
        want = C64[r, c].sum()
    except ValueError:
        want = None  # scipy refuses: NaN, -inf, or infeasible
    try:
        if spec["op"] == "linear_sum_assignment":
            given = C.numpy() if spec.get("numpy") and C.dtype != torch.bfloat16 else _in_library(spec, C)
            rows, cols = flowfast.linear_sum_assignment(given)
            rows, cols = np.asarray(rows), np.asarray(cols)
        else:
            cols = np.asarray(flowfast.linear_assignment(_in_library(spec, C)))
            rows = np.nonzero(cols >= 0)[0]
            cols = cols[rows]
    except CLEAR_ERRORS:
        return "error"
    if want is None:
        return "wrong"  # solved what scipy refuses
    if len(set(cols.tolist())) != len(cols) or len(rows) != min(n, m):
        return "wrong"
    got = C64[rows, cols].sum()
    finite = np.abs(C64[np.isfinite(C64)])
    peak = float(finite.max()) if finite.size else 1.0
    rel = 1e-9 if C.dtype == torch.float64 else 2e-6
    forbidden = not np.isfinite(C64).all()
    tol = rel * max(1.0, peak) * max(n, m) * (max(n, m) if forbidden else 1)
    return "correct" if math.isfinite(got) and abs(got - want) <= tol else "wrong"


def _check_sinkhorn(spec: dict) -> str:
    import flowfast

    C = _tensor(spec, (spec["n"], spec["m"]))
    eps = spec["eps_rel"] * max(float(C.double().abs().max()) if C.numel() and _inputs_finite(C) else 1.0, 1e-300)
    try:
        res = flowfast.sinkhorn(_in_library(spec, C), eps=eps, max_iter=spec["max_iter"], reg_m=spec.get("reg_m"))
    except CLEAR_ERRORS:
        return "error"
    if not _inputs_finite(C):
        return "wrong"
    res = getattr(res, "torch", res)  # another library's result: its torch object (the arrays are views of it)
    if not _finite(res.f, res.g, res.marginal_error, res.cost, res.value):
        return "nonfinite"
    if spec.get("reg_m") is not None:
        return "correct"
    # Honesty: the plan of the RETURNED potentials, in float64, has the reported error and cost.
    n, m = C.shape
    log_p = (res.f.double()[:, None] + res.g.double()[None, :] - C.double()) / res.eps - math.log(n) - math.log(m)
    P = log_p.exp()
    err = float((P.sum(0) - 1.0 / m).abs().sum())
    cost = float((P * C.double()).sum())
    # Potentials stored in float32 carry 2^-24 of their magnitude: the plan recomputed from them can
    # differ by that much over eps (documented float32 limit), on top of the solver's own error.
    stored = max(float(res.f.abs().max()), float(res.g.abs().max()), float(C.double().abs().max()))
    rounding = 0.0 if C.dtype == torch.float64 else 4 * 2.0**-24 * stored / res.eps
    ok = (abs(err - float(res.marginal_error)) <= 1e-4 + 1e-3 * err + 2 * rounding
          and abs(cost - float(res.cost)) <= (1e-4 + 2 * rounding) * max(abs(cost), float(C.double().abs().max())))
    return "correct" if ok else "wrong"


def _check_pairing(spec: dict) -> str:
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    import flowfast
    from flowfast.couplings import pair

    n, d = spec["n"], spec["d"]
    x0 = _tensor(spec, (n, d))
    x1 = _tensor({**spec, "seed": spec["seed"] + 1, "special": None}, (n, d))
    try:
        if spec["op"] == "ot_pairing":
            _, x1p = flowfast.ot_pairing(_in_library(spec, x0), _in_library(spec, x1))
        else:
            x0p, x1p, (i, j) = pair(_in_library(spec, x0), _in_library(spec, x1), method="sinkhorn", reg=0.05,
                                    generator=torch.Generator().manual_seed(0))
    except CLEAR_ERRORS:
        return "error"
    x1p = _torch(x1p)
    j = _torch(j) if spec["op"] == "pair_sinkhorn" else None
    if not _inputs_finite(x0, x1):
        return "wrong"
    if not _finite(x1p):
        return "nonfinite"
    if spec["op"] == "pair_sinkhorn":
        return "correct" if sorted(j.tolist()) == list(range(n)) and torch.equal(x1p, x1[j]) else "wrong"
    a, b = x0.double().reshape(n, -1), x1.double().reshape(n, -1)
    C = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).numpy()
    r, c = scipy_lsa(C)
    want = C[r, c].sum()
    got = ((a - x1p.double().reshape(n, -1)) ** 2).sum().item()
    tol = (1e-9 if x0.dtype == torch.float64 else 1e-3) * max(1.0, float(C.max())) * n
    return "correct" if abs(got - want) <= tol else "wrong"


def _check_odeint(spec: dict) -> str:
    """Low-precision states against the same integration of the float64 state; float64 dopri5
    against the exact solution.

    ``field``: ``decay`` (dx/dt = -rate x), ``growth`` (+rate x: a large state overflows the dtype)
    or ``nan`` (the velocity turns NaN at t >= 0.5). The NaN policy (``check_finite``, default True):
    a NaN/Inf x0 is a ValueError, and so is a final state that is not finite; with
    ``check_finite=False`` a non-finite final state may be returned where the float64 solution
    (in the dtype) is not finite either, or the velocity returned NaN."""
    import inspect

    from flowfast.samplers import odeint

    x0 = _tensor(spec, (spec["n"], spec["d"]))
    field = spec.get("field", "decay")
    rate = spec["rate"] * (1.0 if field == "growth" else -1.0)
    requested = spec.get("check_finite")
    if requested is None or "check_finite" not in inspect.signature(odeint).parameters:
        kw, check_finite = {}, True
    else:
        kw, check_finite = {"check_finite": requested}, bool(requested)

    def velocity(x, t):
        v = rate * x
        # (one Euler step only evaluates t0 = 0)
        if field == "nan" and float(t[0]) >= (0.0 if spec["steps"] == 1 else 0.5):
            v = v.clone(memory_format=torch.contiguous_format)
            v.view(-1)[spec["special_at"] % v.numel()] = float("nan")
        return v

    def run(x, **extra):
        return odeint(velocity, x, method=spec["method"], steps=spec["steps"], **{**kw, **extra}).x

    try:
        x = run(x0)
    except CLEAR_ERRORS:
        return "error"
    if not _inputs_finite(x0):
        return "correct" if not check_finite else "wrong"  # check_finite=False: NaN in, NaN out allowed
    if field == "nan":
        if _finite(x):
            return "wrong"  # the NaN velocity was not integrated
        return "correct" if not check_finite else "nonfinite"
    if not _finite(x) and check_finite:
        return "nonfinite"  # must have been a ValueError
    try:
        quiet = {"check_finite": False} if kw else {}
        want = run(x0.double(), **quiet) if x0.dtype != torch.float64 else None
    except CLEAR_ERRORS:
        return "error"
    if want is None:
        if spec["method"] != "dopri5":
            return "correct" if _finite(x) else "nonfinite"
        want = x0 * math.exp(rate)
    in_range = _finite(want.to(x0.dtype))
    if not _finite(x):
        return "nonfinite" if in_range else "correct"  # check_finite=False: an overflow may come back
    if not in_range:
        return "correct"  # finite although the float64 state overflows the dtype: saturated arithmetic
    rel = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-4}[x0.dtype]
    # dopri5's default atol (1e-5) bounds its absolute error: states far below it are not resolved.
    tiny = float(torch.finfo(x0.dtype).tiny) * 4 + (1e-4 if spec["method"] == "dopri5" else 0.0)
    err = float((x.double() - want.double()).abs().max())
    return "correct" if err <= rel * float(want.double().abs().max()) + tiny else "wrong"


CHECKS = {"linear_sum_assignment": _check_assignment, "linear_assignment": _check_assignment,
          "sinkhorn": _check_sinkhorn, "ot_pairing": _check_pairing, "pair_sinkhorn": _check_pairing,
          "odeint": _check_odeint}


def _extra_checks() -> dict:
    from path_cases import CHECKS as PATH_CHECKS

    return PATH_CHECKS


def run_case(spec: dict) -> str:
    """The outcome class of one spec (run inside the harness's child process)."""
    try:
        check = CHECKS.get(spec["op"]) or _extra_checks()[spec["op"]]
        return check(spec)
    except CLEAR_ERRORS:
        return "error"
    except Exception as exc:  # an unclear exception type from flowfast (RuntimeError, IndexError, ...)
        return f"wrong:{type(exc).__name__}"
