"""torchcfm-compatible coupling API (``torchcfm.optimal_transport``), backed by flowfast kernels.

Same class, method names and signatures as torchcfm 1.0.x, so ``from flowfast.compat.torchcfm
import OTPlanSampler`` is a one-line switch. Differences, all deliberate:

- Everything runs on the inputs' device; no ``.cpu().numpy()`` round trip. ``get_map`` returns a
  torch tensor on that device (torchcfm returns a numpy array).
- Randomness comes from torch (pass ``generator=`` to the sampling methods for reproducibility)
  instead of numpy's global RNG.
- Sinkhorn is log-domain (never NaN). Where torchcfm silently reverts to the uniform plan after a
  numerical failure, flowfast cannot fail that way; if the plan has not converged (marginal error
  above 1e-3) a ``UserWarning`` says so when ``warn=True``.
- ``method="partial"`` delegates to POT's ``ot.partial.entropic_partial_wasserstein`` on the CPU
  (there is no flowfast kernel for partial OT); it needs POT installed.
- ``num_threads`` is accepted and ignored (the CPU kernels use OpenMP threads).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from flowfast import ops, paths
from flowfast._validate import check_choice
from flowfast.couplings.assignment import linear_assignment, pairwise_cost
from flowfast.couplings.cost import flat
from flowfast.couplings.sinkhorn import sinkhorn

__all__ = [
    "ConditionalFlowMatcher",
    "ExactOptimalTransportConditionalFlowMatcher",
    "OTPlanSampler",
    "SchrodingerBridgeConditionalFlowMatcher",
    "TargetConditionalFlowMatcher",
    "VariancePreservingConditionalFlowMatcher",
    "pad_t_like_x",
    "wasserstein",
]

_METHODS = ("exact", "sinkhorn", "unbalanced", "partial")


class OTPlanSampler:
    """Minibatch OT plans and pair sampling with torchcfm's interface.

    Args:
        method: "exact", "sinkhorn", "unbalanced" or "partial".
        reg: entropic regularization, ABSOLUTE on the squared-distance cost (torchcfm semantics;
            with ``normalize_cost=True`` the cost is first divided by its max).
        reg_m: marginal relaxation for "unbalanced".
        normalize_cost: divide the cost by its max before solving.
        num_threads: ignored (kept for signature compatibility).
        warn: warn when an entropic plan did not converge.
    """

    def __init__(self, method: str, reg: float = 0.05, reg_m: float = 1.0, normalize_cost: bool = False,
                 num_threads: int = 1, warn: bool = True) -> None:
        check_choice("method", method, _METHODS)
        self.method = method
        self.reg = reg
        self.reg_m = reg_m
        self.normalize_cost = normalize_cost
        self.num_threads = num_threads
        self.warn = warn

    def _cost(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        for name, x in (("x0", x0), ("x1", x1)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        M = pairwise_cost(flat(x0.detach()), flat(x1.detach()))
        if self.normalize_cost:
            M = M / M.max().clamp_min(torch.finfo(M.dtype).tiny)
        return M

    def get_map(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The OT plan ``(n, m)`` between the two batches (uniform marginals), on their device."""
        M = self._cost(x0, x1)
        n, m = M.shape
        if self.method == "exact":
            cols = linear_assignment(M) if n <= m else None
            if cols is None:
                rows_for_col = linear_assignment(M.T)
                plan = torch.zeros_like(M)
                plan[rows_for_col, torch.arange(m, device=M.device)] = 1.0 / m
                return plan
            plan = torch.zeros_like(M)
            plan[torch.arange(n, device=M.device), cols] = 1.0 / n
            return plan
        if self.method == "partial":
            return self._partial_plan(M)
        result = sinkhorn(M, eps=self.reg, reg_m=self.reg_m if self.method == "unbalanced" else None)
        if self.warn and self.method == "sinkhorn" and float(result.marginal_error) > 1e-3:
            warnings.warn(f"Sinkhorn did not converge: marginal error {float(result.marginal_error):.2e} after "
                          f"{int(result.n_iter)} iterations (reg={self.reg}); the plan is approximate", stacklevel=2)
        return result.plan()

    def _partial_plan(self, M: torch.Tensor) -> torch.Tensor:
        try:
            import ot
        except ImportError as exc:
            raise ValueError("method='partial' delegates to POT (pip install pot), which is not installed") from exc
        n, m = M.shape
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        b = torch.full((m,), 1.0 / m, dtype=torch.float64)
        plan = ot.partial.entropic_partial_wasserstein(a.numpy(), b.numpy(), M.double().cpu().numpy(), reg=self.reg)
        return torch.as_tensor(plan, dtype=M.dtype, device=M.device)

    def sample_map(self, pi: torch.Tensor, batch_size: int, replace: bool = True,
                   generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` cells (i, j) of the plan ``pi`` with probability ``pi_ij / sum(pi)``."""
        p = pi.flatten().double()
        p = p / p.sum()
        gen_device = generator.device if generator is not None else p.device
        choices = torch.multinomial(p.to(gen_device), batch_size, replacement=replace, generator=generator)
        choices = choices.to(pi.device)
        return torch.div(choices, pi.shape[1], rounding_mode="floor"), choices % pi.shape[1]

    def _pair_indices(self, x0, x1, replace: bool, generator):
        if self.method == "exact":
            n = x0.shape[0]
            M = self._cost(x0, x1)
            if n <= M.shape[1]:
                col_for_row = linear_assignment(M)
                gen_device = generator.device if generator is not None else torch.device("cpu")
                if replace:
                    rows = torch.randint(0, n, (n,), generator=generator, device=gen_device).to(x0.device)
                else:
                    rows = torch.randperm(n, generator=generator, device=gen_device).to(x0.device)
                return rows, col_for_row[rows]
        pi = self.get_map(x0, x1)
        return self.sample_map(pi, x0.shape[0], replace=replace, generator=generator)

    def sample_plan(self, x0: torch.Tensor, x1: torch.Tensor, replace: bool = True,
                    generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0[i], x1[j])`` for ``len(x0)`` pairs drawn from the plan (with replacement by default,
        as torchcfm; for a duplicate-free permutation use :func:`flowfast.couplings.pair`)."""
        i, j = self._pair_indices(x0, x1, replace, generator)
        return x0[i], x1[j]

    def sample_plan_with_labels(self, x0, x1, y0=None, y1=None, replace: bool = True,
                                generator: Optional[torch.Generator] = None):
        """Like :meth:`sample_plan`, carrying labels: ``(x0[i], x1[j], y0[i], y1[j])``."""
        i, j = self._pair_indices(x0, x1, replace, generator)
        return x0[i], x1[j], (y0[i] if y0 is not None else None), (y1[j] if y1 is not None else None)

    def sample_trajectory(self, X: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Chain plans across time: X ``(batch, times, *dims)`` -> re-indexed ``(batch, times, *dims)``
        where each row follows one sampled path through consecutive plans."""
        if not isinstance(X, torch.Tensor) or X.dim() < 2:
            raise ValueError("X must be a (batch, times, *dims) tensor")
        times = X.shape[1]
        plans = [self.get_map(X[:, t], X[:, t + 1]) for t in range(times - 1)]
        index = [torch.arange(X.shape[0], device=X.device)]
        for pi in plans:
            rows = pi[index[-1]].double()
            probs = rows / rows.sum(dim=1, keepdim=True)
            gen_device = generator.device if generator is not None else probs.device
            nxt = torch.multinomial(probs.to(gen_device), 1, generator=generator).squeeze(1).to(X.device)
            index.append(nxt)
        return torch.stack([X[index[t], t] for t in range(times)], dim=1)


def wasserstein(x0: torch.Tensor, x1: torch.Tensor, method: Optional[str] = None, reg: float = 0.05,
                power: int = 2, **kwargs) -> float:
    """torchcfm's ``wasserstein``: exact (default) or entropic W_p between two equal-weight batches,
    computed with flowfast kernels. Returns a Python float (the p-th root is taken)."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power}")
    method = "exact" if method is None else method
    check_choice("method", method, ("exact", "sinkhorn"))
    M = pairwise_cost(flat(x0.detach()), flat(x1.detach()))
    if power == 1:
        M = M.sqrt()
    if method == "sinkhorn":
        plan = sinkhorn(M, eps=reg).plan()
    elif x0.shape[0] == x1.shape[0]:
        cols = linear_assignment(M)
        plan = torch.zeros_like(M)
        plan[torch.arange(M.shape[0], device=M.device), cols] = 1.0 / M.shape[0]
    else:
        plan = _emd_plan(M)
    value = float((plan.double() * M.double()).sum())
    return value ** (1.0 / power) if power == 2 else value


def _emd_plan(M: torch.Tensor) -> torch.Tensor:
    try:
        import ot
    except ImportError as exc:
        raise ValueError("exact wasserstein between batches of different sizes needs POT (pip install pot)") from exc
    n, m = M.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    b = torch.full((m,), 1.0 / m, dtype=torch.float64).numpy()
    return torch.as_tensor(ot.emd(a, b, M.double().cpu().numpy(), numItermax=int(1e7)), device=M.device)


# --- conditional flow matchers (torchcfm.conditional_flow_matching) ------------------------------

pad_t_like_x = paths.pad_t_like_x


class ConditionalFlowMatcher(paths.IndependentCFM):
    """torchcfm's I-CFM: ``sample_location_and_conditional_flow(x0, x1, t=None, return_noise=False)``
    -> ``(t, xt, ut[, eps])``, same formulas (see :mod:`flowfast.paths`)."""


class _PlanSampled:
    """torchcfm's OT flow matchers draw pairs from an OTPlanSampler, with replacement."""

    ot_sampler: OTPlanSampler

    def couple(self, x0, x1, generator=None):
        return self.ot_sampler.sample_plan(x0, x1, generator=generator)

    def guided_sample_location_and_conditional_flow(self, x0, x1, y0=None, y1=None, t=None,
                                                    return_noise: bool = False, generator=None):
        """Couple with labels carried along; returns ``(t, xt, ut, y0, y1)`` (``eps`` before the labels
        when ``return_noise``), as torchcfm."""
        ops.interpolant.validate_batches(x0, x1)
        x0, x1, y0, y1 = self.ot_sampler.sample_plan_with_labels(x0, x1, y0, y1, generator=generator)
        out = self.sample_paired(x0, x1, t, return_noise, generator)
        return (*out, y0, y1)


class ExactOptimalTransportConditionalFlowMatcher(_PlanSampled, ConditionalFlowMatcher):
    """torchcfm's OT-CFM (pairs drawn with replacement from the exact plan). For the duplicate-free
    permutation use :class:`flowfast.paths.OptimalTransportCFM`."""

    def __init__(self, sigma: float = 0.0) -> None:
        super().__init__(sigma)
        self.ot_sampler = OTPlanSampler(method="exact")


class TargetConditionalFlowMatcher(paths.TargetCFM):
    """torchcfm's TargetConditionalFlowMatcher (Lipman et al.), with torchcfm's u_t formula
    (NaN at t = 1 when sigma = 0, as torchcfm; :class:`flowfast.paths.TargetCFM` stays finite)."""

    def conditional_flow_from_noise(self, x0, x1, t, xt, noise):
        return self.compute_conditional_flow(x0, x1, t, xt)


class VariancePreservingConditionalFlowMatcher(paths.VariancePreservingCFM):
    """torchcfm's VariancePreservingConditionalFlowMatcher."""


class SchrodingerBridgeConditionalFlowMatcher(_PlanSampled, paths.SchrodingerBridgeCFM):
    """torchcfm's SB-CFM: ``OTPlanSampler(method=ot_method, reg=2 sigma^2)`` pairs (with replacement),
    Brownian-bridge path. ``ot_method`` defaults to "exact", as in torchcfm."""

    def __init__(self, sigma: float = 1.0, ot_method: str = "exact") -> None:
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma <= 0:
            raise ValueError(f"Sigma must be strictly positive, got {sigma}.")
        if isinstance(sigma, (int, float)) and sigma < 1e-3:
            warnings.warn("Small sigma values may lead to numerical instability.", stacklevel=2)
        super().__init__(sigma, ot_method="exact" if ot_method == "exact" else "sinkhorn")
        self.ot_method = ot_method
        self.ot_sampler = OTPlanSampler(method=ot_method, reg=2 * self.sigma**2)
