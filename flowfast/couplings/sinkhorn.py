"""Batched log-domain Sinkhorn on a dense cost or on point clouds (online squared-Euclidean cost)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

import numpy as np
import torch

from flowfast import ops, reference
from flowfast._core import (check_bool, check_choice, check_device_supported, check_finite, check_float,
                            check_ndim, check_nonempty, check_same_device)

BACKENDS = ("auto", "cpu", "cuda", "torch")
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


def check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


@dataclass
class SinkhornResult:
    r"""Output of :func:`sinkhorn`. Shapes drop the batch dim when the input had none.

    Attributes:
        f: ``(B, n)`` row potentials. g: ``(B, m)`` column potentials; the plan is
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
    _backend: str
    _generator: Optional[torch.Generator] = None

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.f.device)
        return t if self._batched else t[0]

    def plan(self) -> torch.Tensor:
        """The dense plan ``(B, n, m)`` (materialized on request only)."""
        cost, x, y, log_a, log_b, f, g = self._inputs
        fn = reference.sinkhorn.plan if self._backend == "torch" else ops.sinkhorn.sinkhorn_plan
        with torch.no_grad():
            out = fn(cost, x, y, log_a, log_b, f, g, self.eps)
        return self._squeeze(out.to(f.dtype))

    def marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column masses of the plan, ``(B, n)`` and ``(B, m)``, without forming it."""
        cost, x, y, log_a, log_b, f, g = self._inputs
        fn = reference.sinkhorn.stats if self._backend == "torch" else ops.sinkhorn.sinkhorn_stats
        with torch.no_grad():
            row_mass, col_mass, _ = fn(cost, x, y, log_a, log_b, f, g, self.eps)
        return self._squeeze(row_mass.to(f.dtype)), self._squeeze(col_mass.to(f.dtype))

    def sample(self, generator: Optional[torch.Generator] = None,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""One column per row, :math:`j \sim P(\cdot \mid i) \propto b_j \exp((g_j - C_{ij})/\varepsilon)`,
        by Gumbel-max on the device without forming the plan.

        Args:
            generator: draws the Philox (seed, offset); the same generator state gives the same samples.
            rows: optional ``(k,)`` int64 row indices (repeats allowed) to sample for, instead of
                every row; applied to every problem of a batch.

        Returns:
            ``(B, n)`` (or ``(B, k)``) int64 column indices.
        """
        generator = check_generator(generator) if generator is not None else self._generator
        seed, offset = draw_seed(generator)
        cost, x, y, log_a, log_b, _, g = self._inputs
        if rows is not None:
            if not isinstance(rows, torch.Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
                raise TypeError("rows must be a 1-D int64 tensor of row indices")
            n = log_a.shape[1]
            if rows.numel() == 0 or bool((rows < 0).any()) or bool((rows >= n).any()):
                raise ValueError(f"rows must be non-empty indices in [0, {n})")
            rows = rows.to(log_a.device)
            cost = None if cost is None else cost[:, rows]
            x = None if x is None else x[:, rows]
            log_a = log_a[:, rows]
        fn = reference.sinkhorn.sample if self._backend == "torch" else ops.sinkhorn.sinkhorn_sample
        return self._squeeze(fn(cost, x, y, log_a, log_b, g, self.eps, seed, offset))


def draw_seed(generator: Optional[torch.Generator]) -> tuple[int, int]:
    """(seed, offset) for the Philox kernels from a torch generator (torch's CPU RNG if None).

    CPU generators are sampled; CUDA generators (Philox themselves) lend their seed and current
    offset, which is then advanced: no device-to-host read, so a training step does not sync."""
    if generator is not None and generator.device.type == "cuda":
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
        return generator.initial_seed(), offset
    words = torch.randint(0, 2**62, (2,), generator=generator, dtype=torch.int64)
    return int(words[0]), int(words[1])


def _as_batched(name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t if t.dim() == ndim + 1 else t.unsqueeze(0)


def _log_weights(name: str, w, batch: int, size: int, ref: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((batch, size), -math.log(size), dtype=ref.dtype, device=ref.device)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    check_float(name, w)
    if w.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {w.dtype} but the problem is {ref.dtype}")
    check_same_device(**{"cost/x": ref, name: w})
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(batch, -1)
    if tuple(w.shape) != (batch, size):
        raise ValueError(f"{name} must have shape ({size},) or ({batch}, {size}), got {tuple(w.shape)}")
    check_finite(name, w)
    if not bool((w > 0).all()):
        raise ValueError(f"{name} must be strictly positive (drop zero-weight points instead)")
    return w.log().contiguous()


def sinkhorn(cost: Optional[torch.Tensor] = None, *, x: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None, a: Optional[torch.Tensor] = None,
             b: Optional[torch.Tensor] = None, eps: float, reg_m: Optional[float] = None,
             max_iter: int = 1000, tol: float = 1e-6, eps_scaling: bool = True, check_every: int = 5,
             backend: str = "auto", generator: Optional[torch.Generator] = None) -> SinkhornResult:
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

    Returns:
        :class:`SinkhornResult`.

    Host synchronizations on CUDA: the NaN/Inf checks and eps_start (one reduction each), and a
    4-byte convergence flag read every ``check_every`` iterations.
    """
    check_choice("backend", backend, BACKENDS)
    eps = _positive_float("eps", eps)
    reg_m = _positive_float("reg_m", reg_m, allow_none=True)
    max_iter = _check_int("max_iter", max_iter, 1)
    check_every = _check_int("check_every", check_every, 1)
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, Real):
        raise TypeError(f"tol must be a number, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    eps_scaling = check_bool("eps_scaling", eps_scaling)
    generator = check_generator(generator)

    if (cost is None) == (x is None and y is None):
        raise ValueError("give either cost=(B?, n, m) or point clouds x=(B?, n, d), y=(B?, m, d), not both or neither")
    if cost is not None:
        if not isinstance(cost, torch.Tensor):
            raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
        check_device_supported("cost", cost)
        check_float("cost", cost)
        check_ndim("cost", cost, (2, 3), "(n, m) or (B, n, m)")
        check_nonempty("cost", cost)
        check_finite("cost", cost)
        batched = cost.dim() == 3
        cost = _as_batched("cost", cost, 2)
        ref = cost
        B, n, m = cost.shape
    else:
        if x is None or y is None:
            raise ValueError("point clouds need both x and y")
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            check_device_supported(name, t)
            check_float(name, t)
            check_ndim(name, t, (2, 3), "(n, d) or (B, n, d)")
            check_nonempty(name, t)
        check_same_device(x=x, y=y)
        if x.dtype != y.dtype:
            raise TypeError(f"x and y must share a dtype, got {x.dtype} and {y.dtype}")
        if x.dim() != y.dim() or x.shape[-1] != y.shape[-1] or (x.dim() == 3 and x.shape[0] != y.shape[0]):
            raise ValueError(f"x (B?, n, d) and y (B?, m, d) must agree in B and d, got {tuple(x.shape)} and {tuple(y.shape)}")
        check_finite("x", x)
        check_finite("y", y)
        batched = x.dim() == 3
        x, y = _as_batched("x", x, 2), _as_batched("y", y, 2)
        ref = x
        B, n, m = x.shape[0], x.shape[1], y.shape[1]

    log_a = _log_weights("a", a, B, n, ref)
    log_b = _log_weights("b", b, B, m, ref)
    if reg_m is None:
        mass_a, mass_b = log_a.exp().sum(-1), log_b.exp().sum(-1)
        if not torch.allclose(mass_a, mass_b, rtol=1e-5, atol=0.0):
            raise ValueError("balanced Sinkhorn needs a.sum() == b.sum() for every problem; pass reg_m for unbalanced OT")

    # The cost scale sets eps_start and the smallest eps this dtype resolves.
    if cost is not None:
        scale, what = float((cost.detach().amax() - cost.detach().amin()).double()), "cost"
    else:
        scale, what = reference.sinkhorn.sq_diameter(x.detach(), y.detach()), "x and y"
    finfo = torch.finfo(ref.dtype)
    if not math.isfinite(scale) or scale > finfo.max / 16:
        raise ValueError(f"the range of {what} overflows {ref.dtype} ({scale:.3g}); rescale the inputs")
    if eps < MIN_RELATIVE_EPS[ref.dtype] * scale or eps < finfo.tiny:
        raise ValueError(f"eps={eps:.3g} is too small for {ref.dtype} with a cost range of {scale:.3g} "
                         f"(at least {MIN_RELATIVE_EPS[ref.dtype]:.0e} x range); use float64 or a larger eps")
    if eps > finfo.max / 16:
        raise ValueError(f"eps={eps:.3g} overflows {ref.dtype}")
    eps_start = max(scale, eps) if eps_scaling else eps
    reg = reg_m if reg_m is not None else 0.0

    if backend == "cuda" and ref.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs inputs on a CUDA device, got {ref.device}")
    impl = reference.sinkhorn if backend == "torch" else None
    run_device = ref.device
    if backend == "cpu" and ref.device.type != "cpu":
        run_device = torch.device("cpu")

    def on(t):
        return None if t is None else t.to(run_device)

    cost_d, x_d, y_d, la_d, lb_d = on(cost), on(x), on(y), on(log_a), on(log_b)
    f0 = torch.zeros(B, n, dtype=ref.dtype, device=run_device)
    g0 = torch.zeros(B, m, dtype=ref.dtype, device=run_device)
    det = lambda t: None if t is None else t.detach()  # noqa: E731
    with torch.no_grad():
        solver = impl.solve if impl is not None else ops.sinkhorn.sinkhorn_solve
        f, g, n_iter, err = solver(det(cost_d), det(x_d), det(y_d), la_d, lb_d, f0, g0, eps, eps_start, EPS_DECAY,
                                   reg, max_iter, check_every, float(tol))
        if impl is not None:
            _, _, transport = impl.stats(det(cost_d), det(x_d), det(y_d), la_d, lb_d, f, g, eps)
    if impl is not None:
        value = impl.value(cost_d, x_d, y_d, la_d, lb_d, f, g, eps, reg)
    else:
        value, transport = ops.sinkhorn.sinkhorn_value(cost_d, x_d, y_d, la_d, lb_d, f, g, eps, reg)

    def back(t):
        return t.to(ref.device)

    squeeze = (lambda t: t) if batched else (lambda t: t[0])
    return SinkhornResult(
        f=squeeze(back(f)), g=squeeze(back(g)), n_iter=squeeze(back(n_iter)), marginal_error=squeeze(back(err)),
        cost=squeeze(back(transport.to(ref.dtype))), value=squeeze(back(value.to(ref.dtype))), eps=eps, reg_m=reg_m,
        _inputs=(det(cost_d), det(x_d), det(y_d), la_d, lb_d, f, g), _batched=batched,
        _backend="torch" if impl is not None else "kernel", _generator=generator)
