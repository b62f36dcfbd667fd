"""Sample-based metrics."""

from __future__ import annotations

import torch

from flowfast import ops
from flowfast._validate import check_finite, check_float, check_same_device
from flowfast.couplings.assignment import pairwise_cost

__all__ = ["path_curvature", "wasserstein2"]


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
    col_for_row = ops.assignment.solve(cost[None])[0]  # strict: an overflowing cost is "NaN/Inf", not a forbidden edge
    matched = ((a - b[col_for_row]) ** 2).sum(-1)  # exact distances of the chosen pairs (no matmul rounding)
    return float(matched.mean().sqrt())


def path_curvature(path: torch.Tensor, times: torch.Tensor | None = None) -> float:
    r"""How far sampled ODE paths are from straight lines (0 for straight, constant-speed paths):

    .. math:: \kappa = \frac{1}{D}\,\mathbb E_b \int_0^1 \big\|\dot x_t^b - (x_1^b - x_0^b)\big\|^2\,dt

    with the velocity of each step taken as its finite difference (the NFM paper's curvature, measured
    on Euler paths with 128 steps; D = numbers per sample).

    Args:
        path: ``(K + 1, B, *shape)`` states at ``times`` (a sampler's ``return_path=True`` output).
        times: ``(K + 1,)`` increasing times from 0 to 1 (default: uniform).
    """
    if not isinstance(path, torch.Tensor) or path.dim() < 3 or path.shape[0] < 2 or path.shape[1] == 0:
        raise ValueError(f"path must be a (K + 1, B, *shape) tensor with K >= 1, B >= 1, got "
                         f"{tuple(getattr(path, 'shape', ()))}")
    check_float("path", path)
    check_finite("path", path)
    x = path.detach().double().flatten(2)
    if times is None:
        dt = torch.full((x.shape[0] - 1,), 1.0 / (x.shape[0] - 1), dtype=torch.float64, device=x.device)
    else:
        if not isinstance(times, torch.Tensor):
            raise TypeError(f"times must be a ({x.shape[0]},) tensor or None, got {type(times).__name__}")
        times = times.detach().double().to(x.device)
        if times.shape != (x.shape[0],):
            raise ValueError(f"times must be ({x.shape[0]},), got {tuple(times.shape)}")
        dt = times.diff()
        if not bool((dt > 0).all()):
            raise ValueError("times must be strictly increasing")
    velocity = x.diff(dim=0) / dt[:, None, None]
    straight = (x[-1] - x[0]) / (dt.sum())
    deviation = (velocity - straight).pow(2).sum(-1).mean(1)  # (K,): per step, mean over the batch
    return float((deviation * dt).sum() / dt.sum() / x.shape[2])
