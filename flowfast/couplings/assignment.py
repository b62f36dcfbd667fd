"""Exact assignment and the exact minibatch-OT pairing built on it."""

from __future__ import annotations

from typing import Any

import torch

from flowfast import ops
from flowfast._interop import accepts_arrays
from flowfast._validate import (check_batch_pair, check_bool, check_choice, check_device_supported, check_finite,
                                check_float, check_ndim, check_nonempty, to_tensor)
from flowfast.couplings.cost import BATCH_DTYPES, as_points, pairwise_cost

COSTS = ("sqeuclidean", "euclidean")


@accepts_arrays("cost")
def linear_assignment(cost: Any, maximize: bool = False, *, backend: str = "auto") -> Any:
    r"""Exact linear assignment: each row gets a distinct column, minimizing the total cost.

    .. math:: \min_{\sigma \text{ injective}} \sum_i C_{i, \sigma(i)}

    Args:
        cost: ``(n, m)`` or batched ``(B, n, m)`` costs; float32 or float64; a torch tensor (CPU or
            CUDA) or any array library's (numpy, cupy, JAX, DLPack; the result comes back in
            it, :mod:`flowfast._interop`); non-empty. ``+inf`` (``-inf`` when maximizing) marks a
            forbidden edge; NaN and the other infinity are refused. ``n > m`` is solved on the
            transpose: every column gets a distinct row and ``n - m`` rows get none.
        maximize: maximize the total instead.
        backend: ``"auto"`` (kernel on the input's device), ``"cpu"`` (CPU kernel, copying a CUDA
            input to the host and the answer back), ``"cuda"`` (require the CUDA kernel) or
            ``"torch"`` (the slow pure-torch reference).

    Returns:
        ``(n,)`` or ``(B, n)`` int64: the column assigned to each row, -1 for the rows left out
        when ``n > m``, on the input's device and in its array library. Optimal solutions need not be
        unique; any optimal one is returned.

    Raises:
        TypeError: non-float dtype or unsupported input type.
        ValueError: wrong ndim, empty, NaN or a refused infinity, a problem with no assignment that
            avoids every forbidden edge ("infeasible"), or a CUDA tensor with a CPU-only build.

    Finite costs take the kernels' fast path with one finiteness check (one host read on CUDA).
    Forbidden edges are priced above any finite assignment (:func:`price_forbidden_edges`) and
    solved in float64: exact to about n * 1e-16 of n times the finite cost range.
    """
    t, _ = to_tensor("cost", cost)
    maximize = check_bool("maximize", maximize)
    check_choice("backend", backend, ops.BACKENDS)
    check_device_supported("cost", t)
    check_float("cost", t)
    check_ndim("cost", t, (2, 3), "(n, m) or (B, n, m)")
    check_nonempty("cost", t)  # here, so the message shows the caller's shape
    batched = t.dim() == 3
    t3 = t if batched else t.unsqueeze(0)
    n, m = t3.shape[1], t3.shape[2]
    solve_on = t3.transpose(1, 2) if n > m else t3
    try:
        out = ops.assignment.solve(solve_on, maximize, backend)
    except ValueError as error:
        if "NaN/Inf" not in str(error):
            raise
        out = _solve_with_forbidden_edges(solve_on, maximize, backend, batched)
    if n > m:  # (B, m) row of each column -> (B, n) column of each row
        cols = torch.full((t3.shape[0], n), -1, dtype=torch.int64, device=out.device)
        out = cols.scatter_(1, out, torch.arange(m, device=out.device).expand_as(out))
    out = out if batched else out[0]
    return out


def price_forbidden_edges(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(priced, forbidden)`` for a ``(B, n, m)`` minimization (n <= m) where +inf marks a
    forbidden edge: each problem's forbidden edges get a price M above what any assignment can save
    by using one, M = hi + (n + 1) (hi - lo + max(1, |lo|, |hi|)) over its finite entries, so the
    optimum avoids every forbidden edge whenever some assignment does (the n - 1 other edges of one
    that does not cost at least (n - 1) lo, against a feasible total of at most n hi). float64."""
    c = c.double()
    forbidden = torch.isposinf(c)
    lo = torch.where(forbidden, torch.inf, c).amin((1, 2))
    hi = torch.where(forbidden, -torch.inf, c).amax((1, 2))
    empty = ~torch.isfinite(lo)
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    room = torch.maximum(torch.maximum(lo.abs(), hi.abs()), torch.ones_like(lo))
    price = hi + (c.shape[1] + 1) * (hi - lo + room)
    return torch.where(forbidden, price[:, None, None], c), forbidden


def _solve_with_forbidden_edges(c3: torch.Tensor, maximize: bool, backend: str, batched: bool) -> torch.Tensor:
    """The non-finite path of :func:`linear_assignment` (``c3`` (B, n, m), n <= m)."""
    c = -c3 if maximize else c3
    invalid = torch.isnan(c) | torch.isneginf(c)
    if bool(invalid.any()):
        refused, allowed = ("NaN or +inf", "-inf") if maximize else ("NaN or -inf", "+inf")
        raise ValueError(f"cost contains {int(invalid.sum())} {refused} value(s); only {allowed} is allowed, "
                         "marking a forbidden edge")
    priced, forbidden = price_forbidden_edges(c)
    price = float(priced.masked_fill(~forbidden, -torch.inf).amax())
    if price > ops.assignment.MAX_ABS_COST:
        raise ValueError(f"cost has forbidden edges and finite entries up to {float(c[~forbidden].abs().amax()):.3g}: "
                         f"pricing the forbidden edges above every assignment needs {price:.3g}, beyond the "
                         f"supported {ops.assignment.MAX_ABS_COST:.0e}; rescale the cost")
    cols = ops.assignment.solve(priced, False, backend)
    infeasible = forbidden.gather(2, cols[..., None]).squeeze(-1).any(1)
    if bool(infeasible.any()):
        which = f" for problem(s) {torch.nonzero(infeasible).flatten()[:8].tolist()}" if batched else ""
        raise ValueError(f"cost matrix is infeasible{which}: no assignment avoids every forbidden "
                         f"({'-inf' if maximize else '+inf'}) edge")
    return cols


@accepts_arrays("x0", "x1")
def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, cost: str = "sqeuclidean") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact minibatch-OT pairing: a permutation, every sample used exactly once.

    Solves :math:`\min_\sigma \sum_i c(x_0^i, x_1^{\sigma(i)})` exactly (linear assignment on the
    device of the inputs, no host round trip on CUDA beyond the NaN check) and returns
    ``(x0, x1[cols])``. Unlike torchcfm's ``OTPlanSampler.sample_plan`` (which samples the plan
    with replacement and so duplicates about 37% of pairs), no pair is repeated or dropped.

    Args:
        x0: ``(n, *shape)`` source samples (noise, t=0), float32/float64.
        x1: ``(n, *shape)`` data samples (t=1), same shape, dtype and device as x0. Torch
            tensors or another array library's arrays (results in that library).
        cost: ``"sqeuclidean"`` (default, W2 coupling) or ``"euclidean"``.

    Returns:
        ``(x0, x1_paired)`` with ``x1_paired = x1[cols]``.
    """
    check_batch_pair(x0, x1, dtypes=BATCH_DTYPES)
    check_choice("cost", cost, COSTS)
    check_device_supported("x0", x0)
    with torch.no_grad():
        cols = solve_pair_cost(x0, x1, pairwise_cost(as_points(x0), as_points(x1), cost))
    return x0, x1[cols]


def solve_pair_cost(x0: torch.Tensor, x1: torch.Tensor, cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    """Optimal assignment ``(n,)`` of a cost computed from the batches x0 and x1. The cost's one
    finiteness check (one host read) stands for the batches': a NaN/Inf in a row of x0 or x1 makes
    that row or column of the cost non-finite. On failure the batches are checked by name."""
    try:
        return ops.assignment.solve(cost[None], maximize, name="the cost between x0 and x1")[0]
    except ValueError as error:
        if "NaN/Inf" in str(error):
            raise_nonfinite_cost(x0, x1, cost.dtype)
        check_batches_finite(x0, x1)
        raise


def raise_nonfinite_cost(x0: torch.Tensor, x1: torch.Tensor, dtype: torch.dtype) -> None:
    """A cost computed from x0 and x1 holds NaN/Inf: name the batch that does, or else say the
    distances of finite inputs overflow ``dtype`` (error path only: reads both batches back)."""
    check_batches_finite(x0, x1)
    raise ValueError(f"the squared distances between x0 and x1 overflow {str(dtype).replace('torch.', '')} "
                     "(x0 and x1 are finite); rescale the inputs or use float64")


def check_batches_finite(x0: torch.Tensor, x1: torch.Tensor) -> None:
    """Names the batch holding NaN/Inf (error path only: reads both back)."""
    check_finite("x0", x0)
    check_finite("x1", x1)
