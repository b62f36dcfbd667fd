"""Custom ops over the `sinkhorn` kernel family (twin of csrc/include/flowfast/sinkhorn.h).

A problem is either a dense cost ``(B, n, m)`` or point clouds ``x (B, n, d)``, ``y (B, m, d)`` with
``C_ij = ||x_i - y_j||^2`` computed inside the kernels; ``log_a (B, n)``, ``log_b (B, m)`` are log
marginal weights. Exactly one of ``cost`` / ``(x, y)`` is given.

The family's one validation point is :func:`validate_problem` (argument checks, no host read)
with :func:`problem_scale` (finiteness and the cost scale in one reduction: one host read on
CUDA); :func:`solve_and_value` runs either implementation of the backend switch.

Ops:
    ``flowfast::sinkhorn_solve``   potentials (f, g), iterations and marginal error; not differentiable.
    ``flowfast::sinkhorn_stats``   plan row/column masses and transport cost sum_ij P_ij C_ij.
    ``flowfast::sinkhorn_plan``    the dense plan (B, n, m).
    ``flowfast::sinkhorn_plan_features``  point clouds: masses and plan-weighted features (gradients).
    ``flowfast::sinkhorn_value``   (regularized OT value, transport cost) in one pass; the value is
                                   differentiable in cost / x / y by the envelope theorem
                                   (potentials held fixed: dValue/dC = P).
    ``flowfast::sinkhorn_sample``  one column per row by Gumbel-max, without forming the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._validate import (check_device_supported, check_finite, check_float, check_ndim, check_nonempty,
                                check_same_device)
from flowfast.ops import _switch

DENSE, SQEUCLIDEAN = 0, 1


@dataclass
class Problem:
    """A validated problem, batched: cost ``(B, n, m)`` or clouds ``x (B, n, d)``, ``y (B, m, d)``."""

    cost: Optional[torch.Tensor]
    x: Optional[torch.Tensor]
    y: Optional[torch.Tensor]
    batched: bool  # whether the caller's tensors had the batch dim

    @property
    def ref(self) -> torch.Tensor:
        return self.cost if self.cost is not None else self.x

    @property
    def sizes(self) -> tuple[int, int, int]:
        B, n, m, _ = _sizes(self.cost, self.x, self.y)
        return B, n, m

    def detached(self) -> tuple:
        det = lambda t: None if t is None else t.detach()  # noqa: E731
        return det(self.cost), det(self.x), det(self.y)

    def to(self, device: torch.device, dtype: Optional[torch.dtype] = None) -> "Problem":
        on = lambda t: None if t is None else t.to(device=device, dtype=dtype or t.dtype)  # noqa: E731
        return Problem(on(self.cost), on(self.x), on(self.y), self.batched)


def _check_array(name: str, t, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_device_supported(name, t)
    check_float(name, t)
    check_ndim(name, t, (2, 3), layout)
    check_nonempty(name, t)


def validate_problem(cost, x, y) -> Problem:
    """Checks types, dtypes, devices and shapes (not values: see :func:`problem_scale`) of a dense
    cost ``(B?, n, m)`` or of point clouds ``(B?, n, d)`` / ``(B?, m, d)``; adds the batch dim."""
    if (cost is None) == (x is None and y is None):
        raise ValueError("give either cost=(B?, n, m) or point clouds x=(B?, n, d), y=(B?, m, d), not both or neither")
    if cost is not None:
        _check_array("cost", cost, "(n, m) or (B, n, m)")
        batched = cost.dim() == 3
        return Problem(cost if batched else cost.unsqueeze(0), None, None, batched)
    if x is None or y is None:
        raise ValueError("point clouds need both x and y")
    for name, t in (("x", x), ("y", y)):
        _check_array(name, t, "(n, d) or (B, n, d)")
    check_same_device(x=x, y=y)
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must share a dtype, got {x.dtype} and {y.dtype}")
    if x.dim() != y.dim() or x.shape[-1] != y.shape[-1] or (x.dim() == 3 and x.shape[0] != y.shape[0]):
        raise ValueError(f"x (B?, n, d) and y (B?, m, d) must agree in B and d, got {tuple(x.shape)} and {tuple(y.shape)}")
    batched = x.dim() == 3
    return Problem(None, x if batched else x.unsqueeze(0), y if batched else y.unsqueeze(0), batched)


def sq_diameter_bound(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0-d float64 tensor, an upper bound of max_ij ||x_i - y_j||^2 in O((n + m) d), no host read:
    the smaller of the squared diagonal of both clouds' bounding box and (r_x + r_y)^2, radii
    around the joint mean (much tighter in high dimension). NaN/Inf inputs make it non-finite."""
    xs, ys = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    both = torch.cat([xs, ys])
    span = both.amax(0) - both.amin(0)
    center = both.mean(0, keepdim=True)
    radii = (xs - center).norm(dim=1).amax() + (ys - center).norm(dim=1).amax()
    box = (span**2).sum()
    return torch.minimum(box, radii * radii)  # propagates NaN


@dataclass
class Scale:
    """What eps is measured against: ``range`` (dense: max - min of the cost; clouds: the squared
    diameter bound) sets eps_start; ``max`` (dense: the largest cost; clouds: the bound) scales a
    relative regularization; ``min`` (dense: the smallest cost; clouds: 0) with ``max`` bounds the
    magnitude the potentials must resolve."""

    range: float
    max: float
    min: float = 0.0
    #: dense: ``(B,)`` per-problem shifts that are exact in the cost's dtype (:func:`exact_offsets`)
    offsets: Optional[torch.Tensor] = None
    #: the largest of ``|offsets|``: what a shifted solve adds back to f
    offset: float = 0.0

    @property
    def magnitude(self) -> float:
        return max(abs(self.min), abs(self.max))


def exact_offsets(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(B,)`` shifts c0 for problems with per-problem cost bounds ``lo``, ``hi`` such that C - c0
    is exact in the cost's dtype (Sterbenz: every entry within a factor 2 of c0 and of the same
    sign), else 0. Exactly the problems whose costs sit far from 0 (range <= |min|) get shifted;
    the others need no shift and must not be rounded."""
    exact = ((lo > 0) & (hi <= 2 * lo)) | ((hi < 0) & (2 * hi <= lo))
    return torch.where(exact, lo, torch.zeros_like(lo))


def problem_scale(problem: Problem) -> Scale:
    """:class:`Scale` of a validated problem, with its finiteness check: one reduction and one host
    read (the only one of a Sinkhorn call before its iterations). Names the non-finite input."""
    if problem.cost is not None:
        c = problem.cost.detach()
        lo_b, hi_b = c.amin(dim=(1, 2)), c.amax(dim=(1, 2))
        offsets = exact_offsets(lo_b, hi_b)
        lo, hi, offset = torch.stack([lo_b.amin(), hi_b.amax(), offsets.abs().amax()]).double().tolist()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite("cost", c)
        return Scale(hi - lo, hi, lo, offsets, offset)
    bound = float(sq_diameter_bound(problem.x.detach(), problem.y.detach()))
    if not math.isfinite(bound):
        check_finite("x", problem.x)
        check_finite("y", problem.y)
    return Scale(bound, bound)


def _problem(cost, x, y, log_a, log_b) -> tuple:
    """Descriptors only: the caller keeps every tensor alive (and laid out, see _prepare)."""
    if cost is not None:
        return (DENSE, _arrays.describe(cost), None, None, _arrays.describe(log_a), _arrays.describe(log_b))
    return (SQEUCLIDEAN, None, _arrays.describe(x), _arrays.describe(y), _arrays.describe(log_a),
            _arrays.describe(log_b))


def _reference_tensor(cost, x) -> torch.Tensor:
    return cost if cost is not None else x


def _sizes(cost, x, y) -> tuple[int, int, int, int]:
    if cost is not None:
        B, n, m = cost.shape
        return B, n, m, 0
    return x.shape[0], x.shape[1], y.shape[1], x.shape[2]


def _prepare(cost, x, y, *vectors):
    """The layouts the kernels assume: unit stride in the last dim of cost / x / y, and packed
    (B, k) vectors (the CUDA kernels index them as b * k + i). Returns (cost, x, y, *vectors); keep
    the returned tensors alive while the kernel runs (descriptors hold raw pointers)."""
    if cost is not None and cost.stride(-1) != 1:
        cost = cost.contiguous()
    if x is not None and x.stride(-1) != 1:
        x = x.contiguous()
    if y is not None and y.stride(-1) != 1:
        y = y.contiguous()
    return (cost, x, y, *(v.contiguous() for v in vectors))


@torch.library.custom_op("flowfast::sinkhorn_solve", mutates_args=())
def sinkhorn_solve(cost: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                   log_a: torch.Tensor, log_b: torch.Tensor, f_init: torch.Tensor, g_init: torch.Tensor,
                   eps: float, eps_start: float, eps_decay: float, reg_m: float, max_iter: int,
                   check_every: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cost, x, y, log_a, log_b = _prepare(cost, x, y, log_a, log_b)
    ref = _reference_tensor(cost, x)
    B, n, m, _ = _sizes(cost, x, y)
    f = f_init.clone().contiguous()
    g = g_init.clone().contiguous()
    n_iter = torch.zeros(B, dtype=torch.int64, device=ref.device)
    err = torch.zeros(B, dtype=ref.dtype, device=ref.device)
    nbytes = _C.sinkhorn_workspace_bytes(_arrays.device_code(ref.device), B, n, m)
    scratch = _arrays.workspace(nbytes, ref.device)
    _C.sinkhorn_solve(_problem(cost, x, y, log_a, log_b), _arrays.describe(f), _arrays.describe(g),
                      _arrays.describe(n_iter), _arrays.describe(err), float(eps), float(eps_start),
                      float(eps_decay), float(reg_m), int(max_iter), int(check_every), float(tol),
                      scratch.data_ptr(), nbytes, _arrays.stream_handle(ref.device))
    return f, g, n_iter, err


@sinkhorn_solve.register_fake
def _(cost, x, y, log_a, log_b, f_init, g_init, eps, eps_start, eps_decay, reg_m, max_iter, check_every, tol):
    ref = _reference_tensor(cost, x)
    B = ref.shape[0]
    return (torch.empty_like(f_init), torch.empty_like(g_init), ref.new_empty(B, dtype=torch.int64),
            ref.new_empty(B))


def _plan_call(cost, x, y, log_a, log_b, f, g, eps, *, plan=None, row_mass=None, col_mass=None,
               transport_cost=None, plan_y=None, plan_t_x=None) -> None:
    describe = lambda t: None if t is None else _arrays.describe(t)  # noqa: E731
    cost, x, y, log_a, log_b, f, g = _prepare(cost, x, y, log_a, log_b, f, g)
    ref = _reference_tensor(cost, x)
    _C.sinkhorn_plan(_problem(cost, x, y, log_a, log_b), _arrays.describe(f), _arrays.describe(g), float(eps), describe(plan), describe(row_mass),
                     describe(col_mass), describe(transport_cost), describe(plan_y), describe(plan_t_x),
                     _arrays.stream_handle(ref.device))


@torch.library.custom_op("flowfast::sinkhorn_stats", mutates_args=())
def sinkhorn_stats(cost: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                   log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cost, x, y = _prepare(cost, x, y)[:3]
    ref = _reference_tensor(cost, x)
    B, n, m, _ = _sizes(cost, x, y)
    row_mass = ref.new_empty(B, n)
    col_mass = ref.new_empty(B, m)
    transport = ref.new_empty(B)
    _plan_call(cost, x, y, log_a, log_b, f, g, eps, row_mass=row_mass, col_mass=col_mass,
               transport_cost=transport)
    return row_mass, col_mass, transport


@sinkhorn_stats.register_fake
def _(cost, x, y, log_a, log_b, f, g, eps):
    ref = _reference_tensor(cost, x)
    B, n, m, _ = _sizes(cost, x, y)
    return ref.new_empty(B, n), ref.new_empty(B, m), ref.new_empty(B)


@torch.library.custom_op("flowfast::sinkhorn_plan", mutates_args=())
def sinkhorn_plan(cost: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                  log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                  eps: float) -> torch.Tensor:
    cost, x, y = _prepare(cost, x, y)[:3]
    ref = _reference_tensor(cost, x)
    B, n, m, _ = _sizes(cost, x, y)
    plan = ref.new_empty(B, n, m)
    _plan_call(cost, x, y, log_a, log_b, f, g, eps, plan=plan)
    return plan


@sinkhorn_plan.register_fake
def _(cost, x, y, log_a, log_b, f, g, eps):
    ref = _reference_tensor(cost, x)
    B, n, m, _ = _sizes(cost, x, y)
    return ref.new_empty(B, n, m)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Generalized KL(p | q) summed over the last dim, p >= 0, q > 0."""
    return torch.xlogy(p, p / q).sum(-1) - p.sum(-1) + q.sum(-1)


def value_from_stats(row_mass, col_mass, transport, f, g, log_a, log_b, eps: float, reg_m: float):
    r"""Regularized OT value of the plan of (f, g), from its masses (same formulas as
    :func:`flowfast.reference.sinkhorn.value`).

    Balanced: the dual objective :math:`\sum_i f_i a_i + \sum_j g_j b_j - \varepsilon \sum P + \varepsilon (\sum a)(\sum b)`.
    Unbalanced: the primal :math:`\langle P, C\rangle + \varepsilon KL(P|ab) + \rho (KL(P1|a) + KL(P^\top 1|b))`
    via :math:`\sum P \log\frac{P}{ab} = (\sum_i f_i r_i + \sum_j g_j c_j - \langle P, C\rangle)/\varepsilon`.
    """
    a, b = log_a.exp(), log_b.exp()
    total_ab = eps * a.sum(-1) * b.sum(-1)
    if not reg_m > 0:
        return (f * a).sum(-1) + (g * b).sum(-1) - eps * row_mass.sum(-1) + total_ab
    value = (f * row_mass).sum(-1) + (g * col_mass).sum(-1) - eps * row_mass.sum(-1) + total_ab
    return value + reg_m * (_kl(row_mass, a) + _kl(col_mass, b))


@torch.library.custom_op("flowfast::sinkhorn_plan_features", mutates_args=())
def sinkhorn_plan_features(x: torch.Tensor, y: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor,
                           f: torch.Tensor, g: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Point clouds: (row_mass (B, n), col_mass (B, m), sum_j P_ij y_j (B, n, d), sum_i P_ij x_i (B, m, d))."""
    _, x, y = _prepare(None, x, y)[:3]
    B, n, m, d = _sizes(None, x, y)
    row_mass, col_mass = x.new_empty(B, n), x.new_empty(B, m)
    plan_y, plan_t_x = x.new_empty(B, n, d), x.new_empty(B, m, d)
    _plan_call(None, x, y, log_a, log_b, f, g, eps, row_mass=row_mass, col_mass=col_mass, plan_y=plan_y,
               plan_t_x=plan_t_x)
    return row_mass, col_mass, plan_y, plan_t_x


@sinkhorn_plan_features.register_fake
def _(x, y, log_a, log_b, f, g, eps):
    B, n, m, d = _sizes(None, x, y)
    return x.new_empty(B, n), x.new_empty(B, m), x.new_empty(B, n, d), x.new_empty(B, m, d)


@torch.library.custom_op("flowfast::sinkhorn_value", mutates_args=())
def sinkhorn_value(cost: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                   log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                   reg_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(value (B,), transport cost (B,)) from one pass over the plan; only value is differentiable."""
    row_mass, col_mass, transport = sinkhorn_stats(cost, x, y, log_a, log_b, f, g, eps)
    return value_from_stats(row_mass, col_mass, transport, f, g, log_a, log_b, eps, reg_m), transport


@sinkhorn_value.register_fake
def _(cost, x, y, log_a, log_b, f, g, eps, reg_m):
    ref = _reference_tensor(cost, x)
    return ref.new_empty(ref.shape[0]), ref.new_empty(ref.shape[0])


def _value_setup(ctx, inputs, output):
    cost, x, y, log_a, log_b, f, g, eps, reg_m = inputs
    ctx.save_for_backward(cost, x, y, log_a, log_b, f, g)
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1])


def _value_backward(ctx, grad_value, _grad_transport):
    cost, x, y, log_a, log_b, f, g = ctx.saved_tensors
    eps = ctx.eps
    grad_cost = grad_x = grad_y = None
    if cost is not None and ctx.needs_input_grad[0]:
        grad_cost = grad_value[:, None, None] * sinkhorn_plan(cost, None, None, log_a, log_b, f, g, eps)
    if x is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        row_mass, col_mass, plan_y, plan_t_x = sinkhorn_plan_features(x, y, log_a, log_b, f, g, eps)
        scale = 2.0 * grad_value[:, None, None]
        if ctx.needs_input_grad[1]:
            grad_x = scale * (row_mass[..., None] * x - plan_y)
        if ctx.needs_input_grad[2]:
            grad_y = scale * (col_mass[..., None] * y - plan_t_x)
    return grad_cost, grad_x, grad_y, None, None, None, None, None, None


torch.library.register_autograd("flowfast::sinkhorn_value", _value_backward, setup_context=_value_setup)


@torch.library.custom_op("flowfast::sinkhorn_sample", mutates_args=())
def sinkhorn_sample(cost: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                    log_a: torch.Tensor, log_b: torch.Tensor, g: torch.Tensor, eps: float, seed: int,
                    offset: int) -> torch.Tensor:
    cost, x, y, log_a, log_b, g = _prepare(cost, x, y, log_a, log_b, g)
    ref = _reference_tensor(cost, x)
    B, n, _, _ = _sizes(cost, x, y)
    cols = torch.empty(B, n, dtype=torch.int64, device=ref.device)
    _C.sinkhorn_sample(_problem(cost, x, y, log_a, log_b), _arrays.describe(g), float(eps),
                       int(seed), int(offset), _arrays.describe(cols), _arrays.stream_handle(ref.device))
    return cols


@sinkhorn_sample.register_fake
def _(cost, x, y, log_a, log_b, g, eps, seed, offset):
    ref = _reference_tensor(cost, x)
    return ref.new_empty(ref.shape[0], ref.shape[1], dtype=torch.int64)


def solve_and_value(impl: str, problem: Problem, log_a, log_b, eps: float, eps_start: float, eps_decay: float,
                    reg_m: float, max_iter: int, check_every: int, tol: float, init=None):
    """Solve, then the value (differentiable in cost / x / y) and transport cost, by the backend
    switch's implementation ("kernel" or "torch"). ``init``: None (cold start) or the starting
    ``(f (B, n), g (B, m))`` in the problem's dtype and device. Returns (f, g, n_iter,
    marginal_error, value, transport), all batched."""
    cost, x, y = problem.cost, problem.x, problem.y
    cost_d, x_d, y_d = problem.detached()
    B, n, m = problem.sizes
    if init is None:
        f0 = torch.zeros(B, n, dtype=problem.ref.dtype, device=problem.ref.device)
        g0 = torch.zeros(B, m, dtype=problem.ref.dtype, device=problem.ref.device)
    else:
        f0, g0 = init
    args = (eps, eps_start, eps_decay, reg_m, max_iter, check_every, tol)
    if impl == "torch":
        ref = _switch.reference("sinkhorn")
        with torch.no_grad():
            f, g, n_iter, err = ref.solve(cost_d, x_d, y_d, log_a, log_b, f0, g0, *args)
            _, _, transport = ref.stats(cost_d, x_d, y_d, log_a, log_b, f, g, eps)
        value = ref.value(cost, x, y, log_a, log_b, f, g, eps, reg_m)
        return f, g, n_iter, err, value, transport
    with torch.no_grad():
        f, g, n_iter, err = sinkhorn_solve(cost_d, x_d, y_d, log_a, log_b, f0, g0, *args)
    value, transport = sinkhorn_value(cost, x, y, log_a, log_b, f, g, eps, reg_m)
    return f, g, n_iter, err, value, transport


def implementation(impl: str):
    """``plan``, ``stats`` and ``sample`` with the ops' signatures, from the backend switch's
    implementation ("kernel": these custom ops; "torch": the reference)."""
    if impl == "torch":
        ref = _switch.reference("sinkhorn")
        return ref.plan, ref.stats, ref.sample
    return sinkhorn_plan, sinkhorn_stats, sinkhorn_sample


def resolve_backend(backend: str, device: torch.device) -> tuple[str, torch.device]:
    """The family's backend switch (:func:`flowfast.ops._switch.resolve`)."""
    return _switch.resolve(backend, device)
