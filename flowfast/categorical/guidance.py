"""Reward guidance of categorical flow maps through the look-ahead endpoint.

A reward ``r(probs (B, L, V)) -> (B,)`` (differentiable for the gradient variant) scores the
predicted endpoint pi_theta(x_t; t, 1) = X_{t,1}(x_t), which a flow map gives in one evaluation
at any point of the trajectory. Two samplers on the K-step grid of :mod:`sampling`:

- :func:`gradient_guided_sample`: before each jump, ``x_t <- x_t + scale * grad_x r(pi_theta(x_t; t, 1))``
  (one extra evaluation and its backward per step);
- :func:`smc_sample`: B particles with importance weights for the tilted law
  ``p(x) exp(r(x) / temperature)``: after each jump the look-ahead reward r_k is computed, the log
  weights grow by (r_k - r_{k-1}) / temperature (they telescope to r(final) / temperature), and the
  particles are resampled (multinomial) whenever the effective sample size falls below
  ``resample_below * B``, and once at the end. The jumps are deterministic, so copies made by a
  resampling stay identical until the read-out; ``readout_method="multinomial"`` draws them apart.

This is our instantiation of the paper's "guidance and reweighting through the flow map's
look-ahead" (its code has none; see ../shared/reference §1.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from flowfast.categorical.flow_map import CategoricalFlowMap
from flowfast.categorical.sampling import (CategoricalSample, check_sampler_inputs, grid_jump, readout,
                                           step_logits, time_grid)

__all__ = ["gradient_guided_sample", "smc_sample", "SMCSample"]

Reward = Callable[[torch.Tensor], torch.Tensor]


def _reward(reward: Reward, probs: torch.Tensor) -> torch.Tensor:
    r = reward(probs)
    if not isinstance(r, torch.Tensor) or r.shape != (probs.shape[0],):
        raise ValueError(f"reward must return a ({probs.shape[0]},) tensor, got {getattr(r, 'shape', type(r).__name__)}")
    return r


def _look_ahead(flow_map: CategoricalFlowMap, x, s, label):
    return flow_map.endpoint(x, s, torch.ones_like(s), label)


def gradient_guided_sample(flow_map: CategoricalFlowMap, x0: torch.Tensor, reward: Reward, steps: int = 4, *,
                           scale: float = 1.0, label: Optional[torch.Tensor] = None,
                           readout_method: str = "argmax",
                           generator: Optional[torch.Generator] = None) -> CategoricalSample:
    """K flow-map jumps with a reward-gradient step on x before each (module docstring)."""
    check_sampler_inputs(flow_map, x0, steps, label, 0.0)
    x, nfe = x0.detach(), 0
    for s, t in time_grid(steps, x0.shape[0], x0):
        if scale:
            with torch.enable_grad():
                xg = x.detach().requires_grad_()
                r = _reward(reward, _look_ahead(flow_map, xg, s, label))
                (grad,) = torch.autograd.grad(r.sum(), xg)
            x = (x + float(scale) * grad).detach()
            nfe += 1
        with torch.no_grad():
            logits, cost = step_logits(flow_map, x, s, t, "map", label, 0.0)
            x = grid_jump(flow_map, x, s, t, logits)
        nfe += cost
    return CategoricalSample(readout(x, readout_method, generator), x, nfe)


@dataclass
class SMCSample(CategoricalSample):
    """Also: ``ess`` the effective sample size after each step (before any resampling) and
    ``resamplings`` how many times the particles were resampled."""

    ess: Optional[list] = None
    resamplings: int = 0


def _ess(log_w: torch.Tensor) -> float:
    w = torch.softmax(log_w, 0)
    return float(1.0 / (w * w).sum())


@torch.no_grad()
def smc_sample(flow_map: CategoricalFlowMap, x0: torch.Tensor, reward: Reward, steps: int = 4, *,
               temperature: float = 1.0, resample_below: float = 0.5, label: Optional[torch.Tensor] = None,
               readout_method: str = "argmax", generator: Optional[torch.Generator] = None) -> SMCSample:
    """Sequential Monte Carlo over the B rows of x0 as particles (module docstring)."""
    check_sampler_inputs(flow_map, x0, steps, label, 0.0)
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= float(resample_below) <= 1.0:
        raise ValueError(f"resample_below must lie in [0, 1], got {resample_below!r}")
    B = x0.shape[0]
    x, nfe, resamplings, ess_log = x0, 0, 0, []
    log_w = torch.zeros(B, dtype=torch.float64, device=x0.device)
    previous = torch.zeros(B, dtype=torch.float64, device=x0.device)

    def resample():
        nonlocal x, previous, log_w, label, resamplings
        where = generator.device if generator is not None else log_w.device
        index = torch.multinomial(torch.softmax(log_w, 0).to(where), B, replacement=True,
                                  generator=generator).to(x.device)
        x, previous = x[index], previous[index]
        label = None if label is None else label[index]
        log_w = torch.zeros_like(log_w)
        resamplings += 1

    for s, t in time_grid(steps, B, x0):
        logits, cost = step_logits(flow_map, x, s, t, "map", label, 0.0)
        x = grid_jump(flow_map, x, s, t, logits)
        nfe += cost
        last = bool(t[0] >= 1)
        probs = x if last else _look_ahead(flow_map, x, t, label)
        nfe += 0 if last else 1
        current = _reward(reward, probs).double()
        log_w = log_w + (current - previous) / float(temperature)
        previous = current
        ess_log.append(_ess(log_w))
        if last or ess_log[-1] < float(resample_below) * B:
            resample()
    return SMCSample(readout(x, readout_method, generator), x, nfe, None, ess_log, resamplings)
