"""A small transformer for categorical flow maps: dense states on R^{L x V} in, logits out.

``SimplexTransformer(vocab, length)(x, s, t, label=None) -> logits (B, L, V)``, the network of
:class:`flowfast.categorical.CategoricalFlowMap` (endpoint pi = softmax(logits)). The input is a
dense state (a noisy point x_t = (1 - t) x0 + t onehot(x1), not token ids): a Linear(V -> width)
plus a learned position embedding. Times enter as the pair (s, t - s) (the parametrisation of the
categorical flow-map code: the net can tell a jump's start from its length) through two smooth
:class:`TimeEmbedding` and FiLM (scale, shift) in every block; a class label (optional, with a
null class for classifier-free guidance) is added to the conditioning. Attention is written out
(softmax(QK^T / sqrt(d)) V) so that ``torch.func.jvp`` (forward-mode AD in t) runs through it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from flowfast.models.embedding import TimeEmbedding, batch_time

__all__ = ["SimplexTransformer"]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class _Block(nn.Module):
    """Pre-norm attention + MLP, each modulated by (1 + scale, shift) of the conditioning, after a
    depthwise convolution over neighbouring positions (local structure is learnt in a few hundred
    steps instead of the thousands attention alone needs to find its neighbours)."""

    def __init__(self, width: int, heads: int, local_mixing: bool) -> None:
        super().__init__()
        self.heads = heads
        self.local = nn.Conv1d(width, width, 3, padding=1, groups=width) if local_mixing else None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.film = nn.Linear(width, 4 * width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        B, L, W = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(W // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(B, L, W))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale1, shift1, scale2, shift2 = self.film(cond)[:, None, :].chunk(4, dim=-1)
        if self.local is not None:
            h = h + self.local(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.attention(self.norm1(h) * (1 + scale1) + shift1)
        return h + self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class SimplexTransformer(nn.Module):
    """Logits ``(B, L, V)`` of the endpoint distribution at every position.

    Args:
        vocab: V, classes per position (>= 2). length: L, positions.
        width, depth, heads: transformer size (width divisible by heads).
        time_features: sinusoidal features per time embedding.
        num_classes: labels of a class-conditional model (None: unconditional). Label
            ``num_classes`` is the null class (classifier-free guidance trains it by label dropout).
        local_mixing: a depthwise convolution (kernel 3) over positions in every block.

    ``forward(x, s, t, label=None)``: x ``(B, L, V)``; s, t scalars or ``(B,)``; label ``(B,)``
    int64 or None (= the null class). Returns float logits like x.
    """

    def __init__(self, vocab: int, length: int, width: int = 128, depth: int = 3, heads: int = 4,
                 time_features: int = 64, num_classes: Optional[int] = None, local_mixing: bool = True) -> None:
        super().__init__()
        self.vocab, self.length = _check_int("vocab", vocab, 2), _check_int("length", length)
        self.width, self.depth, self.heads = _check_int("width", width), _check_int("depth", depth), _check_int(
            "heads", heads)
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.time_features = time_features
        self.num_classes = None if num_classes is None else _check_int("num_classes", num_classes)
        self.embed_x = nn.Linear(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.5)
        self.embed_s = TimeEmbedding(time_features, out_features=width)
        self.embed_gap = TimeEmbedding(time_features, out_features=width)
        self.embed_label = None if num_classes is None else nn.Embedding(num_classes + 1, width)
        self.local_mixing = bool(local_mixing)
        self.blocks = nn.ModuleList(_Block(width, heads, self.local_mixing) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, vocab)

    def config(self) -> dict:
        return {"vocab": self.vocab, "length": self.length, "width": self.width, "depth": self.depth,
                "heads": self.heads, "time_features": self.time_features, "num_classes": self.num_classes,
                "local_mixing": self.local_mixing}

    def forward(self, x: torch.Tensor, s, t, label: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.length, self.vocab):
            raise ValueError(f"x must be (B, {self.length}, {self.vocab}), got {tuple(x.shape)}")
        B = x.shape[0]
        s, t = batch_time(s, B, x, "s"), batch_time(t, B, x, "t")
        cond = nn.functional.silu(self.embed_s(s)) + nn.functional.silu(self.embed_gap(t - s))
        if self.embed_label is not None:
            if label is None:
                label = torch.full((B,), self.num_classes, dtype=torch.int64, device=x.device)
            cond = cond + self.embed_label(label)
        elif label is not None:
            raise ValueError("this SimplexTransformer is unconditional (num_classes=None) but got a label")
        h = self.embed_x(x) + self.position
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.norm(h))
