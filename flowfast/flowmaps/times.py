r"""Two-time sampling for flow-map training (Boffi et al. 2025 §3):
:math:`p_{s,t} = \eta\,U(\text{diagonal}) + (1 - \eta)\,p_{\text{off}}(s < t)`, :math:`\eta = 0.75`, with
the off-diagonal law one of ``OFF_DIAGONAL``: uniform on the triangle (the default), ``"scaled"``
(t ~ U, s = u t: the categorical flow-map text code's, density 1/t on the triangle) or
``"logit_normal"`` (two logit-normal draws, P_mean = -0.4, P_std = 1, sorted: its graph code's)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from flowfast._rng import generator_device

__all__ = ["OFF_DIAGONAL", "TwoTimes", "sample_times", "check_fraction", "check_max_gap"]

OFF_DIAGONAL = ("triangle", "scaled", "logit_normal")
LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD = -0.4, 1.0


@dataclass
class TwoTimes:
    """A batch's times: s, t ``(B,)`` with s <= t; the first ``n_diagonal`` rows have s == t, the
    others s < t (up to the rounding of a 16-bit dtype, which may tie them)."""

    s: torch.Tensor
    t: torch.Tensor
    n_diagonal: int


def check_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"diagonal_fraction must be a number in [0, 1], got {value!r}")
    return float(value)


def check_max_gap(max_gap) -> Optional[float]:
    if max_gap is not None and (isinstance(max_gap, bool) or not isinstance(max_gap, (int, float))
                                or not (max_gap > 0 and math.isfinite(max_gap))):
        raise ValueError(f"max_gap must be None or a finite number > 0, got {max_gap!r}")
    return None if max_gap is None else float(max_gap)


def diagonal_rows(batch: int, fraction: float) -> int:
    """round(fraction * batch), but at least one off-diagonal row when fraction < 1 and batch >= 2
    (a batch of 2 would otherwise round to all-diagonal and silently train plain flow matching)."""
    n = int(round(fraction * batch))
    return min(n, batch - 1) if fraction < 1 and batch >= 2 else n


def sample_times(batch: int, diagonal_fraction: float = 0.75, *, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None, max_gap: Optional[float] = None,
                 off_diagonal: str = "triangle") -> TwoTimes:
    """Draw (s, t) for a batch.

    The split is exact rather than Bernoulli per row: ``round(diagonal_fraction * batch)`` rows on
    the diagonal (t ~ U[0, 1], s = t), the rest uniform on the triangle s < t (two uniforms, sorted),
    so every batch has the same mix and the loss has less variance. ``off_diagonal`` picks the law of
    the other rows (``OFF_DIAGONAL``, see the module docstring). ``max_gap`` caps t - s (a
    curriculum t = min(t, s + max_gap)).

    Draws come from ``generator`` (its device decides where they are made); results are moved to
    ``device``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    fraction = check_fraction(diagonal_fraction)
    max_gap = check_max_gap(max_gap)
    if off_diagonal not in OFF_DIAGONAL:
        raise ValueError(f"off_diagonal must be one of {OFF_DIAGONAL}, got {off_diagonal!r}")
    n_diagonal = diagonal_rows(batch, fraction)
    where = generator_device(generator)
    # drawn in float32 at least: 16-bit uniforms tie often (s == t on an off-diagonal row)
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.rand(batch, 2, generator=generator, device=where, dtype=draw_dtype).to(device)
    diagonal = u[:n_diagonal, 0]
    pairs = u[n_diagonal:]
    if off_diagonal == "scaled":
        pairs = torch.stack([pairs[:, 0] * pairs[:, 1], pairs[:, 1]], dim=1)
    elif off_diagonal == "logit_normal":
        normal = torch.randn(pairs.shape, generator=generator, device=where, dtype=draw_dtype).to(device)
        pairs = torch.sigmoid(LOGIT_NORMAL_MEAN + LOGIT_NORMAL_STD * normal)
    low, high = pairs.min(dim=1).values, pairs.max(dim=1).values
    if max_gap is not None:
        high = torch.minimum(high, low + max_gap)
    return TwoTimes(torch.cat([diagonal, low]).to(dtype), torch.cat([diagonal, high]).to(dtype), n_diagonal)
