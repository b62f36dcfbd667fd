"""Custom op ``flowfast::linear_assignment`` over the `assignment` kernel family.

Twin of csrc/include/flowfast/assignment.h. The family's one validation point is
:func:`validate_cost` (shapes, dtype, device, finiteness and magnitude in one reduction, so one
host read on CUDA); :func:`solve` is the entry the public API calls, with the backend switch.
"""

from __future__ import annotations

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._validate import check_device_supported, check_float, check_magnitude, check_ndim, check_nonempty
from flowfast.ops import _switch

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


def solve(cost: torch.Tensor, maximize: bool = False, backend: str = "auto", *, validate: bool = True,
          name: str = "cost") -> torch.Tensor:
    """cost (B, n, m) -> (B, n) int64 column per row, on cost's device.

    Args:
        backend: see :mod:`flowfast.ops._switch`.
        validate: False only for costs a caller derived from already-validated inputs and knows
            to be finite and bounded (e.g. Gumbel-perturbed scores of a solved plan): skips the
            host read of the finiteness check.
        name: the argument's name in error messages.
    """
    impl, run_device = _switch.resolve(backend, cost.device, what="cost")
    if validate:
        validate_cost(cost, name)
    if impl == "torch":
        return _switch.reference("assignment").linear_assignment(cost, maximize)
    if run_device != cost.device:
        return _solve_kernel(cost.to(run_device), maximize).to(cost.device)
    if torch.compiler.is_compiling():
        return linear_assignment(cost, maximize)
    return _solve_kernel(cost, maximize)


def _solve_kernel(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
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


@torch.library.custom_op("flowfast::linear_assignment", mutates_args=())
def linear_assignment(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    """Exact assignment for a batch: cost (B, n, m), n <= m -> (B, n) int64 column per row."""
    validate_cost(cost)
    return _solve_kernel(cost, maximize)


@linear_assignment.register_fake
def _(cost: torch.Tensor, maximize: bool) -> torch.Tensor:
    return cost.new_empty(cost.shape[:-1], dtype=torch.int64)
