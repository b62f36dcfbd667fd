r"""Forward-mode derivatives of a flow map, by ``torch.func.jvp`` (one forward pass with tangents).

Only the time argument carries a tangent in :func:`time_derivative`, so the cost is one network
evaluation with a dual number riding along, not a spatial Jacobian. These functions call the
module directly: ``torch.func`` does not accept a DDP-wrapped module (the trainer passes the bare
module to objectives with ``uses_function_transforms`` and all-reduces the gradients itself).
"""

from __future__ import annotations

import torch
from torch.func import jvp

__all__ = ["time_derivative", "start_derivative", "spatial_derivative", "along_characteristic"]


def time_derivative(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor):
    r"""``(X, dX/dt)``: :math:`X_{s,t}(x)` and :math:`\partial_t X_{s,t}(x)`, both ``(B, *shape)``.

    Differentiable in the parameters (reverse-over-forward), as LSD needs."""
    return jvp(lambda time: flow_map.jump(x, s, time), (t,), (torch.ones_like(t),))


def start_derivative(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor):
    r"""``(X, dX/ds)``: :math:`X_{s,t}(x)` and :math:`\partial_s X_{s,t}(x)` (tangent in s only)."""
    return jvp(lambda start: flow_map.jump(x, start, t), (s,), (torch.ones_like(s),))


def spatial_derivative(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`\nabla_x X_{s,t}(x)\,b`, the map's Jacobian applied to ``b`` (tangent in x only)."""
    return jvp(lambda state: flow_map.jump(state, s, t), (x,), (b,))[1]


def along_characteristic(flow_map, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, b: torch.Tensor):
    r"""``(v, dv)``: :math:`v_{s,t}(x)` and its derivative along :math:`(\dot s, \dot x) = (1, b)`,
    :math:`\partial_s v_{s,t}(x) + \nabla_x v_{s,t}(x)\,b` (the Eulerian objectives' augmented JVP)."""
    return jvp(lambda start, state: flow_map.v(state, start, t), (s, x), (torch.ones_like(s), b))
