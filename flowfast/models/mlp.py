"""The 2D velocity MLP (torchcfm's 2D ``MLP``: SELU, input ``concat(x, t)``)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Velocity net ``v(x, t)``: ``depth`` hidden layers of width ``hidden`` with SELU, on ``concat(x, t)``.

    With the defaults (``hidden=64, depth=3``) this is torchcfm's ``MLP(dim, w=64, time_varying=True)``:
    ``Linear(dim+1, 64) SELU Linear(64, 64) SELU Linear(64, 64) SELU Linear(64, dim)``.

    Args:
        dim: data dimension (input and output size).
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        time_embedding: append ``t`` to the input (False: the net ignores ``t``, e.g. for a fixed map).
        sample_shape: samples of this shape (e.g. ``(1, 8, 8)`` images, ``prod == dim``) are flattened in
            and reshaped out; None: ``(B, dim)`` vectors.

    ``forward(x, t)``: x ``(B, dim)``; t ``(B,)``, ``(B, 1)`` or a scalar. Returns ``(B, dim)``.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3, time_embedding: bool = True,
                 sample_shape=None) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if sample_shape is not None:
            sample_shape = tuple(sample_shape)
            if not sample_shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sample_shape) \
                    or math.prod(sample_shape) != dim:
                raise ValueError(f"sample_shape must be positive ints whose product is dim={dim}, got {sample_shape!r}")
        self.sample_shape = sample_shape
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.time_embedding = bool(time_embedding)
        layers: list[nn.Module] = []
        width = dim + (1 if self.time_embedding else 0)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SELU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict:
        """The constructor arguments (saved in checkpoints so the CLI can rebuild the net)."""
        config = {"dim": self.dim, "hidden": self.hidden, "depth": self.depth, "time_embedding": self.time_embedding}
        if self.sample_shape is not None:
            config["sample_shape"] = list(self.sample_shape)
        return config

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        if self.sample_shape is not None:
            if tuple(x.shape[1:]) != self.sample_shape:
                raise ValueError(f"x must have shape (B, {', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
            return self._vector_forward(x.flatten(1), t).view(x.shape)
        return self._vector_forward(x, t)

    def _vector_forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if not self.time_embedding:
            return self.net(x)
        if t is None:
            raise ValueError("this MLP has time_embedding=True: forward(x, t) needs t")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        t = t.reshape(-1)
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be a scalar or have {x.shape[0]} entries, got shape {tuple(t.shape)}")
        return self.net(torch.cat([x, t[:, None]], dim=-1))
