r"""Flow maps for 1-4 step sampling: flow map matching and self-distillation.

A :class:`FlowMap` wraps a two-time network ``net(x, s, t)`` as
:math:`X_{s,t}(x) = x + (t - s)\,v_{s,t}(x)`; its diagonal :math:`v_{t,t}` is the velocity, so one
network is both the flow-matching model and the map. Objectives (all with the trainer's
``loss(model, x0, x1, generator)`` protocol and any :mod:`flowfast.couplings` coupling):

| objective | off-diagonal term | teacher |
|---|---|---|
| :class:`FlowMatchingDiagonal` | none (plain flow matching of v_{t,t}) | - |
| :class:`LSD` | Lagrangian self-distillation | the model itself (stop-gradient) |
| :class:`ESD` | Eulerian self-distillation | the model itself |
| :class:`PSD` | progressive self-distillation (midpoint / uniform) | the model itself |
| :class:`LMD` | Lagrangian map distillation | a frozen velocity, e.g. OT-CFM |
| :class:`EMD` | Eulerian map distillation | a frozen velocity |
| :class:`ProgressiveMapDistillation` | progressive flow map matching | Euler teacher, then frozen maps |

Sampling: :func:`sample` composes the map on a uniform or given grid (NFE = steps).

Convention: x0 = source/noise at t=0, x1 = data at t=1.
"""

from flowfast.flowmaps.distillation import EMD, LMD, ProgressiveMapDistillation
from flowfast.flowmaps.flow_map import FlowMap, LossWeight
from flowfast.flowmaps.objective import FlowMapObjective, FlowMatchingDiagonal
from flowfast.flowmaps.sampling import make_grid, sample
from flowfast.flowmaps.self_distillation import ESD, LSD, PSD
from flowfast.flowmaps.times import TwoTimes, sample_times

__all__ = ["FlowMap", "LossWeight", "FlowMapObjective", "FlowMatchingDiagonal", "LSD", "ESD", "PSD", "LMD", "EMD",
           "ProgressiveMapDistillation", "sample", "make_grid", "sample_times", "TwoTimes", "OBJECTIVES",
           "make_objective", "TEACHER_METHODS"]

#: CLI names of the objectives; ``distill`` = LMD, which needs a teacher
OBJECTIVES = {"fm": FlowMatchingDiagonal, "lsd": LSD, "esd": ESD, "psd": PSD, "psd-u": PSD, "distill": LMD,
              "lmd": LMD, "emd": EMD, "pfmm": ProgressiveMapDistillation}

#: the methods that distil a teacher velocity
TEACHER_METHODS = ("distill", "lmd", "emd", "pfmm")
_TEACHER = TEACHER_METHODS


def make_objective(name: str, teacher=None, **kwargs):
    """An objective by CLI name (see :data:`OBJECTIVES`); the distillation ones need ``teacher``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown flow-map method {name!r}; choose one of {sorted(OBJECTIVES)}")
    if name in _TEACHER:
        if teacher is None:
            raise ValueError(f"method {name!r} distils a teacher velocity: pass teacher=")
        return OBJECTIVES[name](teacher, **kwargs)
    if teacher is not None:
        raise ValueError(f"method {name!r} trains without a teacher; teacher= is for {list(_TEACHER)}")
    if name == "psd-u":
        if kwargs.get("gamma", "uniform") != "uniform":
            raise ValueError(f"method 'psd-u' is PSD with gamma='uniform'; got gamma={kwargs['gamma']!r} (use 'psd')")
        kwargs["gamma"] = "uniform"
    return OBJECTIVES[name](**kwargs)
