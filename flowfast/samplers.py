"""ODE samplers for flow models: fixed-step Euler / midpoint / RK4 and adaptive Dormand–Prince 5(4).

A velocity field is called as ``velocity(x, t)`` with ``x`` of shape ``(B, *shape)`` and ``t`` of
shape ``(B,)`` (every sample at the same time), the same convention as :mod:`flowfast.paths`.
Integration runs from ``t0`` (source, default 0) to ``t1`` (data, default 1) under
``torch.no_grad`` unless ``enable_grad=True``. Written in plain torch: CPU and CUDA, any dtype;
float16 / bfloat16 states are integrated in float32 (the velocity still sees the state in its own
dtype), since steps below the 16-bit resolution would otherwise be lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from flowfast._validate import check_finite as check_finite_tensor

__all__ = ["ODEResult", "odeint", "METHODS"]

METHODS = ("euler", "midpoint", "rk4", "dopri5")

# Dormand–Prince 5(4) tableau (FSAL): nodes, stage weights, 5th-order solution, 4th-order embedded.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@dataclass
class ODEResult:
    """x: the state at t1. nfe: velocity evaluations. times / path: the accepted steps (``(K,)``
    and ``(K, B, *shape)``) when ``return_path=True``. n_rejected: rejected adaptive steps."""

    x: torch.Tensor
    nfe: int
    times: Optional[torch.Tensor] = None
    path: Optional[torch.Tensor] = None
    n_rejected: int = 0
    _steps: list = field(default_factory=list, repr=False)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a state of ``dtype`` is integrated in: float32 for 16-bit floats, else itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class _Counted:
    """The velocity with its evaluations counted, called on the state in the caller's dtype and
    returning it in the accumulation dtype."""

    def __init__(self, velocity: Callable, dtype: torch.dtype):
        self.velocity = velocity
        self.dtype = dtype
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        xs = x.to(self.dtype)
        v = self.velocity(xs, torch.full((x.shape[0],), t, dtype=self.dtype, device=x.device))
        if v.shape != x.shape:
            raise ValueError(f"velocity(x, t) returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
        return v.to(x.dtype)


def _fixed_step(f: _Counted, x, t0: float, t1: float, steps: int, method: str, record):
    h = (t1 - t0) / steps
    for k in range(steps):
        t = t0 + k * h
        if method == "euler":
            x = x + h * f(x, t)
        elif method == "midpoint":
            x = x + h * f(x + 0.5 * h * f(x, t), t + 0.5 * h)
        else:  # rk4
            k1 = f(x, t)
            k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
            k4 = f(x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        record(t + h, x)
    return x, 0


# The local error is never asked below this many units in the last place of the state: a
# tolerance under the accumulation dtype's resolution cannot be met and would shrink the step to 0.
_ULP_FLOOR = 4.0


def _error_norm(err: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, atol: float, rtol: float) -> float:
    size = torch.maximum(x.abs(), x_new.abs())
    scale = torch.maximum(atol + rtol * size, _ULP_FLOOR * torch.finfo(x.dtype).eps * size)
    return float(torch.sqrt(torch.mean((err / scale) ** 2)))


def _dopri5(f: _Counted, x, t0: float, t1: float, atol: float, rtol: float, max_steps: int, record):
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    k1 = f(x, t0)
    # Hairer's starting step: h ~ 0.01 * |x| / |f|, capped by the interval.
    d0 = float(torch.sqrt(torch.mean((x / (atol + rtol * x.abs())) ** 2)))
    d1 = float(torch.sqrt(torch.mean((k1 / (atol + rtol * x.abs())) ** 2)))
    h = span if d0 < 1e-5 or d1 < 1e-5 else min(span, 0.01 * d0 / d1)
    t, rejected, steps = t0, 0, 0
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        if steps >= max_steps:
            raise RuntimeError(f"dopri5 did not reach t1 within {max_steps} steps (atol={atol}, rtol={rtol})")
        h = min(h, abs(t1 - t))
        if t + direction * h == t:
            raise RuntimeError(f"dopri5: the step size underflowed at t={t:.17g} (h={h:.3g}); the velocity is "
                               "singular or too stiff there for atol/rtol")
        stages = [k1]
        for i in range(1, 7):
            xi = x + direction * h * sum(a * k for a, k in zip(_DP_A[i], stages) if a != 0.0)
            stages.append(f(xi, t + direction * h * _DP_C[i]))
        x_new = x + direction * h * sum(b * k for b, k in zip(_DP_B5, stages) if b != 0.0)
        err = direction * h * sum((b5 - b4) * k for b5, b4, k in zip(_DP_B5, _DP_B4, stages))
        norm = _error_norm(err, x, x_new, atol, rtol)
        if not math.isfinite(norm):
            raise ValueError("dopri5: the velocity produced NaN/Inf")
        if norm <= 1.0:
            t += direction * h
            x, k1 = x_new, stages[6]  # first-same-as-last
            record(t, x)
            steps += 1
        else:
            rejected += 1
        h *= min(5.0, max(0.2, 0.9 * (norm if norm > 0 else 1e-10) ** (-0.2)))
    return x, rejected


def odeint(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, t0: float = 0.0,
           t1: float = 1.0, method: str = "euler", steps: int = 100, atol: float = 1e-5, rtol: float = 1e-5,
           return_path: bool = False, enable_grad: bool = False, max_steps: int = 100_000,
           check_finite: bool = True) -> ODEResult:
    r"""Integrate :math:`\dot x = v(x, t)` from ``t0`` to ``t1``.

    Args:
        velocity: ``velocity(x, t) -> dx/dt``, x ``(B, *shape)``, t ``(B,)``.
        x0: ``(B, *shape)`` initial state at ``t0``.
        method: ``"euler"``, ``"midpoint"``, ``"rk4"`` (``steps`` fixed steps) or ``"dopri5"``
            (adaptive, ``atol`` / ``rtol`` on the RMS of the scaled local error; the error is
            never asked below 4 ulp of the state in its accumulation dtype, which no step can meet).
        return_path: also return the accepted times and states.
        enable_grad: integrate with autograd on (e.g. to backpropagate through a few-step sampler).
        check_finite: the NaN policy of :mod:`flowfast.paths`: a NaN/Inf ``x0`` is a ValueError, and
            so is a final state that is not finite (the velocity returned NaN/Inf or the solution
            overflowed the dtype): one host read before and one after. False returns whatever comes
            out (dopri5 still stops on a non-finite error estimate, which it reads every step).

    Returns:
        :class:`ODEResult` with the final state and the number of velocity evaluations (NFE):
        euler ``steps``, midpoint ``2 steps``, rk4 ``4 steps``, dopri5 ``1 + 6 (accepted + rejected)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError("x0 must be a floating-point torch.Tensor")
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty (B, *shape) batch, got shape {tuple(x0.shape)}")
    for name, value in (("t0", t0), ("t1", t1), ("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if method != "dopri5" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if method == "dopri5" and not (atol > 0 and rtol >= 0):
        raise ValueError("dopri5 needs atol > 0 and rtol >= 0")
    if check_finite:
        check_finite_tensor("x0", x0)
    f = _Counted(velocity, x0.dtype)
    state = x0.to(accumulation_dtype(x0.dtype))
    times, states = [float(t0)], [x0]

    def record(t, x):
        if return_path:
            times.append(float(t))
            states.append(x.to(x0.dtype))

    with torch.set_grad_enabled(enable_grad):
        if method == "dopri5":
            x, rejected = _dopri5(f, state, float(t0), float(t1), float(atol), float(rtol), max_steps, record)
        else:
            x, rejected = _fixed_step(f, state, float(t0), float(t1), steps, method, record)
    x = x.to(x0.dtype)
    if check_finite and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"odeint ({method}) ended at t1={t1} in a state with NaN/Inf entries although x0 is finite: "
                         f"the velocity returned NaN/Inf or the solution overflowed {str(x0.dtype).replace('torch.', '')}"
                         " (smaller steps, dopri5, or a wider dtype may help)")
    result = ODEResult(x=x, nfe=f.nfe, n_rejected=rejected)
    if return_path:
        result.times = torch.tensor(times, dtype=x0.dtype, device=x0.device)
        result.path = torch.stack(states)
    return result
