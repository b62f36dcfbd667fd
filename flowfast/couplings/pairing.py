"""Minibatch couplings for flow matching: re-pair a source batch x0 with a data batch x1.

``pair`` is the one entry point: ``method="exact"`` (linear assignment), ``"sinkhorn"`` (entropic
OT) or ``"unbalanced"`` (KL-relaxed marginals). ``replace=False`` (default) returns a permutation:
every sample is used exactly once. ``replace=True`` reproduces torchcfm's ``OTPlanSampler``
semantics (n pairs drawn with replacement from the plan), for comparison and compatibility.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from flowfast import ops
from flowfast._interop import accepts_arrays
from flowfast._rng import generator_device
from flowfast._validate import check_batch_pair, check_choice
from flowfast.couplings.assignment import check_batches_finite, raise_nonfinite_cost, solve_pair_cost
from flowfast.couplings.cost import BATCH_DTYPES, as_points, pairwise_cost
from flowfast.couplings.sinkhorn import SolveOptions, sinkhorn, solve_problem

METHODS = ("exact", "sinkhorn", "unbalanced")


def _check_batches(x0, x1, same_size: bool) -> None:
    check_batch_pair(x0, x1, dtypes=BATCH_DTYPES, same_size=same_size)
    # Finiteness is checked once, on the cost the coupling computes from x0 and x1 (the op layer's
    # one host read), not here: see solve_pair_cost.


# Above this many cost entries the n x m matrix is not formed: Sinkhorn runs on the point clouds.
DENSE_COUPLING_ENTRIES = 1 << 24


def entropic_coupling(x0: torch.Tensor, x1: torch.Tensor, reg: float, reg_m: Optional[float],
                      max_iter: int = 1000, tol: float = 1e-6, cost: Optional[torch.Tensor] = None,
                      eps: Optional[float] = None):
    """Sinkhorn between two batches with eps = reg * max squared distance (or the absolute ``eps``).

    Small batches (n m <= 2^24) use the dense cost (formed anyway for the eps scale, or passed as
    ``cost``); larger ones run on the point clouds and scale eps by an upper bound of the max
    squared distance (:func:`flowfast.ops.sinkhorn.sq_diameter_bound`): no n x m matrix is formed.
    One host read before the iterations: the scale, which is also the finiteness check."""
    a, b = as_points(x0), as_points(x1)
    if cost is None and a.shape[0] * b.shape[0] <= DENSE_COUPLING_ENTRIES:
        cost = pairwise_cost(a, b)
    problem = ops.sinkhorn.validate_problem(cost, None if cost is not None else a, None if cost is not None else b)
    try:
        scale = ops.sinkhorn.problem_scale(problem)
    except ValueError:
        check_batches_finite(x0, x1)
        raise
    if eps is None:
        eps = reg * scale.max if scale.max > 0 else reg
    opts = SolveOptions.parse(eps, reg_m, max_iter, tol, True, 5, "auto")
    return solve_problem(problem, None, None, scale, opts)


def _random_rows(n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """n row indices drawn uniformly with replacement (torchcfm's sampling of an exact plan)."""
    return torch.randint(0, n, (n,), generator=generator, device=generator_device(generator)).to(device)


def _sample_entropic(result, cost: Optional[torch.Tensor], n: int, replace: bool,
                     generator: Optional[torch.Generator], device: torch.device):
    """Index pairs from a solved entropic plan. replace=True: rows by their plan mass, columns by
    the Gumbel-max kernel (no plan formed). replace=False: a permutation by Gumbel perturb-and-MAP,
    the assignment maximizing sum_i log P_{i sigma(i)} + G_{i sigma(i)}, on the dense `cost`."""
    if replace:
        row_mass, _ = result.marginals()
        total = float(row_mass.double().sum())
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"the entropic plan has no mass to sample pairs from (total mass {total:.3g}): with "
                             f"reg_m={result.reg_m} against costs of this size, destroying mass is cheaper than "
                             "moving it; raise reg_m (it is absolute, as POT's), rescale the inputs, or use "
                             "method='sinkhorn'")
        rows = torch.multinomial(row_mass.clamp_min(0).double().to(generator_device(generator)), n,
                                 replacement=True, generator=generator).to(device)
        return rows, result.sample(generator, rows=rows)
    uniform = torch.rand(cost.shape, generator=generator, device=generator_device(generator), dtype=torch.float64)
    minus_gumbel = torch.log(-torch.log(uniform.clamp_min(1e-300))).to(cost.device)
    scores = (cost.double() - result.g.double()[None, :]) / result.eps + minus_gumbel
    # Finite and bounded by construction (validated cost, finite potentials): no second check.
    return torch.arange(n, device=device), ops.assignment.solve(scores[None], validate=False)[0]


@accepts_arrays("x0", "x1")
def pair_indices(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05,
                 reg_m: float = 1.0, replace: bool = False, generator: Optional[torch.Generator] = None,
                 max_iter: int = 1000, tol: float = 1e-6, eps: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The index pairs (i, j) of :func:`pair` (same arguments), each ``(n,)`` int64 on x0's device."""
    check_choice("method", method, METHODS)
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise ValueError(f"reg must be a number > 0, got {reg!r}")
    _check_batches(x0, x1, same_size=not replace)
    n, device = x0.shape[0], x0.device
    if method == "exact":
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"method='exact' pairs batches of equal size (between uniform batches of sizes n != m "
                             f"the exact OT plan is not an assignment); got len(x0)={x0.shape[0]}, "
                             f"len(x1)={x1.shape[0]}: use method='sinkhorn' for unequal sizes")
        cols = solve_pair_cost(x0, x1, pairwise_cost(as_points(x0), as_points(x1)))
        if not replace:
            return torch.arange(n, device=device), cols
        rows = _random_rows(n, generator, device)
        return rows, cols[rows]
    # The perturb-and-MAP permutation needs the dense cost; compute it once for both steps.
    cost = None if replace else pairwise_cost(as_points(x0), as_points(x1))
    result = entropic_coupling(x0, x1, reg, reg_m if method == "unbalanced" else None, max_iter, tol, cost, eps)
    return _sample_entropic(result, cost, n, replace, generator, device)


@accepts_arrays("x0", "x1")
def pair(x0: torch.Tensor, x1: torch.Tensor, method: str = "exact", reg: float = 0.05, reg_m: float = 1.0,
         replace: bool = False, generator: Optional[torch.Generator] = None, max_iter: int = 1000,
         tol: float = 1e-6, eps: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    r"""Couple a source batch with a data batch; returns ``(x0[i], x1[j], (i, j))``.

    Args:
        x0: ``(n, *shape)`` source samples (noise, t=0). x1: ``(m, *shape)`` data samples (t=1),
            ``m == n`` for ``"exact"`` and unless ``replace=True``. Same dtype and device.
        method: ``"exact"``: minibatch OT by exact linear assignment on squared distances.
            ``"sinkhorn"``: entropic OT with :math:`\varepsilon = \text{reg} \cdot \max_{ij} \|x_0^i - x_1^j\|^2`
            (relative to the MAX cost, i.e. torchcfm's ``normalize_cost=True`` convention, so a
            ``reg`` carries over between datasets; above 2^24 pairs an upper bound of the max is
            used and the cost is computed on the fly). ``"unbalanced"``: the same with KL-relaxed
            marginals of weight ``reg_m`` (absolute, like POT's).
        replace: False (default): a permutation, every sample used once. exact: the optimal
            permutation; sinkhorn/unbalanced: a permutation sampled by Gumbel perturb-and-MAP of the
            entropic plan (the assignment maximizing :math:`\sum_i \log P_{i\sigma(i)} + G_{i\sigma(i)}`,
            G iid Gumbel; needs the n x n cost). True: n pairs drawn with replacement from the plan,
            as torchcfm's ``sample_plan`` does (rows by their mass, then the column by Gumbel-max on
            the device without forming the plan); about 37% of pairs then repeat.
        generator: torch.Generator for every random draw (reproducible pairs).
        max_iter, tol: Sinkhorn stopping rule (see :func:`flowfast.sinkhorn`).
        eps: absolute entropic regularization, overriding ``reg`` (SB-CFM uses eps = 2 sigma^2).

    Returns:
        ``(x0_paired, x1_paired, (i, j))`` with ``x0_paired = x0[i]``, ``x1_paired = x1[j]``.
    """
    rows, cols = pair_indices(x0, x1, method, reg, reg_m, replace, generator, max_iter, tol, eps)
    return x0[rows], x1[cols], (rows, cols)


def pair_with_labels(x0: torch.Tensor, x1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor,
                     method: str = "exact", reg: float = 0.05, reg_m: float = 1.0, replace: bool = False,
                     within_labels: bool = False, generator: Optional[torch.Generator] = None):
    r""":func:`pair` that carries labels along: returns ``(x0[i], x1[j], y0[i], y1[j])``.

    Args:
        y0, y1: ``(n,)`` / ``(m,)`` labels (any dtype) of x0 and x1, on their device.
        within_labels: couple only samples with equal labels (conditional OT for class-conditional
            models): pairs across labels get a cost penalty larger than any within-label total, so
            the coupling is exact OT within each label whenever every label has as many x0 as x1
            samples, and otherwise uses the fewest cross-label pairs. Needs the dense n x m cost.
        Other arguments as in :func:`pair`.
    """
    for name, y, x in (("y0", y0, x0), ("y1", y1, x1)):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} must have one label per sample ({x.shape[0]},), got {tuple(y.shape)}")
    if not within_labels:
        rows, cols = pair_indices(x0, x1, method, reg, reg_m, replace, generator)
        return x0[rows], x1[cols], y0[rows], y1[cols]
    check_choice("method", method, METHODS)
    _check_batches(x0, x1, same_size=not replace)
    points_cost = pairwise_cost(as_points(x0), as_points(x1))
    C = points_cost.double()
    scale = float(C.max())  # NaN/Inf anywhere in C makes it non-finite: the one finiteness check
    if not math.isfinite(scale):
        raise_nonfinite_cost(x0, x1, points_cost.dtype)
    mismatch = y0.reshape(y0.shape[0], -1)[:, None, :] != y1.reshape(y1.shape[0], -1)[None, :, :]
    mismatch = mismatch.any(-1).to(device=C.device)
    penalty = scale * C.shape[0] + 1.0
    penalized = C + penalty * mismatch
    if method == "exact":
        cols_for_rows = solve_pair_cost(x0, x1, penalized)
        rows = _random_rows(x0.shape[0], generator, x0.device) if replace else torch.arange(x0.shape[0], device=x0.device)
        cols = cols_for_rows[rows]
    else:
        # eps relative to the within-label cost scale; the penalty makes cross-label entries vanish.
        result = sinkhorn(penalized, eps=reg * scale if scale > 0 else reg,
                          reg_m=reg_m if method == "unbalanced" else None)  # dense: the penalty needs it
        rows, cols = _sample_entropic(result, penalized, x0.shape[0], replace, generator, x0.device)
    return x0[rows], x1[cols], y0[rows], y1[cols]


def pair_trajectory(X: torch.Tensor, method: str = "exact", reg: float = 0.05, reg_m: float = 1.0,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Chain couplings across time points (torchcfm's ``sample_trajectory``, duplicate-free).

    Args:
        X: ``(batch, times, *dims)`` samples of each time point (rows of one time are unrelated to
            rows of another).
        method, reg, reg_m, generator: as in :func:`pair`; every step is a permutation.

    Returns:
        ``(batch, times, *dims)``: row k is one trajectory, X[k, 0] -> its partner at time 1 -> ...
    """
    if not isinstance(X, torch.Tensor) or X.dim() < 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty (batch, times, *dims) tensor, got {getattr(X, 'shape', X)}")
    index = torch.arange(X.shape[0], device=X.device)
    out = [X[:, 0]]
    for t in range(X.shape[1] - 1):
        _, cols = pair_indices(X[index, t], X[:, t + 1], method, reg, reg_m, False, generator)
        index = cols
        out.append(X[index, t + 1])
    return torch.stack(out, dim=1)
