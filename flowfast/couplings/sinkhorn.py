"""Batched log-domain Sinkhorn on a dense cost or on point clouds (online squared-Euclidean cost).

The public :func:`sinkhorn` parses its options, lets the family's op layer validate the problem
(:func:`flowfast.ops.sinkhorn.validate_problem`, one host read for finiteness and scale), builds
the marginals and the eps schedule, and runs the backend switch's implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

import numpy as np
import torch

from flowfast import ops
from flowfast._interop import accepts_arrays
from flowfast._rng import check_generator, draw_seed
from flowfast._validate import check_bool, check_choice, check_finite, check_float, check_same_device

MAX_INT = 2**62
# Smallest eps / cost-range the potentials of each dtype resolve: below it the plan's exponent
# (f_i + g_j - C_ij) / eps carries more rounding error than it can absorb and may overflow.
MIN_RELATIVE_EPS = {torch.float32: 1e-6, torch.float64: 1e-14}
EPS_DECAY = 0.5  # eps halves every iteration from eps_start down to eps (GeomLoss-style annealing)


def _positive_float(name: str, value, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not minimum <= value <= MAX_INT:
        raise ValueError(f"{name} must be in [{minimum}, 2**62], got {value}")
    return value


@dataclass
class SolveOptions:
    """The scalar arguments of :func:`sinkhorn`, checked."""

    eps: float
    reg_m: Optional[float]
    max_iter: int
    tol: float
    eps_scaling: bool
    check_every: int
    backend: str

    @classmethod
    def parse(cls, eps, reg_m, max_iter, tol, eps_scaling, check_every, backend) -> "SolveOptions":
        check_choice("backend", backend, ops.BACKENDS)
        if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, Real):
            raise TypeError(f"tol must be a number, got {type(tol).__name__}")
        if not (math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        return cls(eps=_positive_float("eps", eps), reg_m=_positive_float("reg_m", reg_m, allow_none=True),
                   max_iter=_check_int("max_iter", max_iter, 1), tol=float(tol),
                   eps_scaling=check_bool("eps_scaling", eps_scaling),
                   check_every=_check_int("check_every", check_every, 1), backend=backend)


@dataclass
class SinkhornResult:
    r"""Output of :func:`sinkhorn`. Shapes drop the batch dim when the input had none.

    Attributes:
        f: ``(B, n)`` row potentials. g: ``(B, m)`` column potentials, in the input's dtype, or
            float64 for a float32 problem whose potentials float32 cannot carry to 1e-4 eps: one
            whose potentials span more than about 1700 eps (the cost's range for a balanced dense
            problem, solved shifted by its minimum; else its largest |cost|), solved in float64
            throughout, or a balanced dense one whose costs sit far from 0 (f gets the shift
            back in float64); the plan is
            :math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`.
        n_iter: ``(B,)`` int64 iterations run (eps-scaling iterations included).
        marginal_error: ``(B,)`` L1 error of the plan's column marginal (rows are exact after the
            last update); unbalanced: row + column deviation from a and b (informative only).
        cost: ``(B,)`` transport cost :math:`\sum_{ij} P_{ij} C_{ij}` (not differentiable).
        value: ``(B,)`` regularized OT value :math:`\langle P, C\rangle + \varepsilon KL(P|a\otimes b)`
            (+ the marginal KL terms when unbalanced), differentiable w.r.t. ``cost``/``x``/``y``
            by the envelope theorem (gradient = the plan, potentials held fixed).
        eps, reg_m: the regularization actually used.
    """

    f: torch.Tensor
    g: torch.Tensor
    n_iter: torch.Tensor
    marginal_error: torch.Tensor
    cost: torch.Tensor
    value: torch.Tensor
    eps: float
    reg_m: Optional[float]
    _inputs: tuple
    _batched: bool
    _impl: str  # the backend switch's implementation: "kernel" or "torch"
    _generator: Optional[torch.Generator] = None

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.f.device)
        return t if self._batched else t[0]

    def plan(self) -> torch.Tensor:
        """The dense plan ``(B, n, m)`` (materialized on request only)."""
        cost, x, y, log_a, log_b, f, g = self._inputs
        fn = ops.sinkhorn.implementation(self._impl)[0]
        with torch.no_grad():
            out = fn(cost, x, y, log_a, log_b, f, g, self.eps)
        return self._squeeze(out.to(self.cost.dtype))

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column masses of the plan, ``(B, n)`` and ``(B, m)``, without forming it."""
        cost, x, y, log_a, log_b, f, g = self._inputs
        fn = ops.sinkhorn.implementation(self._impl)[1]
        with torch.no_grad():
            row_mass, col_mass, _ = fn(cost, x, y, log_a, log_b, f, g, self.eps)
        return self._squeeze(row_mass.to(self.cost.dtype)), self._squeeze(col_mass.to(self.cost.dtype))

    def sample(self, generator: Optional[torch.Generator] = None,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""One column per row, :math:`j \sim P(\cdot \mid i) \propto b_j \exp((g_j - C_{ij})/\varepsilon)`,
        by Gumbel-max on the device without forming the plan.

        Args:
            generator: draws the Philox (seed, offset); the same generator state gives the same samples.
            rows: optional ``(k,)`` int64 (or int32) row indices (repeats allowed) to sample for, instead of
                every row; applied to every problem of a batch.

        Returns:
            ``(B, n)`` (or ``(B, k)``) int64 column indices.
        """
        generator = check_generator(generator) if generator is not None else self._generator
        seed, offset = draw_seed(generator)
        cost, x, y, log_a, log_b, _, g = self._inputs
        if rows is not None:
            if not isinstance(rows, torch.Tensor) or rows.dtype not in (torch.int64, torch.int32) or rows.dim() != 1:
                raise TypeError("rows must be a 1-D int64 or int32 tensor of row indices")  # int32: JAX's default
            n = log_a.shape[1]
            if rows.numel() == 0 or bool((rows < 0).any()) or bool((rows >= n).any()):
                raise ValueError(f"rows must be non-empty indices in [0, {n})")
            rows = rows.to(log_a.device)
            cost = None if cost is None else cost[:, rows]
            x = None if x is None else x[:, rows]
            log_a = log_a[:, rows]
        fn = ops.sinkhorn.implementation(self._impl)[2]
        return self._squeeze(fn(cost, x, y, log_a, log_b, g, self.eps, seed, offset))


def _batched_vector(name: str, t, batch: int, size: int, ref: torch.Tensor, kind: str = "a torch.Tensor"):
    """A per-problem vector argument checked: a finite float tensor on ref's device, ``(size,)``
    (shared by the batch) or ``(batch, size)``; returned ``(batch, size)``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be {kind}, got {type(t).__name__}")
    check_float(name, t)
    check_same_device(**{"cost/x": ref, name: t})
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(batch, -1)
    if tuple(t.shape) != (batch, size):
        raise ValueError(f"{name} must have shape ({size},) or ({batch}, {size}), got {tuple(t.shape)}")
    check_finite(name, t)
    return t


def _log_weights(name: str, w, batch: int, size: int, ref: torch.Tensor) -> torch.Tensor:
    if w is None:  # float64: the solve casts it to its dtype (float32 rounding of 1/n is 3e-8 relative)
        return torch.full((batch, size), -math.log(size), dtype=torch.float64, device=ref.device)
    if isinstance(w, torch.Tensor) and w.is_floating_point() and w.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {w.dtype} but the problem is {ref.dtype}")
    w = _batched_vector(name, w, batch, size, ref, "a torch.Tensor or None")
    if not bool((w > 0).all()):
        raise ValueError(f"{name} must be strictly positive (drop zero-weight points instead)")
    return w.log().contiguous()


def _marginals(problem, a, b, balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_a (B, n), log_b (B, m)); uniform when None (then trivially balanced: no check)."""
    B, n, m = problem.sizes
    log_a = _log_weights("a", a, B, n, problem.ref)
    log_b = _log_weights("b", b, B, m, problem.ref)
    if balanced and (a is not None or b is not None):
        mass_a, mass_b = log_a.double().exp().sum(-1), log_b.double().exp().sum(-1)
        if not torch.allclose(mass_a, mass_b, rtol=1e-5, atol=0.0):
            raise ValueError("balanced Sinkhorn needs a.sum() == b.sum() for every problem; pass reg_m for unbalanced OT")
    return log_a, log_b


def _eps_schedule(problem, scale, opts: SolveOptions, shifted: bool) -> tuple[float, float]:
    """(eps_start, decay) of the eps-scaling schedule, after checking the target eps against the dtype and the
    magnitude the potentials must resolve: the cost's range when the solve runs on the cost shifted
    to start at 0 (balanced dense problems), else the largest |cost|."""
    dtype = problem.ref.dtype
    what = "cost" if problem.cost is not None else "x and y"
    finfo = torch.finfo(dtype)
    if not math.isfinite(scale.range) or scale.range > finfo.max / 16:
        raise ValueError(f"the range of {what} overflows {dtype} ({scale.range:.3g}); rescale the inputs")
    eps = opts.eps
    resolved, kind = (scale.range, "range") if shifted else (scale.magnitude, "magnitude")
    if eps < MIN_RELATIVE_EPS[dtype] * resolved or eps < finfo.tiny:
        raise ValueError(f"eps={eps:.3g} is too small for {dtype} with a cost {kind} of {resolved:.3g} "
                         f"(at least {MIN_RELATIVE_EPS[dtype]:.0e} x {kind}); use float64 or a larger eps")
    if eps > finfo.max / 16:
        raise ValueError(f"eps={eps:.3g} overflows {dtype}")
    eps_start = max(scale.range, eps) if opts.eps_scaling else eps
    scaling_steps = math.ceil(math.log(eps_start / eps) / math.log(1 / EPS_DECAY)) if eps_start > eps else 0
    if opts.max_iter > scaling_steps:
        return eps_start, EPS_DECAY
    # The schedule would end above the target eps, and the plan at eps of potentials solved at a
    # larger eps overflows: compress it so the last iteration runs at eps (one iteration: no scaling).
    if opts.max_iter == 1:
        return eps, EPS_DECAY
    return eps_start, (eps / eps_start) ** (1.0 / (opts.max_iter - 1))


# float32 potentials resolve about 2^-24 of their magnitude; returned ones that must carry a
# shift larger than this many eps are returned in float64 (see solve_problem).
_FLOAT32_OFFSET_LIMIT = 1e-4 * 2**24


def _check_finite_outputs(err, value, transport, dtype) -> None:
    """An unbalanced plan can carry more mass than the dtype holds (costs far below 0): say so
    instead of returning inf/NaN. One host read."""
    totals = torch.stack([err.double().sum(), value.double().sum(), transport.double().sum()])
    if not bool(torch.isfinite(totals).all()):
        raise ValueError(f"the Sinkhorn plan's mass or cost overflows {str(dtype).replace('torch.', '')} (unbalanced "
                         "OT on costs far below 0 gives a plan mass of about exp(-min C / (eps + 2 reg_m))); shift "
                         "the costs to be >= 0, raise reg_m, or use float64")


def _initial_potentials(init, problem, offset, run_device, run_dtype):
    """``init=(f, g)`` checked and brought to the solve's frame: batched, on the run device and
    dtype, f minus the shift a shifted solve subtracted from the cost (None: a cold start)."""
    if init is None:
        return None
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise TypeError("init must be a (f, g) pair of potentials, e.g. (result.f, result.g) of an earlier solve")
    B, n, m = problem.sizes
    out = []
    for name, t, size in (("init f", init[0], n), ("init g", init[1], m)):
        out.append(_batched_vector(name, t, B, size, problem.ref).detach().double())
    f, g = out
    if offset is not None:
        f = f - offset.double()[:, None]
    return f.to(run_device, run_dtype).contiguous(), g.to(run_device, run_dtype).contiguous()


def solve_problem(problem, a, b, scale, opts: SolveOptions,
                  generator: Optional[torch.Generator] = None, init=None) -> SinkhornResult:
    """:func:`sinkhorn` on a problem validated by the op layer, ``scale`` its
    :class:`flowfast.ops.sinkhorn.Scale`.

    Balanced dense problems whose costs sit far from 0 are solved on the cost shifted by its
    per-problem minimum c0 (exactly, see :func:`flowfast.ops.sinkhorn.exact_offsets`; the plan
    does not change, f does by c0): the potentials then only span the cost's range, which float32
    resolves. The returned f adds c0 back, in float64 when a float32 f could not hold it to
    1e-4 eps; errors, cost and value are those of the returned potentials."""
    balanced = opts.reg_m is None
    log_a, log_b = _marginals(problem, a, b, balanced=balanced)
    shift = balanced and problem.cost is not None
    eps_start, decay = _eps_schedule(problem, scale, opts, shifted=shift)
    device, dtype = problem.ref.device, problem.ref.dtype
    impl, run_device = ops.sinkhorn.resolve_backend(opts.backend, device)
    offset = scale.offsets if shift else None
    if offset is not None:
        problem = ops.sinkhorn.Problem(problem.cost - offset[:, None, None], None, None, problem.batched)
    # float32 potentials span the cost's range (shifted) or magnitude (not): past
    # _FLOAT32_OFFSET_LIMIT eps their rounding moves the plan by more than 1e-4 relative, between
    # iterations as in the output, so such problems are solved in float64.
    span = scale.range if offset is not None else scale.magnitude
    run_dtype = torch.float64 if dtype == torch.float32 and span > _FLOAT32_OFFSET_LIMIT * opts.eps else dtype
    start = _initial_potentials(init, problem, offset, run_device, run_dtype)
    run = problem.to(run_device, run_dtype)
    la, lb = log_a.to(run_device, run_dtype), log_b.to(run_device, run_dtype)
    reg = opts.reg_m if opts.reg_m is not None else 0.0
    f, g, n_iter, err, value, transport = ops.sinkhorn.solve_and_value(
        impl, run, la, lb, opts.eps, eps_start, decay, reg, opts.max_iter, opts.check_every, opts.tol, start)
    if not balanced:
        _check_finite_outputs(err.to(dtype), value.to(dtype), transport.to(dtype), dtype)
    f_out, g_out = f.to(device), g.to(device)
    if offset is not None:
        mass = log_a.exp().sum(-1)
        value = value + (offset * mass).to(device=value.device, dtype=value.dtype)
        transport = transport + (offset * mass).to(device=transport.device, dtype=transport.dtype)
        wide = run_dtype == torch.float64 or scale.offset > _FLOAT32_OFFSET_LIMIT * opts.eps
        out_dtype = torch.float64 if wide else dtype
        f_out = (f_out.double() + offset.double()[:, None]).to(out_dtype)
        g_out = g_out.to(out_dtype)

    def out(t):
        t = t.to(device)
        return t if problem.batched else t[0]

    return SinkhornResult(
        f=out(f_out), g=out(g_out), n_iter=out(n_iter), marginal_error=out(err.to(dtype)), cost=out(transport.to(dtype)),
        value=out(value.to(dtype)), eps=opts.eps, reg_m=opts.reg_m, _inputs=(*run.detached(), la, lb, f, g),
        _batched=problem.batched, _impl=impl, _generator=generator)


@accepts_arrays("cost", "x", "y", "a", "b", sequences=("init",))
def sinkhorn(cost: Optional[torch.Tensor] = None, *, x: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None, a: Optional[torch.Tensor] = None,
             b: Optional[torch.Tensor] = None, eps: float, reg_m: Optional[float] = None,
             max_iter: int = 1000, tol: float = 1e-6, eps_scaling: bool = True, check_every: int = 5,
             backend: str = "auto", generator: Optional[torch.Generator] = None, init=None) -> SinkhornResult:
    r"""Entropic optimal transport by log-domain Sinkhorn iterations, batched, never NaN.

    Solves :math:`\min_P \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \mid a \otimes b)` subject to
    :math:`P1 = a,\ P^\top 1 = b` (or, with ``reg_m``, KL-penalized marginals weighted ``reg_m``).

    Args:
        cost: dense costs ``(n, m)`` or ``(B, n, m)``. Or, instead:
        x, y: point clouds ``(n, d)`` / ``(m, d)`` or ``(B, n, d)`` / ``(B, m, d)`` with
            :math:`C_{ij} = \|x_i - y_j\|^2` computed on the fly (memory O((n + m) d), no n x m matrix).
        a, b: positive marginal weights ``(n,)``/``(B, n)`` and ``(m,)``/``(B, m)``; uniform if None.
            Balanced problems need ``a.sum() == b.sum()``.
        eps: regularization, absolute (same units as the cost). Use ``eps = r * C.max()`` for a
            relative choice (what :func:`flowfast.couplings.pair` does with its ``reg``).
        reg_m: KL marginal relaxation weight (unbalanced OT, POT's ``reg_m``); None = balanced.
        max_iter: iteration cap (eps-scaling iterations included).
        tol: stop when the L1 column-marginal error is <= tol (balanced) or the largest potential
            change is <= tol * eps (unbalanced); tested every ``check_every`` iterations at the
            target eps. In float32 the reachable error floor is about 1e-6 per unit mass.
        eps_scaling: start at eps_start = the cost range (dense) or the squared diameter of the
            clouds' bounding box, halving eps every iteration down to ``eps``: stable and fast at
            small eps. False: every iteration at ``eps``.
        backend: "auto" (kernels on the input's device), "cpu", "cuda", or "torch" (dense reference).
        generator: default generator for :meth:`SinkhornResult.sample`.
        init: warm start: ``(f, g)`` potentials ``(n,)``/``(B, n)`` and ``(m,)``/``(B, m)`` in this
            function's convention (e.g. ``(r.f, r.g)`` of an earlier solve); cold start (zeros)
            if None. The eps-scaling schedule still starts at eps_start; pass
            ``eps_scaling=False`` to continue at ``eps`` from them. POT's ``warmstart`` holds
            ``(log u, log v)``, which are ``log a + f / eps`` and ``log b + g / eps``.

    Returns:
        :class:`SinkhornResult`; for another array library's inputs (numpy, cupy, JAX, DLPack) an
        :class:`flowfast._interop.ArrayResult` over it whose arrays and method results are that
        library's (``.torch``: the torch result).

    Host synchronizations on CUDA: one reduction for the NaN/Inf check and the cost scale (plus
    one per given weight vector), and a 4-byte convergence flag read every ``check_every``
    iterations.
    """
    opts = SolveOptions.parse(eps, reg_m, max_iter, tol, eps_scaling, check_every, backend)
    generator = check_generator(generator)
    problem = ops.sinkhorn.validate_problem(cost, x, y)
    scale = ops.sinkhorn.problem_scale(problem)
    return solve_problem(problem, a, b, scale, opts, generator, init)
