"""Few-step samplers of categorical flow maps, with classifier-free guidance.

K steps on the uniform grid s_k = k / K, from x0 ~ N(0, I) ``(B, L, V)``:

- ``"map"``:   x <- x + gamma (pi_theta(x; s_k, s_{k+1}) - x)   (the flow map's jumps)
- ``"euler"``: x <- x + gamma (pi_theta(x; s_k, s_k) - x)       (Euler on the diagonal model, the baseline)

gamma = (t - s) / (1 - s) (exact on the grid, not the training clamp of 1 - s, which would stop
the last steps short for K > 20) is 1 on the last step, so the final state is the predicted
endpoint, on the simplex exactly; tokens are its argmax or a draw from it (``readout``). Guidance
(``guidance_weight`` w, a class-conditional model): every evaluation uses the logits
``z_c + w (z_c - z_null)`` (logit-space classifier-free guidance; w = 0 is the conditional
sampler, unguided), from one batched call of 2B rows: NFE counts network rows / B, so a guided
step costs 2.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from flowfast.categorical.flow_map import CategoricalFlowMap

__all__ = ["CategoricalSample", "SAMPLE_METHODS", "READOUTS", "sample", "readout", "check_sampler_inputs",
           "grid_jump", "time_grid"]

SAMPLE_METHODS = ("map", "euler")
READOUTS = ("argmax", "multinomial")


@dataclass
class CategoricalSample:
    """tokens ``(B, L)`` int64; probs ``(B, L, V)`` the final state (the endpoint distribution);
    nfe: network evaluations (per sample); path: the states ``(K + 1, B, L, V)`` if asked for."""

    tokens: torch.Tensor
    probs: torch.Tensor
    nfe: int
    path: Optional[torch.Tensor] = None


def grid_jump(flow_map: CategoricalFlowMap, x, s, t, logits) -> torch.Tensor:
    """One step of a sampler's grid: the jump with the exact gamma = (t - s) / (1 - s) (s < 1 on a grid)."""
    return flow_map.jump(x, s, t, logits, gamma=(t - s) / (1 - s)).x


def check_sampler_inputs(flow_map, x0, steps: int, label, guidance_weight: float) -> None:
    if not isinstance(flow_map, CategoricalFlowMap):
        raise TypeError(f"flow_map must be a CategoricalFlowMap, got {type(flow_map).__name__}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() != 3:
        raise ValueError(f"x0 must be a float (B, L, V) tensor, got {getattr(x0, 'shape', type(x0).__name__)}")
    if x0.shape[-1] != flow_map.vocab:
        raise ValueError(f"x0 has V = {x0.shape[-1]} classes; the flow map has vocab {flow_map.vocab}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(guidance_weight, bool) or not isinstance(guidance_weight, numbers.Real) or not math.isfinite(
            guidance_weight):
        raise ValueError(f"guidance_weight must be a finite number, got {guidance_weight!r}")
    if guidance_weight and label is None:
        raise ValueError("guidance_weight needs label= (the class to condition on)")
    if label is not None:
        if not flow_map.conditional:
            raise ValueError("label= needs a class-conditional network (num_classes set)")
        if not isinstance(label, torch.Tensor) or label.shape != (x0.shape[0],) or label.is_floating_point():
            raise ValueError(f"label must be an int64 ({x0.shape[0]},) tensor, got {getattr(label, 'shape', label)}")
        classes = flow_map.net.num_classes
        if not bool(((label >= 0) & (label <= classes)).all()):
            raise ValueError(f"label must lie in [0, {classes}] ({classes}: the null class), got values from "
                             f"{int(label.min())} to {int(label.max())}")


def time_grid(steps: int, batch: int, like: torch.Tensor):
    """(s, t) ``(B,)`` pairs of the uniform K-step grid, in like's dtype (float32 at least)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    for k in range(steps):
        yield (torch.full((batch,), float(grid[k]), dtype=dtype, device=like.device),
               torch.full((batch,), float(grid[k + 1]), dtype=dtype, device=like.device))


def readout(probs: torch.Tensor, how: str = "argmax", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Tokens ``(B, L)`` from endpoint probabilities ``(B, L, V)``: argmax, or one draw per position."""
    if how not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {how!r}")
    if how == "argmax":
        return probs.argmax(-1)
    flat = probs.reshape(-1, probs.shape[-1]).float().clamp_min(0)
    where = generator.device if generator is not None else flat.device
    return torch.multinomial(flat.to(where), 1, generator=generator).view(probs.shape[:-1]).to(probs.device)


def step_logits(flow_map: CategoricalFlowMap, x, s, t, method: str, label, guidance_weight: float):
    """Logits of one step and its NFE: the map at (s, t), or the diagonal at (s, s)."""
    target = t if method == "map" else s
    if label is not None:
        return flow_map.guided_logits(x, s, target, label, guidance_weight), (2 if guidance_weight else 1)
    return flow_map.logits(x, s, target), 1


@torch.no_grad()
def sample(flow_map: CategoricalFlowMap, x0: torch.Tensor, steps: int = 4, *, method: str = "map",
           label: Optional[torch.Tensor] = None, guidance_weight: float = 0.0, readout_method: str = "argmax",
           generator: Optional[torch.Generator] = None, return_path: bool = False) -> CategoricalSample:
    """K-step sampling (module docstring). ``label`` ``(B,)``: the classes of a conditional model."""
    if method not in SAMPLE_METHODS:
        raise ValueError(f"method must be one of {SAMPLE_METHODS}, got {method!r}")
    check_sampler_inputs(flow_map, x0, steps, label, guidance_weight)
    x, nfe, path = x0, 0, [x0] if return_path else None
    for s, t in time_grid(steps, x0.shape[0], x0):
        logits, cost = step_logits(flow_map, x, s, t, method, label, guidance_weight)
        x = grid_jump(flow_map, x, s, t, logits)
        nfe += cost
        if path is not None:
            path.append(x)
    return CategoricalSample(readout(x, readout_method, generator), x, nfe,
                             torch.stack(path) if path is not None else None)
