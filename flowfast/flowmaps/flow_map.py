r"""The flow map :math:`X_{s,t}(x) = x + (t - s)\,v_{s,t}(x)` around a two-time network.

One network is both the flow-matching model and the map: on the diagonal :math:`v_{t,t}` is the
velocity field (the tangent condition, Boffi et al. 2025 Lemma 2.1), so :meth:`FlowMap.velocity`
feeds the ODE samplers and :meth:`FlowMap.forward` jumps from time s to time t in one evaluation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from flowfast.paths import pad_t_like_x

__all__ = ["FlowMap", "LossWeight", "as_times"]


def as_times(name: str, value, x: torch.Tensor) -> torch.Tensor:
    """A time given as a number, a 0-d, ``(B,)`` or ``(B, 1)`` tensor, as a ``(B,)`` tensor in x's
    dtype and device. Shape and type only: no host read (the range is checked by the caller once)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a tensor of times, got bool")
    if isinstance(value, (int, float)):
        return torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number or a torch.Tensor, got {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a floating-point tensor, got {str(value.dtype).replace('torch.', '')}")
    if value.dim() == 0:
        value = value.expand(x.shape[0])
    elif value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.shape != (x.shape[0],):
        raise ValueError(f"{name} must be a scalar or have shape ({x.shape[0]},) like the batch, got {tuple(value.shape)}")
    if value.device != x.device:
        raise ValueError(f"{name} is on {value.device} but x is on {x.device}")
    return value.to(x.dtype)


def check_time_range(s: torch.Tensor, t: torch.Tensor, allow_backward: bool) -> None:
    """s, t finite and in [0, 1], and s <= t unless backward maps are allowed: one host read."""
    lo_s, hi_s = torch.aminmax(s.detach())
    lo_t, hi_t = torch.aminmax(t.detach())
    gap = (s.detach() - t.detach()).amax()
    lo_s, hi_s, lo_t, hi_t, gap = torch.stack([lo_s, hi_s, lo_t, hi_t, gap]).tolist()
    for name, lo, hi in (("s", lo_s, hi_s), ("t", lo_t, hi_t)):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN/Inf; times must be finite numbers in [0, 1]")
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
    if not allow_backward and gap > 0:
        raise ValueError(f"s must be <= t (a forward map): got s - t up to {gap:g}; build the FlowMap with "
                         "allow_backward=True for backward maps X_{s,t}, s > t")


class FlowMap(nn.Module):
    r"""A flow map :math:`X_{s,t}(x) = x + (t - s)\,v_{s,t}(x)` with :math:`v` = ``net(x, s, t)``.

    Args:
        net: an ``nn.Module`` called as ``net(x, s, t)`` with x ``(B, *shape)`` and s, t ``(B,)``,
            returning v of x's shape; s and t should be embedded separately (see
            :class:`flowfast.models.FlowMapMLP`, :class:`flowfast.models.FlowMapUNet`).
        loss_weight: an optional learned two-time loss weight :math:`w_{s,t}` (e.g.
            :class:`LossWeight`); the flow-map objectives then minimise :math:`e^{-w}L + w` per sample.
            ``True`` builds a default :class:`LossWeight`. It lives in the model so the optimizer,
            the EMA copy and checkpoints carry it.
        allow_backward: accept s > t in :meth:`forward` (only meaningful for maps trained on both
            orders); by default a call with s > t is a ValueError.

    Convention: x0 = source/noise at t=0, x1 = data at t=1; the maps run forward from s to t.
    """

    def __init__(self, net: nn.Module, loss_weight: "nn.Module | bool | None" = None,
                 allow_backward: bool = False) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module called as net(x, s, t), got {type(net).__name__}")
        self.net = net
        if loss_weight is True:
            loss_weight = LossWeight()
        elif loss_weight is False:
            loss_weight = None
        if loss_weight is not None and not isinstance(loss_weight, nn.Module):
            raise TypeError(f"loss_weight must be an nn.Module, True or None, got {type(loss_weight).__name__}")
        self.loss_weight = loss_weight
        self.allow_backward = bool(allow_backward)

    # --- unchecked evaluations: the objectives and samplers call these after one validation -------
    def v(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's :math:`v_{s,t}(x)`, shape-checked (no host read; works under torch.func)."""
        out = self.net(x, s, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net(x, s, t) returned {got}, expected a tensor of x's shape {tuple(x.shape)}")
        return out

    def jump(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:math:`X_{s,t}(x)` without the argument checks of :meth:`forward`."""
        return x + pad_t_like_x(t - s, x) * self.v(x, s, t)

    # --- the public calls ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        """:math:`X_{s,t}(x)`: x ``(B, *shape)``; s, t numbers or ``(B,)`` tensors in [0, 1] with
        s <= t (unless ``allow_backward``). One host read checks the times."""
        x = _check_state(x)
        s, t = as_times("s", s, x), as_times("t", t, x)
        check_time_range(s, t, self.allow_backward)
        return self.jump(x, s, t)

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The velocity field :math:`v_{t,t}(x)` (``velocity(x, t)``, the samplers' convention)."""
        x = _check_state(x)
        t = as_times("t", t, x)
        return self.v(x, t, t)

    def weight(self, s: torch.Tensor, t: torch.Tensor) -> Optional[torch.Tensor]:
        """The learned log-weight :math:`w_{s,t}` ``(B,)``, or None without a loss weight."""
        if self.loss_weight is None:
            return None
        w = self.loss_weight(s, t)
        if not isinstance(w, torch.Tensor) or w.shape != s.shape:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"loss_weight(s, t) returned {got}, expected shape {tuple(s.shape)}")
        return w


def _check_state(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (B, *shape) batch, got shape {tuple(x.shape)}")
    return x


class LossWeight(nn.Module):
    r"""A learned two-time log-variance :math:`w_{s,t}` (EDM2's loss weight, generalised to two times
    by Boffi et al. 2025): Fourier features of s and of t, a small MLP, a scalar per sample. The
    last layer starts at zero, so training starts from the unweighted loss (w = 0).

    Args:
        features: Fourier features per time (half sines, half cosines).
        hidden: width of the MLP.
    """

    def __init__(self, features: int = 8, hidden: int = 64) -> None:
        super().__init__()
        for name, value in (("features", features), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")
        self.register_buffer("frequencies", torch.pi * 2.0 ** torch.arange(features // 2, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(4 * (features // 2), hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = torch.stack([s, t], dim=1)[:, :, None] * self.frequencies.to(s.dtype)
        features = torch.cat([angles.sin(), angles.cos()], dim=2).flatten(1)
        return self.mlp(features)[:, 0]
