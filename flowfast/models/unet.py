"""A small U-Net for two-time flow maps on images: ``v_{s,t}(x)`` for ``x`` of shape ``(B, C, H, W)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowfast.models.embedding import TimeEmbedding, batch_time
from flowfast.models.flow_map_mlp import _check_int

__all__ = ["FlowMapUNet"]


class _ResBlock(nn.Module):
    """``GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> FiLM(s, t) -> SiLU -> conv3x3``, plus a skip
    (1x1 conv when the width changes). FiLM scales by ``1 + gamma`` so a zero gamma is the identity."""

    def __init__(self, in_ch: int, out_ch: int, cond: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(cond, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(groups, out_ch), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        gamma, beta = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + gamma) + beta
        return self.conv2(F.silu(h)) + self.skip(x)


def _groups(groups: int, channels: int) -> int:
    """The largest group count <= ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _default_mults(size: int) -> tuple[int, ...]:
    # 8x8: one downsampling (8 -> 4) at constant width, which keeps a batch-128 training step at
    # about 25 ms on one CPU core ((1, 2) doubles the parameters for about +30% time);
    # 28x28 (MNIST-like): two downsamplings (28 -> 14 -> 7), widening once.
    return (1, 1) if size < 16 else (1, 2, 2)


class FlowMapUNet(nn.Module):
    """The net ``v_{s,t}(x)`` of a flow map ``X_{s,t}(x) = x + (t - s) v_{s,t}(x)`` on images.

    Convention: x0 = source (noise) at t=0, x1 = data at t=1; this module returns ``v`` only.

    Layout: ``conv3x3 -> [ResBlock -> downsample]* -> ResBlock (middle) -> [upsample -> concat
    skip -> ResBlock]* -> GroupNorm -> SiLU -> conv3x3`` (no resampling at the lowest level), one
    residual block per level and direction, widths ``base * mult`` per level. s and t go through two separate :class:`TimeEmbedding`; their concatenation (after a
    SiLU) sets a per-block, per-channel scale and shift (FiLM) after the block's second GroupNorm.
    Downsampling is a stride-2 conv, upsampling nearest-neighbour (the block after the skip
    concatenation does the mixing). Every op has a forward-mode AD formula, so ``torch.func.jvp``
    in s, t or x works.

    Supported sizes: square ``size x size`` images with ``size`` divisible by
    ``2 ** (len(channel_mults) - 1)``; the default ``channel_mults`` are ``(1, 1)`` for
    ``size < 16`` (8x8: 8 -> 4) and ``(1, 2, 2)`` otherwise (28x28: 28 -> 14 -> 7); 8 and 28 are
    the tested sizes. ``forward`` refuses any other shape.

    Cost with the defaults (``base=16``), one CPU core, batch 128: 8x8 has 65k parameters and a
    training step (forward, backward, Adam) takes about 25 ms, about 110 ms with a
    ``torch.func.jvp`` in t inside the loss (GroupNorm's and SiLU's forward-mode rules are
    decomposed into many elementwise ops); 28x28 has 200k parameters, about 350 ms per step.

    Args:
        channels: image channels C.
        size: image height = width.
        base: width of the first level (a multiple of ``groups`` keeps the groups even).
        channel_mults: width multipliers per level (default by size, see above).
        time_features: sinusoidal features per time embedding (even).
        cond_features: output width of each time embedding (default ``4 * base``).
        groups: GroupNorm groups (reduced per layer to a divisor of its width).

    ``forward(x, s, t)``: x ``(B, channels, size, size)``; s and t each a scalar, ``(B,)`` or
    ``(B, 1)``, cast to x's dtype. Returns x's shape.
    """

    def __init__(self, channels: int = 1, size: int = 8, base: int = 16, channel_mults: tuple[int, ...] | None = None,
                 time_features: int = 32, cond_features: int | None = None, groups: int = 8) -> None:
        super().__init__()
        self.channels = _check_int("channels", channels)
        self.size = _check_int("size", size)
        self.base = _check_int("base", base)
        self.groups = _check_int("groups", groups)
        mults = _default_mults(size) if channel_mults is None else tuple(channel_mults)
        if not mults:
            raise ValueError("channel_mults must have at least one level")
        for m in mults:
            _check_int("channel_mults entry", m)
        if size % (2 ** (len(mults) - 1)):
            raise ValueError(f"size {size} must be divisible by 2**(levels - 1) = {2 ** (len(mults) - 1)} "
                             f"for channel_mults={mults}")
        self.channel_mults = mults
        self.time_features = time_features
        self.cond_features = 4 * base if cond_features is None else _check_int("cond_features", cond_features)
        self.embed_s = TimeEmbedding(time_features, out_features=self.cond_features)
        self.embed_t = TimeEmbedding(time_features, out_features=self.cond_features)
        cond = 2 * self.cond_features

        widths = [base * m for m in mults]
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            self.down.append(_ResBlock(ch, w, cond, groups))
            ch = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = _ResBlock(ch, ch, cond, groups)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(_ResBlock(ch + w, w, cond, groups))
            ch = w
        self.head_norm = nn.GroupNorm(_groups(groups, ch), ch)
        self.head = nn.Conv2d(ch, channels, 3, padding=1)

    def config(self) -> dict:
        """The constructor arguments (``FlowMapUNet(**net.config())`` rebuilds the architecture)."""
        return {"channels": self.channels, "size": self.size, "base": self.base,
                "channel_mults": list(self.channel_mults), "time_features": self.time_features,
                "cond_features": self.cond_features, "groups": self.groups}

    def forward(self, x: torch.Tensor, s, t) -> torch.Tensor:
        expected = (self.channels, self.size, self.size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {got}")
        s = batch_time(s, x.shape[0], x, "s")
        t = batch_time(t, x.shape[0], x, "t")
        cond = F.silu(torch.cat([self.embed_s(s), self.embed_t(t)], dim=1))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, cond)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, cond)
        for i, block in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), cond)
        return self.head(F.silu(self.head_norm(h)))
