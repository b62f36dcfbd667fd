r"""What every flow-map objective shares: the interpolant and its coupling, the two-time draw, the
diagonal flow-matching term, the learned loss weight and few-step sampling.

A batch of B pairs is coupled, then split: ``round(eta B)`` rows train the diagonal
:math:`\|v_{t,t}(I_t) - \dot I_t\|^2` (flow matching: the map's tangent is the velocity), the rest
the objective's off-diagonal term on :math:`0 \le s < t \le 1`. Each row's loss is the mean over
its entries; with a learned weight :math:`w_{s,t}` it becomes :math:`e^{-w} L + w`. The batch
mean is the loss (so it is the :math:`\eta`-mixture of the two terms, as the paper's
:math:`p_{s,t}`).

Objectives follow the trainer's protocol (``flowfast.train``): ``loss(model, x0, x1, generator)``,
``couple``, ``sample``, and ``uses_function_transforms`` (they run ``torch.func.jvp`` on the bare
module).
"""

from __future__ import annotations

import abc
import copy
from typing import Optional

import torch

from flowfast import ops, paths
from flowfast.couplings.coupling import as_coupling
from flowfast.flowmaps.flow_map import FlowMap
from flowfast.flowmaps.sampling import sample as sample_map
from flowfast.flowmaps.times import check_fraction, check_max_gap, sample_times
from flowfast.samplers import METHODS, ODEResult, odeint

__all__ = ["FlowMapObjective", "FlowMatchingDiagonal", "as_flow_map", "per_sample_mse"]


def as_flow_map(model) -> FlowMap:
    if isinstance(model, FlowMap):
        return model
    inner = getattr(model, "module", None)  # a DDP / DataParallel wrapper
    if isinstance(inner, FlowMap):
        return inner
    raise TypeError(f"model must be a flowfast.flowmaps.FlowMap (wrap your net(x, s, t): FlowMap(net)), "
                    f"got {type(model).__name__}")


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B,)``: the mean squared difference of each row."""
    return (a - b).square().flatten(1).mean(1)


class FlowMapObjective(abc.ABC):
    r"""Base of the flow-map objectives: subclasses implement :meth:`off_diagonal`.

    Args:
        interpolant: a :mod:`flowfast.paths` object giving :math:`I_t` and :math:`\dot I_t`
            (default the straight path :math:`(1-t)x_0 + t x_1` without noise,
            ``paths.IndependentCFM(sigma=0)``).
        coupling: how a batch is paired (``"independent"``, ``"exact"``, ``"sinkhorn"`` or any
            :class:`flowfast.couplings.Coupling`); default: the interpolant's own.
        diagonal_fraction: :math:`\eta`, the share of each batch on s = t (0.75 in the paper).
        max_gap: optional cap on t - s for the off-diagonal rows (a curriculum).
    """

    #: the loss calls torch.func transforms on the model: under DDP the trainer passes the bare
    #: module and averages the gradients itself
    uses_function_transforms = True
    #: sampling methods besides the ODE solvers of flowfast.samplers
    MAP_METHOD = "map"
    #: what Trainer.sample / evaluate and the CLI use when no method is given: 4 jumps of the map
    default_sampler = ("map", 4)

    def __init__(self, interpolant=None, *, coupling=None, diagonal_fraction: float = 0.75,
                 max_gap: Optional[float] = None) -> None:
        if interpolant is None:
            interpolant = paths.IndependentCFM(sigma=0.0)
        if not callable(getattr(interpolant, "sample_xt", None)) or not callable(getattr(interpolant, "couple", None)):
            raise TypeError(f"interpolant must be a flowfast.paths object, got {type(interpolant).__name__}")
        if coupling is not None:
            interpolant = copy.copy(interpolant)
            interpolant.coupling = as_coupling(coupling)
        self.interpolant = interpolant
        self.diagonal_fraction = check_fraction(diagonal_fraction)
        self.max_gap = check_max_gap(max_gap)

    @property
    def coupling(self):
        return self.interpolant.coupling

    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        return self.interpolant.couple(x0, x1, generator)

    # --- the loss --------------------------------------------------------------------------------
    def loss(self, model, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The batch loss (a scalar): couple, draw (s, t), diagonal + off-diagonal terms, weight.

        Args:
            model: the :class:`FlowMap` being trained.
            x0, x1: ``(B, *shape)`` source (t=0) and data (t=1) batches of one float dtype and device.
            generator: every random draw of the step (coupling, times, path noise).
        """
        flow_map = as_flow_map(model)
        ops.interpolant.validate_batches(x0, x1)
        x0, x1 = self.couple(x0, x1, generator)
        times = sample_times(x0.shape[0], self.diagonal_fraction, generator=generator, dtype=x0.dtype,
                             device=x0.device, max_gap=self.max_gap)
        n = times.n_diagonal
        parts = []
        if n > 0:
            parts.append(self.diagonal(flow_map, x0[:n], x1[:n], times.t[:n], generator))
        if n < x0.shape[0]:
            parts.append(self.off_diagonal(flow_map, x0[n:], x1[n:], times.s[n:], times.t[n:], generator))
        per_sample = torch.cat(parts) if len(parts) > 1 else parts[0]
        log_weight = flow_map.weight(times.s, times.t)
        if log_weight is None:
            return per_sample.mean()
        return (torch.exp(-log_weight) * per_sample + log_weight).mean()

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                    generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(I_t, \dot I_t)`` of the interpolant for paired rows (no coupling, no host read)."""
        path = self.interpolant
        if path.kernel_path == "linear" and path.sigma == 0:
            noise = torch.zeros_like(x0)  # the straight path without noise: skip the normal draws
        else:
            noise = path.sample_noise_like(x0, generator)
        xt = path.sample_xt(x0, x1, t, noise)
        return xt, path.conditional_flow_from_noise(x0, x1, t, xt, noise)

    def diagonal(self, flow_map: FlowMap, x0, x1, t, generator) -> torch.Tensor:
        r"""``(n,)``: flow matching on the diagonal, :math:`\|v_{t,t}(I_t) - \text{target}\|^2`."""
        xt, ut = self.interpolate(x0, x1, t, generator)
        return per_sample_mse(flow_map.v(xt, t, t), self.diagonal_target(xt, t, ut))

    def diagonal_target(self, xt: torch.Tensor, t: torch.Tensor, ut: torch.Tensor) -> torch.Tensor:
        """What v_{t,t}(I_t) regresses on: the interpolant's velocity (distillation: the teacher's)."""
        return ut

    @abc.abstractmethod
    def off_diagonal(self, flow_map: FlowMap, x0, x1, s, t, generator) -> torch.Tensor:
        """``(m,)``: the objective's term for rows with s < t."""

    # --- sampling -------------------------------------------------------------------------------
    def sample(self, model, x0: torch.Tensor, *, steps: int = 4, method: str = "map", atol: float = 1e-5,
               rtol: float = 1e-5, return_path: bool = False, grid=None) -> ODEResult:
        """``method="map"``: compose the map on ``steps`` uniform jumps (or ``grid``); an ODE method
        (``euler``, ``midpoint``, ``rk4``, ``dopri5``) integrates the diagonal velocity v_{t,t}."""
        flow_map = as_flow_map(model)
        if method == self.MAP_METHOD:
            return sample_map(flow_map, x0, steps=None if grid is not None else steps, grid=grid,
                              return_path=return_path)
        if method not in METHODS:
            raise ValueError(f"method must be 'map' or one of {METHODS}, got {method!r}")
        return odeint(flow_map.velocity, x0, method=method, steps=steps, atol=atol, rtol=rtol,
                      return_path=return_path)


class FlowMatchingDiagonal(FlowMapObjective):
    """Only the diagonal term (plain flow matching of v_{t,t}; the map off the diagonal is not
    trained): the baseline the self-distillation objectives add to. It samples by an ODE on v_{t,t}
    by default, since its jumps are untrained."""

    default_sampler = ("euler", 100)

    def off_diagonal(self, flow_map: FlowMap, x0, x1, s, t, generator) -> torch.Tensor:
        # diagonal_fraction is 1, so no row lands here; were one to, it trains the velocity at t
        return self.diagonal(flow_map, x0, x1, t, generator)

    def __init__(self, interpolant=None, *, coupling=None) -> None:
        super().__init__(interpolant, coupling=coupling, diagonal_fraction=1.0)
