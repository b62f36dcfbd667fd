"""Exponential moving average of a model's parameters, with a warm-up decay."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """A frozen copy of ``model`` whose parameters follow ``e <- d e + (1 - d) p`` after every step.

    The decay at step ``k`` is ``min(decay, (1 + k) / (10 + k))``: without the warm-up the first
    thousands of averages would be dominated by the initial (random) weights. Buffers are copied,
    not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.model = copy.deepcopy(model).requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in ``model``'s weights after optimizer step number ``step`` (1 for the first)."""
        weight = 1.0 - self.decay_at(step)
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), weight)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
