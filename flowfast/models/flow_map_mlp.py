"""An MLP for two-time flow maps on vectors: ``v_{s,t}(x)``, with ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)``."""

from __future__ import annotations

import torch
from torch import nn

from flowfast.models.embedding import TimeEmbedding, batch_time

__all__ = ["FlowMapMLP", "ACTIVATIONS"]

# Smooth activations first: flow-map losses differentiate the net in s and t, and a kink (relu)
# makes that derivative jump. relu is allowed for comparisons, not recommended.
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "selu": nn.SELU, "relu": nn.ReLU}


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class FlowMapMLP(nn.Module):
    """The net ``v_{s,t}(x)`` of a flow map ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` on ``R^dim``.

    Convention: x0 = source (noise) at t=0, x1 = data at t=1; ``X_{s,t}`` carries a point at time s
    to time t, and ``v_{t,t}`` is the velocity at time t. This module returns ``v`` only; the
    wrapper that forms ``X`` lives with the flow-map methods.

    Layout: ``h = W_x x + e_s(s) + e_t(t)`` with two separate :class:`TimeEmbedding` (so the net can
    tell s from t, which a function of ``t - s`` alone cannot), then ``depth - 1`` blocks
    ``act -> Linear(hidden, hidden)`` and ``act -> Linear(hidden, dim)``. Summing the three
    projections is the same as one Linear on their concatenation, without building it.

    Args:
        dim: data dimension (input and output size).
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        time_features: sinusoidal features per time embedding (even).
        activation: one of ``ACTIVATIONS`` ("gelu", "silu", "tanh", "selu", "relu").

    ``forward(x, s, t)``: x ``(B, dim)``; s and t each a scalar, ``(B,)`` or ``(B, 1)``, cast to x's
    dtype. Returns ``(B, dim)``. Works under ``torch.func.jvp`` and ``torch.func.grad`` with tangents
    in any of x, s, t.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_features: int = 64,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.hidden = _check_int("hidden", hidden)
        self.depth = _check_int("depth", depth)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.time_features = time_features
        self.embed_s = TimeEmbedding(time_features, out_features=hidden)
        self.embed_t = TimeEmbedding(time_features, out_features=hidden)
        self.embed_x = nn.Linear(dim, hidden)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [ACTIVATIONS[activation](), nn.Linear(hidden, hidden)]
        layers += [ACTIVATIONS[activation](), nn.Linear(hidden, dim)]
        self.net = nn.Sequential(*layers)

    def config(self) -> dict:
        """The constructor arguments (``FlowMapMLP(**net.config())`` rebuilds the architecture)."""
        return {"dim": self.dim, "hidden": self.hidden, "depth": self.depth,
                "time_features": self.time_features, "activation": self.activation}

    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}), got {got}")
        s = batch_time(s, x.shape[0], x, "s")
        t = batch_time(t, x.shape[0], x, "t")
        return self.net(self.embed_x(x) + self.embed_s(s) + self.embed_t(t))
