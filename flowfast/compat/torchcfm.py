"""Drop-in for ``torchcfm.conditional_flow_matching`` and ``torchcfm.optimal_transport`` (torchcfm
1.0.x), backed by flowfast's solvers.

Same names, signatures, defaults, return types and errors, and the same random draws: with the same
seeds, every flow matcher and sampler here returns what torchcfm returns. That means torchcfm's RNG
usage is kept on purpose:

- pairs are drawn from the OT plan with **numpy's global RNG** (``np.random.choice``, with
  replacement by default), ``t`` with ``torch.rand(batch)`` in the default dtype then cast like
  ``x0``, and the noise with ``torch.randn_like(x0)``;
- ``get_map`` returns the plan as a float64 numpy array, ``sample_map`` numpy indices and
  ``sample_trajectory`` a numpy array, as torchcfm does;
- the cost is ``torch.cdist(x0, x1) ** 2`` on the flattened batches in their dtype (as torchcfm),
  solved in float64 (as POT solves it).

Opt-ins, all keyword-only and absent from torchcfm:

- ``generator=`` (a ``torch.Generator``) on the sampling methods and flow matchers: pairs, ``t`` and
  noise come from that generator instead (pairs via ``torch.multinomial``, on the inputs' device),
  and the results are torch tensors.
- ``coupling=`` on the OT flow matchers: any :mod:`flowfast.couplings` coupling (``"exact"``,
  ``couplings.SinkhornCoupling(eps=..., replace=False)``, ...) instead of the plan sampler, e.g.
  flowfast's duplicate-free permutation. (``sample_plan(..., replace=False)`` on the exact plan is
  also a permutation: the n cells of the plan in a random order.)

Solvers (no POT needed): "exact" is flowfast's linear assignment (batches of different sizes:
the assignment between the batches repeated to lcm(n, m) points each, or POT's ``emd`` past
lcm 1024 when POT is installed); "sinkhorn", "unbalanced" and "partial" run flowfast's log-domain
Sinkhorn in float64 with POT's iteration (from zero potentials, no eps scaling, at most 1000
iterations), so the plans are POT's to ~1e-9 where POT converges and where it stops early alike.
Where the result differs from torchcfm's it is because torchcfm's POT call failed numerically (see
:class:`OTPlanSampler`); ``wasserstein(method="sinkhorn")`` also where POT's float32 kernel
underflows.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import numpy as np
import torch

from flowfast import ops, paths
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
# POT's iteration cap for its Sinkhorn solvers (numItermax); torchcfm's wasserstein passes 1e7, which
# flowfast's Sinkhorn would need only on ill-conditioned problems (its value is within ~1e-6 by 1e4).
_SINKHORN_MAX_ITER = 1000
_WASSERSTEIN_MAX_ITER = 10**4
_SINKHORN_TOL = 1e-9
_FAR_FROM_CONVERGED = 1e-3
# Exact plans between batches of different sizes: the assignment between the batches repeated to
# lcm(n, m) points each, up to this many points (else POT's network simplex).
_LCM_LIMIT = 1024
# torchcfm treats a plan of (almost) no mass as a numerical failure and samples uniformly instead.
_MASSLESS = 1e-8


# --- optimal transport (torchcfm.optimal_transport) -------------------------------------------


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(n, *dims)`` -> ``(n, prod(dims))``; 2-D (and 1-D) batches unchanged."""
    return x.reshape(x.shape[0], -1) if x.dim() > 2 else x


def _distances(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of the flattened batches, in their dtype and on their device."""
    with torch.no_grad():
        return torch.cdist(_rows(x0), _rows(x1))


def _uniform_weight(n: int) -> float:
    return 1.0 / n  # POT's ot.unif(n) entry


def _exact_plan(cost: torch.Tensor) -> torch.Tensor:
    """Optimal plan of uniform marginals for a float64 ``(n, m)`` cost, float64 on its device."""
    n, m = cost.shape
    if n == m:
        plan = torch.zeros_like(cost)
        cols = ops.assignment.solve(cost[None])[0]  # strict: an overflowing cost is "NaN/Inf"
        plan[torch.arange(n, device=cost.device), cols] = _uniform_weight(n)
        return plan
    points = math.lcm(n, m)
    if points > _LCM_LIMIT:
        return _pot_exact_plan(cost)
    # n -> points copies of mass 1/points: an optimal assignment between the copies sums to an
    # optimal plan (the transport polytope of integer masses has integral vertices).
    row_of = torch.arange(n, device=cost.device).repeat_interleave(points // n)
    col_of = torch.arange(m, device=cost.device).repeat_interleave(points // m)
    cols = ops.assignment.solve(cost[row_of][:, col_of][None])[0]
    plan = torch.zeros_like(cost)
    plan.index_put_((row_of, col_of[cols]), torch.full((points,), _uniform_weight(points), dtype=cost.dtype,
                                                       device=cost.device), accumulate=True)
    return plan


def _pot_exact_plan(cost: torch.Tensor) -> torch.Tensor:
    try:
        import ot
    except ImportError as exc:
        n, m = cost.shape
        raise ValueError(f"an exact plan between batches of {n} and {m} samples (lcm {math.lcm(n, m)} > "
                         f"{_LCM_LIMIT}) needs POT (pip install pot)") from exc
    n, m = cost.shape
    a = np.full(n, _uniform_weight(n))
    b = np.full(m, _uniform_weight(m))
    plan = ot.emd(a, b, cost.cpu().numpy(), numItermax=10**7)
    return torch.as_tensor(plan, dtype=torch.float64, device=cost.device)


def _entropic(cost: torch.Tensor, reg: float, reg_m: Optional[float], max_iter: int):
    """flowfast's Sinkhorn on a float64 cost, or None when even float64 cannot resolve ``reg``.

    First POT's iteration: Sinkhorn from zero potentials at ``reg`` throughout (no eps scaling),
    whose iterates are POT's (in the log domain, so without its underflow): the same plan as
    torchcfm's, converged or not. Where that is far from converged (marginal error above 1e-3,
    small ``reg``), the eps-scaled solve too, kept if it is closer."""
    try:
        result = sinkhorn(cost, eps=reg, reg_m=reg_m, max_iter=max_iter, tol=_SINKHORN_TOL, eps_scaling=False)
        if reg_m is None and float(result.marginal_error) > _FAR_FROM_CONVERGED:
            scaled = sinkhorn(cost, eps=reg, max_iter=max_iter, tol=_SINKHORN_TOL)
            if float(scaled.marginal_error) < float(result.marginal_error):
                result = scaled
        return result
    except ValueError as error:
        if "too small" in str(error):
            return None
        raise


def _converged(result) -> bool:
    if int(result.n_iter) < _SINKHORN_MAX_ITER:
        return True
    return result.reg_m is None and float(result.marginal_error) <= _SINKHORN_TOL


def _to_numpy(pi) -> np.ndarray:
    if isinstance(pi, torch.Tensor):
        return pi.detach().cpu().numpy()
    return np.asarray(pi)


def _multinomial(weights: torch.Tensor, count: int, replace: bool, generator: torch.Generator) -> torch.Tensor:
    where = weights.device
    drawn = torch.multinomial(weights.double().to(generator.device), count, replacement=replace, generator=generator)
    return drawn.to(where)


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


class OTPlanSampler:
    """torchcfm's ``OTPlanSampler``: minibatch OT plans (squared Euclidean cost) and pairs drawn
    from them.

    Args (as torchcfm):
        method: "exact", "sinkhorn", "unbalanced" or "partial" (else ``ValueError("Unknown
            method: ...")``).
        reg: entropic regularization, absolute (on the normalized cost when ``normalize_cost``).
        reg_m: marginal relaxation of "unbalanced" (POT's ``reg_m``, KL to ``a`` and ``b``).
        normalize_cost: divide the cost by its max first.
        num_threads: accepted (int or "max") and unused: the exact solver is flowfast's assignment.
        warn: warn when an entropic plan has not converged within 1000 iterations (POT warns
            then too) and when a plan has no mass, which is then replaced by the uniform plan, as
            torchcfm does.

    Differences from torchcfm, all where torchcfm's POT call fails numerically:

    - the entropic plans come from a log-domain Sinkhorn in float64, which never under- or
      overflows: where POT's Sinkhorn (Gibbs kernel ``exp(-M / reg)``) underflows at small
      ``reg`` and torchcfm falls back to the uniform plan, the plan here is the entropic plan
      (close to the exact one); the uniform fallback happens only where float64 cannot resolve
      ``reg`` either (reg below 1e-14 of the cost range);
    - "partial" (POT's ``entropic_partial_wasserstein`` with its default ``m``, i.e. all the mass of
      two uniform marginals) is the balanced entropic plan of the same problem, solved to
      convergence; POT stops after 1000 Bregman projections and returns NaN at small ``reg``.
    """

    def __init__(self, method: str, reg: float = 0.05, reg_m: float = 1.0, normalize_cost: bool = False,
                 num_threads: Union[int, str] = 1, warn: bool = True) -> None:
        if method not in _METHODS:
            raise ValueError(f"Unknown method: {method}")
        self.method = method
        self.reg = reg
        self.reg_m = reg_m
        self.normalize_cost = normalize_cost
        self.num_threads = num_threads
        self.warn = warn

    # -- plans ----------------------------------------------------------------------------------
    def _plan(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The plan as a float64 tensor on the batches' device."""
        cost = _distances(x0, x1) ** 2
        if self.normalize_cost:
            cost = cost / cost.max()
        cost = cost.double()
        if self.method == "exact":
            plan = _exact_plan(cost)
        else:
            reg_m = self.reg_m if self.method == "unbalanced" else None
            result = _entropic(cost, self.reg, reg_m, _SINKHORN_MAX_ITER)
            if result is None:
                plan = torch.zeros_like(cost)  # no plan float64 can carry: the uniform fallback below
            else:
                if self.warn and not _converged(result):
                    warnings.warn(f"Sinkhorn did not converge within {_SINKHORN_MAX_ITER} iterations (reg={self.reg}, "
                                  f"method={self.method!r}); the plan is approximate", stacklevel=3)
                plan = result.plan()
        if abs(float(plan.sum())) < _MASSLESS:
            if self.warn:
                warnings.warn("Numerical errors in OT plan, reverting to uniform plan.", stacklevel=3)
            plan = torch.full_like(plan, 1.0 / plan.numel())
        return plan

    def get_map(self, x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
        """The ``(n, m)`` plan between the batches ``(n, *dim)``, ``(m, *dim)``: a float64 numpy array."""
        return self._plan(x0, x1).cpu().numpy()

    # -- sampling -------------------------------------------------------------------------------
    def sample_map(self, pi, batch_size: int, replace: bool = True, *, generator: Optional[torch.Generator] = None):
        r"""``batch_size`` cells ``(i, j)`` of the plan drawn with probability ``pi_ij / sum(pi)``:
        ``(i, j)`` numpy arrays, from numpy's global RNG (``np.random.choice``). ``pi``: numpy array
        (as torchcfm) or tensor. With ``generator``: drawn by ``torch.multinomial`` from it,
        returned as tensors on ``pi``'s device."""
        _check_generator(generator)
        if generator is not None:
            weights = torch.as_tensor(pi).flatten()
            flat = _multinomial(weights / weights.sum(), batch_size, replace, generator)
            return torch.div(flat, pi.shape[1], rounding_mode="floor"), flat % pi.shape[1]
        weights = _to_numpy(pi).flatten()
        weights = weights / weights.sum()
        flat = np.random.choice(weights.size, p=weights, size=batch_size, replace=replace)
        return np.divmod(flat, pi.shape[1])

    def _pair_indices(self, x0, x1, replace, generator):
        _check_generator(generator)
        if generator is None:
            return self.sample_map(self.get_map(x0, x1), x0.shape[0], replace=replace)
        return self.sample_map(self._plan(x0, x1), x0.shape[0], replace=replace, generator=generator)

    def sample_plan(self, x0: torch.Tensor, x1: torch.Tensor, replace: bool = True, *,
                    generator: Optional[torch.Generator] = None):
        """``(x0[i], x1[j])``: ``len(x0)`` pairs drawn from the plan (with replacement by default)."""
        i, j = self._pair_indices(x0, x1, replace, generator)
        return x0[i], x1[j]

    def sample_plan_with_labels(self, x0, x1, y0=None, y1=None, replace: bool = True, *,
                                generator: Optional[torch.Generator] = None):
        """Like :meth:`sample_plan`, with the labels of the drawn samples: ``(x0[i], x1[j], y0[i],
        y1[j])`` (None for a label not given)."""
        i, j = self._pair_indices(x0, x1, replace, generator)
        return x0[i], x1[j], (None if y0 is None else y0[i]), (None if y1 is None else y1[j])

    def sample_trajectory(self, X: torch.Tensor, *, generator: Optional[torch.Generator] = None):
        """Trajectories through consecutive plans: ``X`` ``(bs, times, *dim)`` -> ``(bs, times, *dim)``
        numpy array whose row k starts at sample k of time 0 and moves to a successor drawn from
        each plan's row (numpy's global RNG, one draw per row and step, in row order). With
        ``generator``: torch draws, a tensor on ``X``'s device."""
        _check_generator(generator)
        steps = X.shape[1]
        if generator is not None:
            plans = [self._plan(X[:, s], X[:, s + 1]) for s in range(steps - 1)]
            path = [torch.arange(X.shape[0], device=X.device)]
            for plan in plans:
                rows = plan[path[-1]]
                path.append(_multinomial(rows / rows.sum(1, keepdim=True), 1, True, generator).squeeze(1))
            return torch.stack([X[:, s][path[s]] for s in range(steps)], dim=1)
        plans = [self.get_map(X[:, s], X[:, s + 1]) for s in range(steps - 1)]
        path = [np.arange(X.shape[0])]
        for plan in plans:
            successors = np.empty(len(path[-1]), dtype=np.int64)
            for k, row in enumerate(path[-1]):
                successors[k] = np.random.choice(plan.shape[1], p=plan[row] / plan[row].sum())
            path.append(successors)
        columns = [X[:, s][torch.from_numpy(path[s])] for s in range(steps)]
        return np.stack([c.detach().cpu().numpy() for c in columns], axis=1)


def wasserstein(x0: torch.Tensor, x1: torch.Tensor, method: Optional[str] = None, reg: float = 0.05,
                power: int = 2, **kwargs) -> float:
    """torchcfm's ``wasserstein``: W_1 or W_2 (``power``) between two uniform batches, exact
    (``method`` None or "exact", a Python float) or entropic ("sinkhorn", the transport cost of the
    entropic plan for ``reg``, a numpy float64 for ``power=1``). ``kwargs`` are accepted and unused.

    The exact value equals POT's ``emd2`` on torchcfm's cost to the last digit: the cost is
    ``torch.cdist`` (squared for W_2) in the batches' dtype, taken to float64, and the plan's cost
    is summed in the order POT's network simplex sums it (its arcs in reverse row-major order).
    """
    assert power == 1 or power == 2  # noqa: S101 - torchcfm's check, and its AssertionError
    if method not in (None, "exact", "sinkhorn"):
        raise ValueError(f"Unknown method: {method}")
    cost = _distances(x0, x1)
    if power == 2:
        cost = cost**2
    cost = cost.double()
    if method == "sinkhorn":
        result = _entropic(cost, reg, None, _WASSERSTEIN_MAX_ITER)
        if result is None:
            raise ValueError(f"reg={reg:g} is too small to resolve in float64 against costs of this range")
        value = np.float64((result.plan() * cost).sum().item())
    else:
        plan, cost_np = _exact_plan(cost).cpu().numpy(), cost.cpu().numpy()
        value = float(np.add.accumulate((plan * cost_np).ravel()[::-1])[-1])
    return math.sqrt(value) if power == 2 else value


# --- conditional flow matchers (torchcfm.conditional_flow_matching) -----------------------------


def pad_t_like_x(t, x: torch.Tensor):
    """``t`` ``(bs,)`` reshaped to ``(bs, 1, ..., 1)`` to broadcast against ``x``; numbers unchanged."""
    if isinstance(t, (float, int)):
        return t
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def _draw_t(x0: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    # torchcfm: torch.rand(batch) in the default dtype and device, then .type_as(x0)
    if generator is None:
        return torch.rand(x0.shape[0]).type_as(x0)
    return torch.rand(x0.shape[0], generator=generator, device=generator.device).type_as(x0)


class ConditionalFlowMatcher:
    r"""torchcfm's I-CFM: the path :math:`N(t x_1 + (1 - t) x_0, \sigma^2)`, target ``x1 - x0``.

    ``sample_location_and_conditional_flow(x0, x1, t=None, return_noise=False)`` ->
    ``(t, xt, ut)`` (``eps`` after them when ``return_noise``). ``sigma`` is kept as given.
    """

    def __init__(self, sigma: Union[float, int] = 0.0):
        self.sigma = sigma

    def compute_mu_t(self, x0, x1, t):
        t = pad_t_like_x(t, x0)
        return t * x1 + (1 - t) * x0

    def compute_sigma_t(self, t):
        return self.sigma

    def sample_xt(self, x0, x1, t, epsilon):
        mu_t = self.compute_mu_t(x0, x1, t)
        sigma_t = pad_t_like_x(self.compute_sigma_t(t), x0)
        return mu_t + sigma_t * epsilon

    def compute_conditional_flow(self, x0, x1, t, xt):
        return x1 - x0

    def sample_noise_like(self, x, *, generator: Optional[torch.Generator] = None):
        if generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)

    def _sample(self, x0, x1, t, return_noise, generator):
        _check_generator(generator)
        if t is None:
            t = _draw_t(x0, generator)
        if len(t) != x0.shape[0]:
            raise AssertionError("t has to have batch size dimension")
        eps = self.sample_noise_like(x0) if generator is None else self.sample_noise_like(x0, generator=generator)
        xt = self.sample_xt(x0, x1, t, eps)
        ut = self.compute_conditional_flow(x0, x1, t, xt)
        return (t, xt, ut, eps) if return_noise else (t, xt, ut)

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False, *,
                                             generator: Optional[torch.Generator] = None):
        """``t`` (drawn from U[0, 1) unless given), ``xt`` on the path and ``ut`` (and the noise
        ``eps`` with ``return_noise``). ``generator``: draw ``t`` and ``eps`` from it instead of
        torch's global RNG."""
        return self._sample(x0, x1, t, return_noise, generator)

    def compute_lambda(self, t):
        """The score-loss weight ``2 sigma_t / (sigma^2 + 1e-8)``."""
        sigma_t = self.compute_sigma_t(t)
        return 2 * sigma_t / (self.sigma**2 + 1e-8)


class _OTPaired(ConditionalFlowMatcher):
    """The OT matchers: pairs from ``ot_sampler`` (torchcfm), or from a flowfast ``coupling``."""

    ot_sampler: OTPlanSampler
    coupling = None

    def _use_coupling(self, coupling) -> None:
        if coupling is not None:
            from flowfast.couplings import as_coupling

            self.coupling = as_coupling(coupling)

    def _pairs(self, x0, x1, generator):
        if self.coupling is not None:
            return self.coupling(x0, x1, generator)
        return self.ot_sampler.sample_plan(x0, x1, generator=generator)

    def _pairs_with_labels(self, x0, x1, y0, y1, generator):
        if self.coupling is not None:
            if not hasattr(self.coupling, "with_labels"):
                raise TypeError(f"{type(self.coupling).__name__} has no with_labels(x0, x1, y0, y1, generator)")
            return self.coupling.with_labels(x0, x1, y0, y1, generator)
        return self.ot_sampler.sample_plan_with_labels(x0, x1, y0, y1, generator=generator)

    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False, *,
                                             generator: Optional[torch.Generator] = None):
        """As :class:`ConditionalFlowMatcher`'s, on pairs first drawn from the minibatch OT plan
        (numpy's global RNG unless ``generator``)."""
        _check_generator(generator)
        x0, x1 = self._pairs(x0, x1, generator)
        return self._sample(x0, x1, t, return_noise, generator)

    def guided_sample_location_and_conditional_flow(self, x0, x1, y0=None, y1=None, t=None, return_noise=False, *,
                                                    generator: Optional[torch.Generator] = None):
        """Pairs drawn with their labels: ``(t, xt, ut, y0, y1)``, or ``(t, xt, ut, y0, y1, eps)``
        with ``return_noise`` (the noise last, as torchcfm)."""
        _check_generator(generator)
        x0, x1, y0, y1 = self._pairs_with_labels(x0, x1, y0, y1, generator)
        out = self._sample(x0, x1, t, return_noise, generator)
        return (*out[:3], y0, y1, *out[3:])


class ExactOptimalTransportConditionalFlowMatcher(_OTPaired):
    """torchcfm's OT-CFM: I-CFM on pairs drawn with replacement from the exact minibatch plan.

    ``coupling`` (keyword, flowfast): a :mod:`flowfast.couplings` coupling to pair with instead,
    e.g. ``"exact"`` for the optimal permutation (every sample once)."""

    def __init__(self, sigma: Union[float, int] = 0.0, *, coupling=None):
        super().__init__(sigma)
        self.ot_sampler = OTPlanSampler(method="exact")
        self._use_coupling(coupling)


class TargetConditionalFlowMatcher(ConditionalFlowMatcher):
    r"""torchcfm's Lipman et al. flow matching: :math:`\mu_t = t x_1`,
    :math:`\sigma_t = 1 - (1 - \sigma) t`, :math:`u_t = (x_1 - (1 - \sigma) x_t) / \sigma_t`
    (0/0 at t = 1 with sigma = 0, as torchcfm; :class:`flowfast.paths.TargetCFM` stays finite)."""

    # the formulas themselves are flowfast.paths.TargetCFM's (torchcfm's, read off x_t)
    compute_mu_t = paths.TargetCFM.compute_mu_t
    compute_sigma_t = paths.TargetCFM.compute_sigma_t
    compute_conditional_flow = paths.TargetCFM.compute_conditional_flow


class SchrodingerBridgeConditionalFlowMatcher(_OTPaired):
    r"""torchcfm's SB-CFM: Brownian-bridge path :math:`\sigma_t = \sigma\sqrt{t(1 - t)}` on pairs
    drawn from ``OTPlanSampler(method=ot_method, reg=2 sigma^2)`` ("exact" by default, as torchcfm).

    ``sigma <= 0`` is a ValueError and ``sigma < 1e-3`` warns, as in torchcfm. Entropic plans are
    solved in float64, so small sigmas (reg = 2 sigma^2 down to 1e-14 of the cost range) work.
    ``coupling`` (keyword, flowfast): as in :class:`ExactOptimalTransportConditionalFlowMatcher`.
    """

    def __init__(self, sigma: Union[float, int] = 1.0, ot_method="exact", *, coupling=None):
        if sigma <= 0:
            raise ValueError(f"Sigma must be strictly positive, got {sigma}.")
        if sigma < 1e-3:
            warnings.warn("Small sigma values may lead to numerical instability.", stacklevel=2)
        super().__init__(sigma)
        self.ot_method = ot_method
        self.ot_sampler = OTPlanSampler(method=ot_method, reg=2 * self.sigma**2)
        self._use_coupling(coupling)

    def compute_sigma_t(self, t):
        return self.sigma * torch.sqrt(t * (1 - t))

    def compute_conditional_flow(self, x0, x1, t, xt):
        t = pad_t_like_x(t, x0)
        mu_t = self.compute_mu_t(x0, x1, t)
        ratio = (1 - 2 * t) / (2 * t * (1 - t) + 1e-8)  # sigma_t' / sigma_t, guarded as torchcfm
        return ratio * (xt - mu_t) + x1 - x0


class VariancePreservingConditionalFlowMatcher(ConditionalFlowMatcher):
    r"""torchcfm's trigonometric interpolant: :math:`\mu_t = \cos(\pi t/2) x_0 + \sin(\pi t/2) x_1`,
    :math:`u_t = \frac{\pi}{2}(\cos(\pi t/2) x_1 - \sin(\pi t/2) x_0)`."""

    compute_mu_t = paths.VariancePreservingCFM.compute_mu_t  # the same formulas as flowfast's
    compute_conditional_flow = paths.VariancePreservingCFM.compute_conditional_flow
