"""Sample-based metrics."""

from __future__ import annotations

import torch

from flowfast._validate import check_finite, check_float, check_same_device
from flowfast.couplings.assignment import linear_assignment, pairwise_cost

__all__ = ["wasserstein2"]


def wasserstein2(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Exact 2-Wasserstein distance between two equal-size empirical distributions.

    .. math:: W_2 = \Big(\min_\sigma \frac1n \sum_i \|x_i - y_{\sigma(i)}\|^2\Big)^{1/2}

    Solved exactly by linear assignment (the optimal plan between two uniform n-point measures is a
    permutation), on the inputs' device, in float64. Equals ``sqrt(ot.emd2(a, b, M))`` with uniform
    a, b and M the squared-Euclidean cost.

    Args:
        x, y: ``(n, *shape)`` samples (flattened per sample), same n, dtype and device.
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_float(name, t)
        if t.dim() < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (n, *shape) batch, got shape {tuple(t.shape)}")
        check_finite(name, t)
    check_same_device(x=x, y=y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (equal sample counts), got {tuple(x.shape)} and {tuple(y.shape)}")
    a = x.detach().reshape(x.shape[0], -1).double()
    b = y.detach().reshape(y.shape[0], -1).double()
    cost = pairwise_cost(a, b)
    col_for_row = linear_assignment(cost)
    matched = ((a - b[col_for_row]) ** 2).sum(-1)  # exact distances of the chosen pairs (no matmul rounding)
    return float(matched.mean().sqrt())
