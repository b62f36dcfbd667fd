"""``flowfast.linear_sum_assignment``: scipy's semantics on flowfast's exact assignment kernels.

What scipy accepts is accepted (array-likes, integer / bool / float16 entries, empty matrices,
``n > m``, ``+inf`` entries as forbidden edges) with scipy's results and errors; the solve itself
is :func:`flowfast.linear_assignment`'s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flowfast._interop import accepts_arrays
from flowfast._validate import check_bool
from flowfast.couplings.assignment import linear_assignment

KERNEL_DTYPES = (torch.float32, torch.float64)


def _as_matrix(cost: Any) -> tuple[torch.Tensor, bool]:
    """(2-D tensor, was_torch) with scipy's acceptance rules; non-float entries become float64."""
    if isinstance(cost, torch.Tensor):
        t, was_torch = cost.detach(), True
        if t.is_complex():
            raise TypeError(f"cost must have real entries, got {str(t.dtype).replace('torch.', '')}")
    else:
        try:
            array = np.asarray(cost)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"cost must be a rectangular matrix: {error}") from None
        if array.ndim != 2:  # first, as scipy checks
            raise ValueError(f"cost must be a matrix (2-D array), got shape {array.shape}")
        if array.dtype == object:
            raise TypeError("cost must be an array of numbers; got an object array (ragged or non-numeric entries)")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"cost must be a matrix of numerical entries, got numpy dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.complexfloating):
            raise TypeError(f"cost must have real entries, got numpy dtype {array.dtype}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        t, was_torch = torch.from_numpy(np.ascontiguousarray(array)), False
    if t.dim() != 2:
        raise ValueError(f"cost must be a matrix (2-D array), got shape {tuple(t.shape)}")
    if t.dtype not in KERNEL_DTYPES:
        t = t.to(torch.float64)
    return t, was_torch


@accepts_arrays("cost", numpy=False)  # numpy: scipy's own acceptance rules below
def linear_sum_assignment(cost: Any, maximize: bool = False) -> tuple[Any, Any]:
    """Drop-in for ``scipy.optimize.linear_sum_assignment``, with scipy's semantics.

    Args:
        cost: an ``(n, m)`` matrix: torch tensor (CPU or CUDA, any real dtype), numpy array, nested
            lists, or a cupy / JAX / DLPack array, of integer, bool or float entries (float32/float64 tensors are solved in their
            dtype; anything else in float64). Any ``n, m >= 0``: an empty matrix gives empty
            indices, ``n > m`` is solved on the transpose. Minimizing, ``+inf`` marks a forbidden
            edge and NaN / ``-inf`` are invalid; maximizing, ``-inf`` is forbidden and NaN /
            ``+inf`` are invalid (scipy's rules).
        maximize: maximize the total instead.

    Returns:
        ``(row_ind, col_ind)``: int64 index arrays sorted by row (torch in, torch out on the same
        device; cupy / JAX / DLPack arrays in, that library's out; anything else in, numpy out), so
        ``cost[row_ind, col_ind].sum()`` is the optimal total. When the identity pairing (row i
        with column i) is optimal it is the one returned, as scipy does on constant or
        diagonal-optimal matrices; other ties are broken arbitrarily.

    Raises:
        ValueError: not 2-D, non-numerical entries, NaN or an invalid infinity, or no assignment
            that avoids every forbidden edge ("cost matrix is infeasible").
        TypeError: object or complex entries, a non-bool ``maximize``.

    The solve, forbidden edges included, is :func:`flowfast.linear_assignment`'s.
    """
    maximize = check_bool("maximize", maximize)
    t, was_torch = _as_matrix(cost)
    n, m = t.shape
    k = min(n, m)
    if k == 0:
        empty = torch.empty(0, dtype=torch.int64, device=t.device)
        return (empty, empty.clone()) if was_torch else (empty.numpy(), empty.numpy())
    cols = linear_assignment(t, maximize)
    rows = torch.arange(n, device=t.device)
    if n > m:
        rows = torch.nonzero(cols >= 0).flatten()
        cols = cols[rows]
    identity = torch.arange(k, device=t.device)
    # exact (fsum) comparison of the two totals: a rounded tie must not hand back a worse identity;
    # a forbidden edge on the diagonal makes the difference +-inf, which never wins
    diagonal, found = t[identity, identity].double().tolist(), t[rows, cols].double().tolist()
    gain = math.fsum(diagonal + [-v for v in found])
    if (gain >= 0) if maximize else (gain <= 0):
        rows, cols = identity, identity.clone()
    return (rows, cols) if was_torch else (rows.cpu().numpy(), cols.cpu().numpy())
