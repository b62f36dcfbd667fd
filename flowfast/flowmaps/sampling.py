"""Few-step sampling with a flow map: compose :math:`x_{k+1} = X_{t_k, t_{k+1}}(x_k)` on a grid."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from flowfast.flowmaps.flow_map import FlowMap, _check_state
from flowfast.samplers import ODEResult

__all__ = ["sample", "make_grid"]


def make_grid(steps: Optional[int] = None, grid: "Sequence[float] | torch.Tensor | None" = None) -> list[float]:
    """The times of a K-step composition: ``steps`` = K gives the uniform grid k/K, or ``grid`` an
    explicit strictly increasing sequence in [0, 1] with at least two points (exactly one of the two)."""
    if (steps is None) == (grid is None):
        raise ValueError("give exactly one of steps (an int >= 1) or grid (increasing times in [0, 1])")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        return [k / steps for k in range(steps + 1)]
    if isinstance(grid, torch.Tensor):
        if grid.dim() != 1:
            raise ValueError(f"grid must be 1-D, got shape {tuple(grid.shape)}")
        grid = grid.detach().cpu().double().tolist()
    try:
        times = [float(value) for value in grid]
    except (TypeError, ValueError):
        raise TypeError(f"grid must be a sequence of numbers, got {type(grid).__name__}") from None
    if len(times) < 2:
        raise ValueError(f"grid needs at least two times (start and end), got {len(times)}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in times):
        raise ValueError(f"grid times must be finite and in [0, 1], got {times}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"grid must be strictly increasing, got {times}")
    return times


def sample(flow_map: FlowMap, x0: torch.Tensor, steps: Optional[int] = None, grid=None,
           return_path: bool = False, enable_grad: bool = False) -> ODEResult:
    r"""Transport x0 along the flow map in ``len(grid) - 1`` jumps (1 step = :math:`X_{0,1}(x_0)`).

    Args:
        flow_map: a :class:`FlowMap` (anything with ``jump(x, s, t)``).
        x0: ``(B, *shape)`` source samples at ``grid[0]`` (t = 0 for the uniform grid).
        steps / grid: K uniform steps, or explicit increasing times (see :func:`make_grid`).
        return_path: also return the grid and the states ``(K + 1, B, *shape)``.
        enable_grad: keep autograd on (e.g. to backpropagate through a few-step sampler).

    Returns:
        :class:`flowfast.samplers.ODEResult` with ``nfe`` = K network evaluations.
    """
    if not callable(getattr(flow_map, "jump", None)):
        raise TypeError(f"flow_map must be a flowfast.flowmaps.FlowMap, got {type(flow_map).__name__}")
    x = _check_state(x0)
    times = make_grid(steps, grid)
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError("x0 contains NaN/Inf; all entries must be finite")
    states = [x]
    with torch.set_grad_enabled(enable_grad):
        for start, end in zip(times, times[1:]):
            s = torch.full((x.shape[0],), start, dtype=x.dtype, device=x.device)
            t = torch.full((x.shape[0],), end, dtype=x.dtype, device=x.device)
            x = flow_map.jump(x, s, t)
            if return_path:
                states.append(x)
    result = ODEResult(x=x, nfe=len(times) - 1)
    if return_path:
        result.times = torch.tensor(times, dtype=x0.dtype, device=x0.device)
        result.path = torch.stack(states)
    return result
