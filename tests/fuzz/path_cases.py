"""Fuzz cases of the flow-matching paths (flowfast.paths): ``loss`` (fused and eager) and
``sample_location_and_conditional_flow``, checked against a float64 recomputation of the
formulas in the flowfast/paths.py docstring.

The NaN policy (the spec these cases classify by): with ``check_finite=True`` (the default) NaN/Inf
in x0, x1, t or weight is a ValueError naming that argument, inputs whose squared-error loss would
overflow the dtype are a ValueError, and a non-finite loss / x_t / u_t returned for finite, in-range
inputs is ``nonfinite``. With ``check_finite=False``, NaN inputs may give NaN outputs (not a failure).

Outcome labels beyond the plain classes (cases.py): ``wrong:unnamed`` (a ValueError for a NaN/Inf
input that does not name the argument), ``wrong:nan-accepted`` (a finite result from a NaN/Inf input
under check_finite=True), ``wrong:t-accepted`` (t outside [0, 1] accepted), ``wrong:refused`` (a
clear error for small, finite inputs that every path must take), ``wrong:value`` (disagrees with
the float64 recomputation beyond the dtype's tolerance).
"""

from __future__ import annotations

import inspect
import math
import re

import torch

from cases import CLEAR_ERRORS, DTYPES, _tensor

PATHS = ("icfm", "otcfm", "sbcfm", "target", "vp")
# dtype rounding per elementary operation (unit roundoff x 2)
_EPS = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
_C = 32.0  # how many roundings a value may accumulate through the (eager, 16-bit) formulas
_BRIDGE_GUARD = 1e-8


def make_path(spec: dict):
    from flowfast import paths

    name, sigma = spec["path"], spec["sigma"]
    if name == "icfm":
        return paths.IndependentCFM(sigma)
    if name == "otcfm":
        return paths.OptimalTransportCFM(sigma)
    if name == "sbcfm":
        return paths.SchrodingerBridgeCFM(sigma, ot_method=spec.get("ot_method", "sinkhorn"))
    if name == "target":
        return paths.TargetCFM(sigma)
    return paths.VariancePreservingCFM(sigma)


def _model(kind: str):
    if kind == "zero":
        return lambda x, t: torch.zeros_like(x)
    if kind == "affine":
        return lambda x, t: 0.5 * x + 0.25 * t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return lambda x, t: 0.5 * x


def _shape(spec: dict) -> tuple:
    return tuple(spec["shape"])


def _times(spec: dict, dtype: torch.dtype, B: int):
    """t as the spec asks: None, a python number, or a (B,) tensor (its dtype, layout, specials)."""
    mode = spec["t_mode"]
    if mode == "none":
        return None
    special = spec["special"] if spec["special_in"] == "t" else None
    if mode.startswith("scalar"):
        value = {"scalar0": 0.0, "scalar1": 1.0, "scalarh": 0.5}[mode]
        return float(special) if special else value
    g = torch.Generator().manual_seed(spec["seed"] + 7)
    if mode == "rand":
        t = torch.rand(B, generator=g, dtype=torch.float64)
    elif mode == "zero":
        t = torch.zeros(B, dtype=torch.float64)
    elif mode == "one":
        t = torch.ones(B, dtype=torch.float64)
    elif mode == "ends":
        t = (torch.arange(B) % 2).double()
    elif mode == "edge":  # next to the ends, where SB-CFM's 1/(2t(1-t)) and TargetCFM's 1/(1-t) are large
        t = torch.tensor([1e-7, 1 - 1e-7, 1e-4, 1 - 1e-4] * B, dtype=torch.float64)[:B]
    else:  # "out": outside [0, 1]
        t = torch.rand(B, generator=g, dtype=torch.float64)
        t[0] = -0.25 if spec["seed"] % 2 else 1.25
    if special:
        t[spec["special_at"] % B] = float(special)
    t = t.to(DTYPES[spec["dtype"]] if spec["t_dtype"] == "same" else DTYPES[spec["t_dtype"]])
    if spec["layout"] == "sliced":
        t = torch.cat([t, t])[::2]
    return t


def _weight(spec: dict, dtype: torch.dtype, B: int):
    mode = spec["weight_mode"]
    if mode == "none":
        return None
    g = torch.Generator().manual_seed(spec["seed"] + 11)
    w = {"rand": lambda: torch.rand(B, generator=g, dtype=torch.float64),
         "ones": lambda: torch.ones(B, dtype=torch.float64),
         "zeros": lambda: torch.zeros(B, dtype=torch.float64),
         "big": lambda: torch.full((B,), 1e20, dtype=torch.float64)}[mode]()
    if spec["special_in"] == "weight" and spec["special"]:
        w[spec["special_at"] % B] = float(spec["special"])
    w = w.to(dtype)
    if spec["layout"] == "sliced":
        w = torch.cat([w, w])[::2]
    return w


def _inputs(spec: dict):
    shape = _shape(spec)
    B = shape[0]
    dtype = DTYPES[spec["dtype"]]
    x0 = _tensor({**spec, "special": spec["special"] if spec["special_in"] == "x0" else None}, shape)
    x1 = _tensor({**spec, "seed": spec["seed"] + 1, "offset": spec["offset1"],
                  "special": spec["special"] if spec["special_in"] == "x1" else None}, shape)
    return x0, x1, _times(spec, dtype, B), _weight(spec, dtype, B)


def _nonfinite_args(**named) -> list[str]:
    bad = []
    for name, value in named.items():
        if value is None:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                bad.append(name)
        elif not bool(torch.isfinite(value.double()).all()):
            bad.append(name)
    return bad


def _t_out_of_range(t) -> bool:
    if t is None:
        return False
    tt = torch.as_tensor(t, dtype=torch.float64)
    finite = tt[torch.isfinite(tt)]
    return bool(((finite < 0) | (finite > 1)).any())


def _check_finite_kwarg(fn, requested) -> tuple[dict, bool]:
    """(kwargs to pass, the effective check_finite): the keyword only where the spec sets it and
    the function takes it; otherwise the default (True, by the NaN policy)."""
    if requested is None or "check_finite" not in inspect.signature(fn).parameters:
        return {}, True
    return {"check_finite": requested}, bool(requested)


def _benign(spec: dict, bad: list, t_out: bool) -> bool:
    """Small finite inputs that every path must take (a refusal is a failure). SB-CFM's entropic
    coupling may refuse (eps = 2 sigma^2 too small for the batch), so it is left out."""
    if bad or t_out or spec["path"] == "sbcfm" or spec["weight_mode"] == "big":
        return False
    small = spec["scale"] in (1e-3, 1.0) and spec["offset"] in (0.0, -0.5, 1.0) and spec["offset1"] in (0.0, -0.5, 1.0)
    if spec["dtype"] in ("float32", "float64"):
        return small or (spec["scale"] in (1e-3, 1.0, 1e3) and abs(spec["offset"]) <= 1e3 and abs(spec["offset1"]) <= 1e3)
    return small


def _names(message: str, names: list) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in names)


def _refusal(exc: Exception, spec: dict, bad: list, t_out: bool, check_finite: bool) -> str:
    """The outcome of a clear error. A NaN/Inf input must be named, unless the error is the other
    refusal of the policy (the batch is so large that the loss would overflow)."""
    message = str(exc)
    if (bad and check_finite and isinstance(exc, ValueError) and not _names(message, bad)
            and "overflow" not in message.lower()):
        return "wrong:unnamed"
    if _benign(spec, bad, t_out):
        return "wrong:refused"
    return "error"


# --- the float64 formulas (flowfast/paths.py docstring) ---------------------------------------------
def _pad(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def _reference(name: str, sigma: float, x0, x1, t, eps):
    """float64 (x_t, u_t) from the docstring's table, u_t in its noise form (finite at the ends),
    and per-element magnitudes (ax, au) that bound their dtype rounding: each computed value may be
    off by about eps_dtype * magnitude."""
    x0, x1, t, eps = x0.double(), x1.double(), _pad(t.double(), x0), eps.double()
    if name == "vp":
        c, s = torch.cos(math.pi / 2 * t), torch.sin(math.pi / 2 * t)
        # cos / sin of a rounded pi t / 2 are off by eps absolutely (not relatively): at t = 1 the
        # dtype's cos is ~eps, not 0, so the bound is relative to |x0| + |x1|
        mu, ax_mu = c * x0 + s * x1, x0.abs() + x1.abs()
        sig = torch.full_like(t, sigma)
        ut = math.pi / 2 * (c * x1 - s * x0)
        au = math.pi / 2 * (x0.abs() + x1.abs())
    elif name == "target":
        mu, ax_mu = t * x1, (t * x1).abs()
        sig = 1 - (1 - sigma) * t
        ut = x1 - (1 - sigma) * eps
        au = x1.abs() + eps.abs()
    else:
        mu = t * x1 + (1 - t) * x0
        ax_mu = (t * x1).abs() + ((1 - t) * x0).abs()
        sig = (sigma * torch.sqrt(t * (1 - t))) if name == "sbcfm" else torch.full_like(t, sigma)
        ut = x1 - x0
        au = x0.abs() + x1.abs()
        if name == "sbcfm":
            k = (1 - 2 * t) / (2 * t * (1 - t) + _BRIDGE_GUARD)
            ut = k * (sig * eps) + ut
            # the eager form k (x_t - mu_t): x_t - mu_t cancels to the rounding of mu_t and x_t
            au = au + k.abs() * (ax_mu + (sig * eps).abs())
    xt = mu + sig * eps
    ax = ax_mu + (sig * eps).abs()
    if name == "target":  # 1 - (1 - sigma) t cancels near t = 1: its rounding is eps absolutely
        ax = ax + (1 + (1 - sigma) * t.abs()) * eps.abs()
    return xt, ut, ax, au


def _close(got: torch.Tensor, want: torch.Tensor, mag: torch.Tensor, dtype: torch.dtype) -> bool:
    tiny = 16 * float(torch.finfo(dtype).tiny)
    return bool(((got.double() - want).abs() <= _C * _EPS[dtype] * mag + tiny).all())


def _loss_bound(v64, ut64, ax, au, w64, dtype, vmag) -> tuple[float, float]:
    """(float64 loss, its tolerance): each squared residual r^2 may be off by about
    eps * (|r| + a)^2 with a the magnitude of the values that made r (dtype rounding)."""
    r = v64 - ut64
    B = r.shape[0]
    a = au + vmag
    per = (r**2).reshape(B, -1).mean(1)
    err = ((r.abs() + a) ** 2).reshape(B, -1).mean(1)
    if w64 is not None:
        per, err = per * w64, err * w64.abs()
    wmax = 1.0 if w64 is None else max(1.0, float(w64.abs().max()))
    tiny = 16 * float(torch.finfo(dtype).tiny) * wmax
    return float(per.mean()), _C * _EPS[dtype] * float(err.mean()) + tiny


def _may_overflow(spec: dict, x0, x1, t, w) -> bool:
    """Whether the squared error could overflow the dtype for these finite inputs (any coupling,
    |noise| <= 8): then check_finite=False may return +inf. float64 magnitudes of the docstring's
    formulas, over t of the batch (t None: any t in [0, 1], sampled densely plus the ends)."""
    dtype = x0.dtype
    B = x0.shape[0]
    a0 = x0.double().abs().amax().expand(B)  # any pairing: the largest entry of either batch
    a1 = x1.double().abs().amax().expand(B)
    ts = [torch.as_tensor(t, dtype=dtype).expand(B).double()] if t is not None else \
        [torch.full((B,), float(v)) for v in torch.linspace(0, 1, 1001).tolist()]
    wmax = 1.0 if w is None else max(1.0, float(w.to(dtype).double().abs().max()))
    peak = 0.0
    for tt in ts:
        tt = tt.to(dtype).double()
        ones = torch.ones(B, 1, dtype=torch.float64)
        _, _, ax, au = _reference(spec["path"], spec["sigma"], a0[:, None] * ones, a1[:, None] * ones, tt,
                                  torch.full((B, 1), 8.0, dtype=torch.float64))
        peak = max(peak, float(((ax + 0.25 + au) ** 2).max()) * wmax)
    return peak > float(torch.finfo(dtype).max) / 4


def _noise_irrelevant(spec: dict) -> bool:
    return spec["sigma"] == 0.0 and spec["path"] in ("icfm", "otcfm", "vp")


def _gen(spec: dict) -> torch.Generator:
    return torch.Generator().manual_seed(spec["seed"] + 3)


def _check_loss(spec: dict) -> str:
    path = make_path(spec)
    x0, x1, t, w = _inputs(spec)
    dtype = x0.dtype
    model = _model(spec["model"])
    bad = _nonfinite_args(x0=x0, x1=x1, t=t, weight=w)
    t_out = _t_out_of_range(t)
    kw, check_finite = _check_finite_kwarg(path.loss, spec["check_finite"])
    modes = [spec["fused"], not spec["fused"]] if _noise_irrelevant(spec) else [spec["fused"]]
    losses = {}
    for fused in modes:
        try:
            losses[fused] = path.loss(model, x0, x1, t=t, weight=w, fused=fused, generator=_gen(spec), **kw)
        except CLEAR_ERRORS as exc:
            return _refusal(exc, spec, bad, t_out, check_finite)
    if t_out:
        return "wrong:t-accepted"
    values = {fused: float(loss.detach().double()) for fused, loss in losses.items()}
    if bad:
        if not check_finite:
            return "correct"
        return "nonfinite" if not all(math.isfinite(v) for v in values.values()) else "wrong:nan-accepted"
    if not all(math.isfinite(v) for v in values.values()):
        # check_finite=False skips the overflow refusal: +inf is then the honest answer
        return "correct" if not check_finite and _may_overflow(spec, x0, x1, t, w) else "nonfinite"
    if any(v < 0 for v in values.values()):
        return "wrong:value"
    # The float64 recomputation: the same coupling, t and (eager) noise from a twin generator.
    twin = _gen(spec)
    x0c, x1c = path.couple(x0, x1, twin)
    B = x0.shape[0]
    tt = torch.rand(B, dtype=dtype, generator=twin) if t is None else \
        torch.as_tensor(t, dtype=dtype).expand(B) if not isinstance(t, torch.Tensor) or t.dim() == 0 else t.to(dtype)
    w64 = None if w is None else w.to(dtype).double()
    for fused, value in values.items():
        if fused and not _noise_irrelevant(spec):
            continue  # Philox noise inside the kernels: finiteness only
        if _noise_irrelevant(spec):
            eps = torch.zeros_like(x0c)
        else:
            quiet, _ = _check_finite_kwarg(path.sample_paired, False)
            eps = path.sample_paired(x0c, x1c, tt, return_noise=True, generator=twin, **quiet)[3]
        xt64, ut64, ax, au = _reference(spec["path"], spec["sigma"], x0c, x1c, tt, eps)
        v64 = model(xt64, tt.double()).double()
        # the model is 0.5 x (+ 0.25 t): x_t's rounding times 0.5, plus its own
        vmag = 0.5 * ax + v64.abs() + (0.25 * _pad(tt.double(), x0c) if spec["model"] == "affine" else 0.0)
        want, tol = _loss_bound(v64, ut64, ax, au, w64, dtype, vmag)
        # the loss is stored in the dtype: one more rounding of the result
        tol += _C * _EPS[dtype] * abs(want)
        if not abs(value - want) <= tol:
            return "wrong:value"
    return "correct"


def _check_sample(spec: dict) -> str:
    path = make_path(spec)
    x0, x1, t, _ = _inputs(spec)
    bad = _nonfinite_args(x0=x0, x1=x1, t=t)
    t_out = _t_out_of_range(t)
    fn = path.sample_location_and_conditional_flow
    kw, check_finite = _check_finite_kwarg(fn, spec["check_finite"])
    try:
        tt, xt, ut, eps = fn(x0, x1, t=t, return_noise=True, generator=_gen(spec), **kw)
    except CLEAR_ERRORS as exc:
        return _refusal(exc, spec, bad, t_out, check_finite)
    if t_out:
        return "wrong:t-accepted"
    outputs_finite = all(bool(torch.isfinite(o.double()).all()) for o in (tt, xt, ut, eps))
    if bad:
        if not check_finite:
            return "correct"
        return "nonfinite" if not outputs_finite else "wrong:nan-accepted"
    if not outputs_finite:
        return "correct" if not check_finite and _may_overflow(spec, x0, x1, t, None) else "nonfinite"
    if tt.shape != (x0.shape[0],) or xt.shape != x0.shape or ut.shape != x0.shape or xt.dtype != x0.dtype:
        return "wrong:shape"
    if bool(((tt < 0) | (tt > 1)).any()):
        return "wrong:value"
    x0c, x1c = path.couple(x0, x1, _gen(spec))
    xt64, ut64, ax, au = _reference(spec["path"], spec["sigma"], x0c, x1c, tt, eps)
    if not _close(xt, xt64, ax, x0.dtype):
        return "wrong:value"
    # u_t from the returned x_t (the class's compute_conditional_flow) carries the rounding of x_t
    if not _close(ut, ut64, au + ax, x0.dtype):
        return "wrong:value"
    return "correct"


CHECKS = {"cfm_loss": _check_loss, "cfm_sample": _check_sample}
