"""Custom op ``flowfast::linear_assignment`` over the `assignment` kernel family.

Twin of csrc/include/flowfast/assignment.h. Validation lives in :func:`validate_cost` so the
public API, the op and the tests share one set of messages.
"""

from __future__ import annotations

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._core import check_device_supported, check_float, check_magnitude, check_ndim, check_nonempty

# Kernels index columns with 32-bit integers; larger problems would not fit in memory anyway
# (an exact O(n^2 m) solve at this size would take days).
MAX_SIDE = 1 << 24
# Potentials and path lengths are sums of a few costs in float64: keep them far from overflow.
MAX_ABS_COST = 1e250


def validate_cost(cost: torch.Tensor, name: str = "cost") -> None:
    """Checks a (B, n, m) cost batch: float32/float64, 1 <= n <= m, finite, |cost| <= 1e250."""
    check_device_supported(name, cost)
    check_float(name, cost)
    check_ndim(name, cost, (3,), "(B, n, m) (or (n, m) in the public API)")
    check_nonempty(name, cost)
    n, m = cost.shape[-2], cost.shape[-1]
    if n > m:
        raise ValueError(
            f"{name} must have n <= m (no more rows than columns), got n={n}, m={m}; "
            "transpose it, or use flowfast.linear_sum_assignment which handles n > m"
        )
    if m > MAX_SIDE:
        raise ValueError(f"{name} has m={m} columns; at most {MAX_SIDE} are supported")
    check_magnitude(name, cost, MAX_ABS_COST)


@torch.library.custom_op("flowfast::linear_assignment", mutates_args=())
def linear_assignment(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    """Exact assignment for a batch: cost (B, n, m), n <= m -> (B, n) int64 column per row."""
    validate_cost(cost)
    if cost.stride(-1) != 1:
        cost = cost.contiguous()
    B, n, m = cost.shape
    out = torch.empty((B, n), dtype=torch.int64, device=cost.device)
    nbytes = _C.assignment_workspace_bytes(_arrays.device_code(cost.device), B, n, m)
    scratch = _arrays.workspace(nbytes, cost.device)
    _C.linear_assignment(
        _arrays.describe(cost),
        _arrays.describe(out),
        bool(maximize),
        scratch.data_ptr(),
        nbytes,
        _arrays.stream_handle(cost.device),
    )
    return out


@linear_assignment.register_fake
def _(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    return cost.new_empty(cost.shape[:-1], dtype=torch.int64)
