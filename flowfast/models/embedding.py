"""Smooth time embeddings for networks conditioned on times in [0, 1].

Flow-map losses differentiate the network in time (``torch.func.jvp`` with a tangent in s or t), so
the embedding is built from smooth pieces only: fixed sinusoids of ``t`` followed by a
``Linear -> SiLU -> Linear`` MLP. Its derivative in t is exact under forward-mode AD and matches a
finite difference (``tests/test_models.py``).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__ = ["TimeEmbedding", "batch_time"]


def batch_time(t, batch: int, like: torch.Tensor, name: str = "t") -> torch.Tensor:
    """A time given as a Python number, a 0-d tensor, ``(B,)`` or ``(B, 1)`` as a ``(B,)`` tensor
    with ``like``'s dtype and device (a scalar is broadcast to all ``batch`` rows).

    Only shapes are checked, never values: a value check would read the tensor back to the host,
    which synchronizes on CUDA and breaks ``torch.compile`` graphs.

    Raises:
        TypeError: ``t`` is None, a bool, or not a number/tensor.
        ValueError: ``t`` has the wrong number of entries or dimensions.
    """
    if t is None:
        raise TypeError(f"{name} is required (a number, or a tensor of shape ({batch},) or ({batch}, 1))")
    if isinstance(t, bool) or (isinstance(t, torch.Tensor) and t.dtype == torch.bool):
        raise TypeError(f"{name} must be a number or a float tensor, got a bool")
    if isinstance(t, numbers.Real):  # Python and numpy scalars
        return torch.full((batch,), float(t), dtype=like.dtype, device=like.device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a number or a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    t = t.to(dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.dim() > 2 or (t.dim() == 2 and t.shape[1] != 1):
        raise ValueError(f"{name} must be a scalar, ({batch},) or ({batch}, 1), got shape {tuple(t.shape)}")
    if t.shape[0] != batch:
        raise ValueError(f"{name} must be a scalar or have {batch} entries (one per row of x), "
                         f"got shape {tuple(t.shape)}")
    return t.reshape(batch)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a time ``t`` in [0, 1], then ``Linear -> SiLU -> Linear``.

    The fixed features are ``sin(w_k t), cos(w_k t)`` for ``features // 2`` angular frequencies
    ``w_k = 2 pi / p_k``, periods ``p_k`` log-spaced from ``max_period`` down to ``min_period``
    (in units of t). The defaults (8 down to 1/16) keep the slowest pair monotone over [0, 1], so
    the net sees t almost linearly, and the fastest at |w| ~ 100, which resolves times about
    0.01 apart without making d/dt of the embedding (hence of the flow map) needlessly large.
    Diffusion-style embeddings of ``1000 t`` reach |w| ~ 1000: the time derivatives that flow-map
    losses take would then be dominated by the fastest sinusoid.

    Args:
        features: number of sinusoidal features (even, >= 2).
        out_features: output width (default ``features``).
        max_period, min_period: the longest and shortest period, ``max_period > min_period > 0``.

    ``forward(t)``: t ``(B,)`` (or anything :func:`batch_time` accepts with ``batch``; a float
    tensor's dtype decides the output's). Returns ``(B, out_features)``.
    """

    def __init__(self, features: int = 64, out_features: int | None = None, max_period: float = 8.0,
                 min_period: float = 1.0 / 16) -> None:
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 2 or features % 2:
            raise ValueError(f"features must be an even int >= 2, got {features!r}")
        out_features = features if out_features is None else out_features
        if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be an int >= 1, got {out_features!r}")
        if not (math.isfinite(max_period) and math.isfinite(min_period) and max_period > min_period > 0):
            raise ValueError(f"need max_period > min_period > 0, got max_period={max_period!r}, "
                             f"min_period={min_period!r}")
        self.features, self.out_features = features, out_features
        self.max_period, self.min_period = float(max_period), float(min_period)
        periods = torch.logspace(math.log10(max_period), math.log10(min_period), features // 2, dtype=torch.float64)
        # A non-persistent buffer: moves with .to(), is never trained, and is rebuilt from the config
        # rather than loaded. Kept in float64 and cast at use, so a float64 net gets exact frequencies.
        self.register_buffer("frequencies", 2 * math.pi / periods, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, out_features), nn.SiLU(), nn.Linear(out_features, out_features))

    def config(self) -> dict:
        return {"features": self.features, "out_features": self.out_features,
                "max_period": self.max_period, "min_period": self.min_period}

    def fourier(self, t: torch.Tensor) -> torch.Tensor:
        """The fixed features ``(B, features)`` of t ``(B,)``: ``[sin(w t), cos(w t)]``."""
        angles = t[:, None] * self.frequencies.to(t.dtype)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        if batch is not None:
            t = batch_time(t, batch, self.mlp[0].weight)
        elif not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"t must be a (B,) tensor (or pass batch=), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        return self.mlp(self.fourier(t))
