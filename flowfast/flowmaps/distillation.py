r"""Distilling a flow map from a frozen teacher velocity :math:`\hat b_t(x)` (e.g. a trained
OT-CFM model; Boffi et al. 2024, restated in 2025 App. B).

- :class:`LMD` (Lagrangian map distillation, semigradient):
  :math:`\|\partial_t X_{s,t}(I_s) - \hat b_t(\mathrm{sg} X_{s,t}(I_s))\|^2`.
- :class:`EMD` (Eulerian map distillation, semigradient):
  :math:`\|\partial_s X_{s,t}(I_s) + \mathrm{sg}(\nabla X_{s,t}(I_s)\,\hat b_s(I_s))\|^2`
  (:func:`flowfast.flowmaps.self_distillation.eulerian_residual`; ``stop_gradient="target"`` for
  MeanFlow's placement).
- :class:`ProgressiveMapDistillation` (progressive flow map matching): the map on gaps up to 2 tau
  matches two jumps of a frozen map valid up to tau; tau doubles every ``stage_steps`` steps, the
  first frozen map being one Euler step of the teacher.

On the diagonal all three regress :math:`v_{t,t}(I_t)` on :math:`\hat b_t(I_t)` (the teacher's
velocity, a lower-variance target than :math:`\dot I_t`). The teacher is called as
``teacher(x, t)`` under ``torch.no_grad`` and must live on the batch's device; it is not part of
the checkpoint (rebuild it when resuming).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

from flowfast.flowmaps.objective import FlowMapObjective, as_flow_map, per_sample_mse
from flowfast.flowmaps.self_distillation import check_stop_gradient, eulerian_residual, lagrangian_residual
from flowfast.paths import pad_t_like_x

__all__ = ["LMD", "EMD", "ProgressiveMapDistillation"]


class _TeacherObjective(FlowMapObjective):
    """A flow-map objective with a frozen teacher velocity ``teacher(x, t)``."""

    def __init__(self, teacher: Callable, interpolant=None, *, coupling=None, diagonal_fraction: float = 0.75,
                 max_gap: Optional[float] = None) -> None:
        if not callable(teacher):
            raise TypeError(f"teacher must be a velocity callable teacher(x, t), got {type(teacher).__name__}")
        super().__init__(interpolant, coupling=coupling, diagonal_fraction=diagonal_fraction, max_gap=max_gap)
        self.teacher = teacher

    def teacher_velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        owner = getattr(self.teacher, "__self__", self.teacher)  # a bound method such as FlowMap.velocity
        if isinstance(owner, nn.Module):
            param = next(owner.parameters(), None)
            if param is not None and param.device != x.device:
                raise ValueError(f"the teacher is on {param.device} but the batch is on {x.device}: "
                                 "move it with teacher.to(device)")
            if param is not None and param.dtype != x.dtype:
                raise TypeError(f"the teacher's weights are {str(param.dtype).replace('torch.', '')} but the batch "
                                f"is {str(x.dtype).replace('torch.', '')}: convert one (e.g. teacher.to(dtype))")
        with torch.no_grad():
            b = self.teacher(x, t)
        if not isinstance(b, torch.Tensor) or b.shape != x.shape:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"teacher(x, t) returned {got}, expected x's shape {tuple(x.shape)}")
        return b.to(x.dtype)

    def diagonal_target(self, xt, t, ut):
        return self.teacher_velocity(xt, t)


class LMD(_TeacherObjective):
    """Lagrangian map distillation from ``teacher(x, t)`` (other arguments as
    :class:`flowfast.flowmaps.FlowMapObjective`)."""

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        return lagrangian_residual(flow_map, xs, s, t, self.teacher_velocity)


class EMD(_TeacherObjective):
    """Eulerian map distillation from ``teacher(x, t)`` (semigradient; ``stop_gradient`` as :class:`ESD`)."""

    def __init__(self, teacher: Callable, interpolant=None, *, stop_gradient: str = "paper", coupling=None,
                 diagonal_fraction: float = 0.75, max_gap: Optional[float] = None) -> None:
        super().__init__(teacher, interpolant, coupling=coupling, diagonal_fraction=diagonal_fraction,
                         max_gap=max_gap)
        self.stop_gradient = check_stop_gradient(stop_gradient)

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        return eulerian_residual(flow_map, xs, s, t, self.teacher_velocity(xs, s), self.stop_gradient)


class ProgressiveMapDistillation(_TeacherObjective):
    r"""Progressive flow map matching: stage k trains gaps :math:`t - s \le 2\tau_k`,
    :math:`\tau_k = 2^k\,\tau_0`, on :math:`\|v_{s,t}(I_s) - \mathrm{sg}((\check X_{u,t}(\check X_{s,u}(I_s)) - I_s)/(t-s))\|^2`
    with the midpoint u; :math:`\check X` is one Euler step of the teacher at stage 0, afterwards
    a frozen copy of the map taken at the end of the previous stage.

    Args:
        teacher: the velocity ``teacher(x, t)``.
        stage_steps: optimizer steps per stage (the trainer calls :meth:`after_step`).
        first_gap: :math:`\tau_0`; stages stop doubling once :math:`2\tau_k \ge 1`.
        other arguments: as :class:`flowfast.flowmaps.FlowMapObjective` (``max_gap`` is the stage's).
    """

    def __init__(self, teacher: Callable, interpolant=None, *, stage_steps: int = 1000, first_gap: float = 1 / 64,
                 coupling=None, diagonal_fraction: float = 0.75) -> None:
        if isinstance(stage_steps, bool) or not isinstance(stage_steps, int) or stage_steps < 1:
            raise ValueError(f"stage_steps must be an int >= 1, got {stage_steps!r}")
        if isinstance(first_gap, bool) or not isinstance(first_gap, (int, float)) or not 0 < first_gap <= 0.5:
            raise ValueError(f"first_gap must be a number in (0, 0.5], got {first_gap!r}")
        super().__init__(teacher, interpolant, coupling=coupling, diagonal_fraction=diagonal_fraction)
        self.stage_steps, self.first_gap = stage_steps, float(first_gap)
        self.stage = 0
        self._frozen: Optional[nn.Module] = None
        self._pending_state: Optional[dict] = None

    @property
    def gap(self) -> float:
        """The largest t - s trained at the current stage."""
        return min(1.0, 2.0 * self.first_gap * 2.0**self.stage)

    def loss(self, model, x0, x1, generator=None):
        self.max_gap = self.gap
        return super().loss(model, x0, x1, generator)

    def _frozen_map(self, flow_map):
        if self._pending_state is not None:  # restored from a checkpoint: rebuild with the model's shape
            self._frozen = copy.deepcopy(flow_map).requires_grad_(False)
            self._frozen.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._frozen

    def _frozen_velocity(self, flow_map, x, s, t):
        """v of the frozen map over [s, t]: the teacher's b_s(x) (one Euler step) at stage 0."""
        frozen = self._frozen_map(flow_map)
        return self.teacher_velocity(x, s) if frozen is None else frozen.v(x, s, t)

    def off_diagonal(self, flow_map, x0, x1, s, t, generator) -> torch.Tensor:
        xs, _ = self.interpolate(x0, x1, s, generator)
        u = 0.5 * (s + t)
        with torch.no_grad():
            # (X(u,t)(X(s,u)(x)) - x) / (t - s) written as the mean of the two jumps' velocities: no
            # 0/0 when a 16-bit draw gives s == t, no cancellation for tiny gaps
            first = self._frozen_velocity(flow_map, xs, s, u)
            midway = xs + pad_t_like_x(u - s, xs) * first
            target = 0.5 * (first + self._frozen_velocity(flow_map, midway, u, t))
        return per_sample_mse(flow_map.v(xs, s, t), target)

    # --- the trainer's hooks --------------------------------------------------------------------
    def after_step(self, model, step: int) -> None:
        """At the end of each stage, freeze the current map as the next stage's teacher."""
        if step % self.stage_steps != 0 or self.gap >= 1.0:
            return
        self._frozen = copy.deepcopy(as_flow_map(model)).requires_grad_(False)
        self._pending_state = None
        self.stage += 1

    def state_dict(self) -> dict:
        frozen = self._pending_state if self._pending_state is not None else (
            None if self._frozen is None else self._frozen.state_dict())
        return {"stage": self.stage, "frozen": frozen}

    def load_state_dict(self, state: dict) -> None:
        self.stage = int(state["stage"])
        self._frozen, self._pending_state = None, state.get("frozen")
