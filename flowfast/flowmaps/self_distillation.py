r"""Self-distillation of a flow map (Boffi, Albergo, Vanden-Eijnden 2025, "How to build a
consistency model"): the diagonal trains the velocity, the off-diagonal term makes the map
consistent with it, teacher = the model itself at its current weights under stop-gradient.

With :math:`X_{s,t}(x) = x + (t-s)v_{s,t}(x)`, rows with s < t, :math:`x = I_s`, sg = stop-gradient:

- :class:`LSD` (Lagrangian): :math:`\|\partial_t X_{s,t}(x) - \mathrm{sg}(v_{t,t}(X_{s,t}(x)))\|^2`;
  the time derivative by forward mode through t, the landing point detached.
- :class:`ESD` (Eulerian): :math:`\|\partial_s X_{s,t}(x) + \mathrm{sg}(\nabla X_{s,t}(x)\,b)\|^2` with
  :math:`b = \mathrm{sg}(v_{s,s}(x))` (``stop_gradient="paper"``, the official "convex" placement):
  the gradient flows through the s-derivative (reverse over a JVP in s) and never back through the
  spatial JVP, which the paper found to blow up. ``stop_gradient="target"`` is the MeanFlow
  update instead: one augmented JVP along :math:`(1, b)` gives :math:`dv = \partial_s v + \nabla v\,b`,
  the residual (same value) is :math:`v - \mathrm{sg}(b + (t-s)dv)` and only v carries a gradient
  (cheaper: one JVP, no reverse pass through it).
- :class:`PSD` (progressive): with :math:`u = \gamma s + (1-\gamma) t`,
  :math:`\|v_{s,t}(x) - \mathrm{sg}((1-\gamma)v_{s,u}(x) + \gamma v_{u,t}(X_{s,u}(x)))\|^2`
  (the preconditioned form, without the (t-s)^2 factor); ``gamma="midpoint"`` (PSD-M, gamma = 1/2)
  or ``"uniform"`` (PSD-U, gamma ~ U[0, 1]).
"""

from __future__ import annotations

from typing import Optional

import torch

from flowfast._rng import generator_device

from flowfast.flowmaps.derivatives import along_characteristic, spatial_derivative, start_derivative, time_derivative
from flowfast.flowmaps.objective import FlowMapObjective, per_sample_mse
from flowfast.paths import pad_t_like_x

__all__ = ["LSD", "ESD", "PSD", "lagrangian_residual", "eulerian_residual", "STOP_GRADIENTS"]


def lagrangian_residual(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, velocity) -> torch.Tensor:
    r"""``(m,)``: :math:`\|\partial_t X_{s,t}(x) - \mathrm{sg}(b_t(\mathrm{sg} X_{s,t}(x)))\|^2`, ``velocity`` = b."""
    landing, rate = time_derivative(flow_map, x, s, t)
    with torch.no_grad():
        target = velocity(landing.detach(), t)
    return per_sample_mse(rate, target)


STOP_GRADIENTS = ("paper", "target")


def check_stop_gradient(value: str) -> str:
    if value not in STOP_GRADIENTS:
        raise ValueError(f"stop_gradient must be one of {STOP_GRADIENTS}, got {value!r}")
    return value


def eulerian_residual(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, b: torch.Tensor,
                      stop_gradient: str = "paper") -> torch.Tensor:
    r"""``(m,)``: :math:`\|\partial_s X_{s,t}(x) + \nabla X_{s,t}(x)\,b\|^2` for a detached drift ``b``
    at (x, s), with the gradient through :math:`\partial_s X` only (``"paper"``) or through v only
    (``"target"``: :math:`\|v - \mathrm{sg}(b + (t-s)(\partial_s v + \nabla v\,b))\|^2`, the same value)."""
    if stop_gradient == "paper":
        _, rate = start_derivative(flow_map, x, s, t)
        with torch.no_grad():
            transport = spatial_derivative(flow_map, x, s, t, b)
        return per_sample_mse(rate, -transport)
    v, dv = along_characteristic(flow_map, x, s, t, b)
    target = (b + pad_t_like_x(t - s, x) * dv).detach()
    return per_sample_mse(v, target)


class LSD(FlowMapObjective):
    """Lagrangian self-distillation, the paper's best method at every step count (see the module
    docstring; arguments as :class:`flowfast.flowmaps.FlowMapObjective`)."""

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        return lagrangian_residual(flow_map, xs, s, t, lambda x, time: flow_map.v(x, time, time))


class ESD(FlowMapObjective):
    """Eulerian self-distillation (semigradient; see the module docstring). The paper found it
    unstable on images: prefer :class:`LSD` there.

    Args:
        stop_gradient: ``"paper"`` (default) or ``"target"`` (MeanFlow's form), see the module docstring.
        other arguments: as :class:`flowfast.flowmaps.FlowMapObjective`.
    """

    def __init__(self, interpolant=None, *, stop_gradient: str = "paper", coupling=None,
                 diagonal_fraction: float = 0.75, max_gap: Optional[float] = None) -> None:
        super().__init__(interpolant, coupling=coupling, diagonal_fraction=diagonal_fraction, max_gap=max_gap)
        self.stop_gradient = check_stop_gradient(stop_gradient)

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        with torch.no_grad():
            b = flow_map.v(xs, s, s)
        return eulerian_residual(flow_map, xs, s, t, b, self.stop_gradient)


class PSD(FlowMapObjective):
    """Progressive self-distillation: the map over [s, t] matches two detached half-jumps through u.

    Args:
        gamma: ``"midpoint"`` (PSD-M), ``"uniform"`` (PSD-U) or a number in (0, 1).
        other arguments: as :class:`flowfast.flowmaps.FlowMapObjective`.
    """

    def __init__(self, interpolant=None, *, gamma="midpoint", coupling=None, diagonal_fraction: float = 0.75,
                 max_gap: Optional[float] = None) -> None:
        super().__init__(interpolant, coupling=coupling, diagonal_fraction=diagonal_fraction, max_gap=max_gap)
        if gamma not in ("midpoint", "uniform") and (
                isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < 1):
            raise ValueError(f"gamma must be 'midpoint', 'uniform' or a number in (0, 1), got {gamma!r}")
        self.gamma = gamma

    def _gamma(self, s: torch.Tensor, generator) -> torch.Tensor:
        if self.gamma == "uniform":
            return torch.rand(s.shape[0], generator=generator, dtype=s.dtype,
                              device=generator_device(generator)).to(s.device)
        return torch.full_like(s, 0.5 if self.gamma == "midpoint" else float(self.gamma))

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        gamma = self._gamma(s, generator)
        u = gamma * s + (1 - gamma) * t
        with torch.no_grad():
            first = flow_map.v(xs, s, u)
            midway = xs + pad_t_like_x(u - s, xs) * first
            target = pad_t_like_x(1 - gamma, xs) * first + pad_t_like_x(gamma, xs) * flow_map.v(midway, u, t)
        return per_sample_mse(flow_map.v(xs, s, t), target)
