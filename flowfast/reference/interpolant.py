"""Pure-torch reference of the `interpolant` family (same contracts as flowfast.ops.interpolant):
the path coefficients, Philox/Box-Muller noise identical to the kernels', x_t and the loss."""

from __future__ import annotations

import math
from typing import Optional

import torch

from flowfast._path_kinds import BRIDGE, BRIDGE_GUARD, TARGET, VP
from flowfast.reference._philox import standard_normal


def path_coeffs(kind: int, t: torch.Tensor, sigma: float):
    """(a, b, c, da, db, dc) with x_t = a x0 + b x1 + c noise and u_t = da x0 + db x1 + dc noise."""
    t = t.double()
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    if kind == BRIDGE:
        s = sigma * torch.sqrt(t * (1 - t))
        k = (1 - 2 * t) / (2 * t * (1 - t) + BRIDGE_GUARD)
        return 1 - t, t, s, -one, one, k * s
    if kind == TARGET:
        return zero, t, 1 - (1 - sigma) * t, zero, one, -(1 - sigma) * one
    if kind == VP:
        cs, sn = torch.cos(math.pi / 2 * t), torch.sin(math.pi / 2 * t)
        return cs, sn, sigma * one, -math.pi / 2 * sn, math.pi / 2 * cs, zero
    return 1 - t, t, sigma * one, -one, one, zero


def noise(seed: int, offset: int, B: int, D: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """The kernels' drawn noise for a (B, D) batch (see :func:`flowfast.reference._philox.standard_normal`)."""
    return standard_normal(seed, offset, B * D, device, dtype).reshape(B, D)


def _terms(x0, x1, t, given_noise, kind, sigma, seed, offset):
    B = x0.shape[0]
    r0, r1 = x0.reshape(B, -1).double(), x1.reshape(B, -1).double()
    e = (given_noise.reshape(B, -1).double() if given_noise is not None
         else noise(seed, offset, B, r0.shape[1], x0.device, x0.dtype).double())
    coeffs = [c[:, None] for c in path_coeffs(kind, t, sigma)]
    return r0, r1, e, coeffs


def sample(x0, x1, t, noise: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int, return_noise: bool):
    r0, r1, e, (a, b, c, _, _, _) = _terms(x0, x1, t, noise, kind, sigma, seed, offset)
    xt = (a * r0 + b * r1 + c * e).to(x0.dtype).reshape(x0.shape)
    return xt, (e.to(x0.dtype).reshape(x0.shape) if return_noise else x0.new_empty(0))


def target(x0, x1, t, noise, kind, sigma, seed, offset) -> torch.Tensor:
    r0, r1, e, (_, _, _, da, db, dc) = _terms(x0, x1, t, noise, kind, sigma, seed, offset)
    return da * r0 + db * r1 + dc * e


def loss(v, x0, x1, t, noise, weight, kind, sigma, seed, offset) -> torch.Tensor:
    """Per-sample w_b * sum_d (v - u_t)^2, differentiable in v by autograd."""
    u = target(x0, x1, t, noise, kind, sigma, seed, offset)
    per_sample = ((v.reshape(v.shape[0], -1).double() - u) ** 2).sum(1)
    if weight is not None:
        per_sample = per_sample * weight.double()
    return per_sample.to(v.dtype)
