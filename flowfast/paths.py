r"""Conditional flow-matching paths (the CFM family of Tong et al.; torchcfm's formulas).

Convention: x0 = source (noise) at t = 0, x1 = data at t = 1; a velocity model is called as
``model(x_t, t)`` with ``t`` of shape ``(B,)``. Every path draws

.. math:: x_t = \mu_t(x_0, x_1) + \sigma_t\,\varepsilon,\qquad \varepsilon \sim \mathcal N(0, I)

and regresses the model on the conditional velocity :math:`u_t(x_t \mid x_0, x_1)`.

| class | coupling | :math:`\mu_t` | :math:`\sigma_t` | :math:`u_t` |
|---|---|---|---|---|
| :class:`IndependentCFM` (I-CFM) | independent | t x1 + (1-t) x0 | sigma | x1 - x0 |
| :class:`OptimalTransportCFM` (OT-CFM) | exact minibatch OT | same | sigma | x1 - x0 |
| :class:`SchrodingerBridgeCFM` (SB-CFM) | entropic OT, eps = 2 sigma^2 | same | sigma sqrt(t(1-t)) | (1-2t)/(2t(1-t)) (x_t - mu_t) + x1 - x0 |
| :class:`TargetCFM` (Lipman FM) | x1 only | t x1 | 1 - (1-sigma) t | (x1 - (1-sigma) x_t) / (1 - (1-sigma) t) |
| :class:`VariancePreservingCFM` | independent | cos(pi t/2) x0 + sin(pi t/2) x1 | sigma | pi/2 (cos(pi t/2) x1 - sin(pi t/2) x0) |

The coupling is an argument, not a subclass: every class takes ``coupling=`` (a
:class:`flowfast.couplings.Coupling`: ``"independent"``, ``"exact"``, ``"sinkhorn"``,
``"unbalanced"`` or any object such as ``SinkhornCoupling(reg=0.1)``), and OT-CFM / SB-CFM are the
linear / bridge paths with their paper's coupling preset. The couplings differ from torchcfm on
purpose: OT-CFM and SB-CFM re-pair the batch with a *permutation* (every sample used once)
instead of drawing pairs with replacement. ``flowfast.compat.torchcfm`` keeps torchcfm's exact
behaviour.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from flowfast import _path_kinds, ops
from flowfast._interop import accepts_arrays
from flowfast._rng import draw_seed
from flowfast._validate import checked_peaks, stacked_peaks
from flowfast.couplings.cost import as_points, pairwise_cost
from flowfast.couplings.coupling import Coupling, ExactOTCoupling, SinkhornCoupling, as_coupling
from flowfast.couplings.sinkhorn import MIN_RELATIVE_EPS

__all__ = [
    "IndependentCFM",
    "OptimalTransportCFM",
    "SchrodingerBridgeCFM",
    "TargetCFM",
    "VariancePreservingCFM",
    "pad_t_like_x",
]

_BRIDGE_GUARD = _path_kinds.BRIDGE_GUARD


def pad_t_like_x(t, x: torch.Tensor):
    """Reshape a ``(B,)`` time to ``(B, 1, ..., 1)`` to broadcast against ``x`` (numbers pass through)."""
    if isinstance(t, (float, int)):
        return t
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def wants_check(check_finite: Optional[bool], x: torch.Tensor) -> bool:
    """``check_finite`` resolved: None (the default) checks where the read costs no device
    synchronization, i.e. batches in host memory; CUDA batches then go unchecked (0 syncs per
    I-CFM step) and a non-finite batch surfaces as a non-finite loss."""
    if check_finite is None:
        return x.device.type == "cpu"
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be None, True or False, got {type(check_finite).__name__}")
    return bool(check_finite)


def check_loss_finite(loss: torch.Tensor, dtype: torch.dtype) -> None:
    """After a checked step (inputs finite and in range): a non-finite loss is the model's NaN/Inf
    or an overflow of the dtype; a FloatingPointError, as the Trainer raises for a diverged run."""
    value = loss.item()  # (one read, as bool(isfinite) would be, without the isfinite op)
    if math.isfinite(value):
        return
    name = str(dtype).replace("torch.", "")
    hint = (" (float16 per-sample sums of squared errors pass 65504 on large errors or near the ends of "
            "an SB-CFM bridge: bfloat16 or float32 avoid it)" if dtype == torch.float16 else "")
    raise FloatingPointError(f"the loss is non-finite ({value}) although x0, x1, t and weight are finite and "
                             f"in range: model(x_t, t) returned NaN/Inf, or the squared error overflowed {name}{hint}")


def check_step_inputs(x0: torch.Tensor, x1: torch.Tensor, weight: Optional[torch.Tensor] = None,
                      sigma: float = 0.0) -> None:
    """The NaN policy of a training step (``check_finite``), with one host read: NaN/Inf in
    ``x0``, ``x1`` or ``weight`` is a ValueError naming the argument, and so are batches so large
    that the squared-error loss would overflow their dtype (a loss of +inf with no word otherwise).

    The bound: every path's target velocity is at most |x0| + |x1| + (noise terms, 8 (1 + sigma))
    in size; a model of the same scale leaves |v - u| within twice that, and its square, times the
    largest weight, must stay inside the dtype."""
    named, stacked = stacked_peaks(dict(x0=x0, x1=x1, weight=weight))
    peaks = checked_peaks(named, stacked.tolist())
    reach = peaks.get("x0", 0.0) + peaks.get("x1", 0.0) + 8.0 * (1.0 + sigma)
    largest = torch.finfo(x0.dtype).max
    heaviest = max(1.0, peaks.get("weight", 0.0))
    if reach <= math.sqrt(largest / (4.0 * heaviest)):  # 4 reach^2 heaviest <= largest, without overflowing
        return
    dtype = str(x0.dtype).replace("torch.", "")
    if reach <= math.sqrt(largest / 4.0):
        raise ValueError(f"weight reaches {heaviest:.3g}: with batches of |x0| + |x1| up to {reach:.3g} the weighted "
                         f"loss overflows {dtype} (largest {largest:.3g}); scale the weights down")
    raise ValueError(f"x0 and x1 reach |x0| + |x1| = {reach:.3g}: the loss squares differences of that size, which "
                     f"overflows {dtype} (largest {largest:.3g}); rescale the data (e.g. standardize it) or use "
                     "float64")


class IndependentCFM:
    r"""I-CFM: independent coupling, straight path, constant noise ``sigma``.

    Args:
        sigma: standard deviation of the Gaussian around the straight path (torchcfm's ``sigma``).
        coupling: how a batch is paired before the path is sampled (default: as drawn).
    """

    #: which path of the `interpolant` kernels implements this class's formulas (flowfast._path_kinds)
    kernel_path = "linear"

    def __init__(self, sigma: float = 0.0, coupling: Optional[Coupling] = None) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if _path_kinds.KINDS[self.kernel_path] in _path_kinds.NEEDS_POSITIVE_SIGMA and not sigma > 0:
            raise ValueError(f"{type(self).__name__} needs sigma > 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.coupling = as_coupling(coupling)

    # --- the path -----------------------------------------------------------------------------
    def compute_mu_t(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = pad_t_like_x(t, x0)
        return t * x1 + (1 - t) * x0

    def compute_sigma_t(self, t: torch.Tensor):
        return self.sigma

    def sample_xt(self, x0, x1, t, epsilon) -> torch.Tensor:
        return self.compute_mu_t(x0, x1, t) + pad_t_like_x(self.compute_sigma_t(t), x0) * epsilon

    def compute_conditional_flow(self, x0, x1, t, xt) -> torch.Tensor:
        return x1 - x0

    def sample_noise_like(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)

    def compute_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """[SF]2M score-loss weight 2 sigma_t / (sigma^2 + 1e-8), as torchcfm."""
        return 2 * self.compute_sigma_t(t) / (self.sigma**2 + 1e-8)

    # --- couplings ------------------------------------------------------------------------------
    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Re-pair the batch by :attr:`coupling`."""
        return self.coupling(x0, x1, generator)

    # --- a training step ------------------------------------------------------------------------
    @accepts_arrays("x0", "x1", "t")
    def sample_location_and_conditional_flow(self, x0: torch.Tensor, x1: torch.Tensor, t=None,
                                             return_noise: bool = False,
                                             generator: Optional[torch.Generator] = None,
                                             check_finite: Optional[bool] = None):
        r"""Couple, draw ``t ~ U[0, 1]`` (unless given) and noise; returns ``(t, x_t, u_t[, eps])``.

        Shapes: x0, x1 ``(B, *shape)``; t ``(B,)``; x_t, u_t, eps like x0. ``check_finite``: as
        in :meth:`loss`. Torch tensors, or another library's arrays (numpy, cupy, JAX, DLPack:
        the results come back in it; values only, no derivatives outside torch).
        """
        ops.interpolant.validate_batches(x0, x1)
        if wants_check(check_finite, x0):
            check_step_inputs(x0, x1, sigma=self.sigma)
        if t is not None:
            t = ops.interpolant.validate_t(t, x0)  # before the coupling's own errors
        x0, x1 = self.couple(x0, x1, generator)
        return self._sample(x0, x1, t, return_noise, generator)

    @accepts_arrays("x0", "x1", "t")
    def sample_paired(self, x0: torch.Tensor, x1: torch.Tensor, t=None, return_noise: bool = False,
                      generator: Optional[torch.Generator] = None, check_finite: Optional[bool] = None):
        """:meth:`sample_location_and_conditional_flow` for a batch that is already coupled (any
        array library too)."""
        if wants_check(check_finite, x0):
            ops.interpolant.validate_batches(x0, x1)
            check_step_inputs(x0, x1, sigma=self.sigma)
        return self._sample(x0, x1, None if t is None else ops.interpolant.validate_t(t, x0), return_noise, generator)

    def _sample(self, x0, x1, t, return_noise: bool, generator):
        """The draw itself, on a validated ``t`` (or None: drawn here)."""
        if t is None:
            t = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator)
        noise = self.sample_noise_like(x0, generator)
        xt = self.sample_xt(x0, x1, t, noise)
        ut = self.conditional_flow_from_noise(x0, x1, t, xt, noise)
        return (t, xt, ut, noise) if return_noise else (t, xt, ut)

    def conditional_flow_from_noise(self, x0, x1, t, xt, noise) -> torch.Tensor:
        """u_t when the noise that made x_t is known (the eager training step): the same values as
        :meth:`compute_conditional_flow`, in a form that stays finite where that one divides by 0."""
        return self.compute_conditional_flow(x0, x1, t, xt)

    def loss(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
             x1: torch.Tensor, t=None, generator: Optional[torch.Generator] = None,
             weight: Optional[torch.Tensor] = None, fused: bool = True, check_finite: Optional[bool] = None) -> torch.Tensor:
        r"""The whole flow-matching step: couple, sample, call ``model(x_t, t)``, and return
        :math:`\frac{1}{B D}\sum_b w_b \|v_\theta(x_t^b, t_b) - u_t^b\|^2`.

        Args:
            weight: optional ``(B,)`` per-sample weights (default 1).
            fused: run the `interpolant` kernels (float32/float64/float16/bfloat16; they compute
                in double): x_t comes from one fused kernel with Philox noise drawn from
                ``generator``, and the loss kernel recomputes u_t (and the noise) instead of storing
                them; its backward returns only dL/dv. ``fused=False`` uses the eager torch formulas
                (same math, noise from torch's RNG).
            check_finite: the NaN policy (the same for every path). When on, NaN/Inf in ``x0``,
                ``x1``, ``t`` or ``weight`` is a ValueError naming the argument, and so are batches
                whose squared error would overflow the dtype (:func:`check_step_inputs`), at the
                cost of one host read. None (default) = on for CPU batches, off for CUDA ones,
                where the read would be a synchronization per step; True = on everywhere; False =
                off. Off, NaN inputs give a NaN loss (a given ``t`` is checked in any case), which the :class:`flowfast.train.Trainer`
                turns into a FloatingPointError when it reads the losses back. The OT couplings
                check their batch in any case (their cost read is needed anyway).
        """
        ops.interpolant.validate_batches(x0, x1)
        checking, weight = self._checked_step(x0, x1, weight, check_finite)
        given_t = None if t is None else ops.interpolant.validate_t(t, x0)  # before the coupling's own errors
        x0, x1 = self.couple(x0, x1, generator)
        t = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device, generator=generator) if t is None else given_t
        loss = self._fused_loss(model, x0, x1, t, weight, generator) if fused else None
        if loss is None:
            loss = self._eager_loss(model, x0, x1, t, weight, generator)
        if checking:
            check_loss_finite(loss, x0.dtype)
        return loss

    @accepts_arrays("v", "x0", "x1", "t", "noise", "weight")
    def prediction_loss(self, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t, noise=None,
                        weight: Optional[torch.Tensor] = None, check_finite: Optional[bool] = None) -> torch.Tensor:
        r"""The loss of a prediction from the caller's own model call,
        :math:`\frac{1}{B D}\sum_b w_b \|v_b - u_t^b\|^2`, with u_t recomputed by the fused loss
        kernel from ``(x0, x1, t, noise)`` (never stored); differentiable in ``v``.

        For models that take more than ``(x_t, t)`` (labels, conditioning) or live outside torch::

            t, xt, _, eps = path.sample_paired(x0, x1, return_noise=True)
            loss = path.prediction_loss(model(xt, t, labels), x0, x1, t, eps)

        Args:
            v: ``(B, *shape)`` the prediction at x_t; x0's shape, dtype and device.
            x0, x1: the coupled batch x_t was drawn from (no coupling happens here).
            t: ``(B,)`` times in [0, 1] (or a scalar).
            noise: the eps that made x_t; required where u_t depends on it (SB-CFM, TargetCFM),
                unused by the straight and VP paths (None there).
            weight: optional ``(B,)`` per-sample weights.
            check_finite: the NaN policy of :meth:`loss`.

        Torch tensors, or another library's arrays (numpy, cupy, JAX, DLPack): then the value comes
        back as a 0-d array of that library, without derivatives.
        """
        ops.interpolant.validate_batches(x0, x1)
        kind = _path_kinds.KINDS[self.kernel_path]
        for name, given in (("v", v), ("noise", noise)):
            if given is None:
                continue
            if not isinstance(given, torch.Tensor) or given.shape != x0.shape or given.dtype != x0.dtype \
                    or given.device != x0.device:
                raise ValueError(f"{name} must be shaped like x0 {tuple(x0.shape)} ({x0.dtype}, {x0.device}), got "
                                 + (f"{tuple(given.shape)} ({given.dtype}, {given.device})"
                                    if isinstance(given, torch.Tensor) else type(given).__name__))
        if v is None:
            raise TypeError("v (the prediction at x_t, shaped like x0) is required")
        if noise is None and kind in _path_kinds.VELOCITY_USES_NOISE:
            raise ValueError(f"{type(self).__name__}'s u_t depends on the noise that made x_t: pass it as noise= "
                             "(sample_paired(..., return_noise=True) returns it)")
        checking, weight = self._checked_step(x0, x1, weight, check_finite)
        t = ops.interpolant.validate_t(t, x0)
        loss = ops.interpolant.mean_loss(v, x0, x1, t, noise, weight, kind, self.sigma, 0, 0)
        if checking:
            check_loss_finite(loss, x0.dtype)
        return loss

    def _checked_step(self, x0, x1, weight, check_finite) -> tuple[bool, Optional[torch.Tensor]]:
        """A loss's shared checks: (whether the NaN policy is on, the weight cast to x0's dtype).
        The caller's weight is checked before the cast, which could turn it into inf."""
        if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != (x0.shape[0],)):
            raise ValueError(f"weight must be a ({x0.shape[0]},) tensor")
        checking = wants_check(check_finite, x0)
        if checking:
            check_step_inputs(x0, x1, weight, self.sigma)
        if weight is not None:
            weight = weight.to(device=x0.device, dtype=x0.dtype)
        return checking, weight

    def _fused_loss(self, model, x0, x1, t, weight, generator) -> Optional[torch.Tensor]:
        """The kernels' loss (None for a dtype they do not take)."""
        if x0.dtype in ops.interpolant.KERNEL_DTYPES:
            seed, offset = draw_seed(generator)
            kind = _path_kinds.KINDS[self.kernel_path]
            xt, _ = ops.interpolant.sample(x0, x1, t, None, kind, self.sigma, seed, offset)
            v = model(xt, t)
            if v.shape != x0.shape:
                raise ValueError(f"model(x_t, t) returned shape {tuple(v.shape)}, expected {tuple(x0.shape)}")
            return ops.interpolant.mean_loss(v, x0, x1, t, None, weight, kind, self.sigma, seed, offset)
        return None

    def _eager_loss(self, model, x0, x1, t, weight, generator) -> torch.Tensor:
        _, xt, ut = self._sample(x0, x1, t, False, generator)
        v = model(xt, t)
        if v.shape != ut.shape:
            raise ValueError(f"model(x_t, t) returned shape {tuple(v.shape)}, expected {tuple(ut.shape)}")
        # Each sample's mean before the batch sum: no partial sum grows past the largest term.
        per_sample = ((v - ut) ** 2).reshape(v.shape[0], -1).mean(1)
        if weight is not None:
            per_sample = per_sample * weight
        return (per_sample / v.shape[0]).sum()


class OptimalTransportCFM(IndependentCFM):
    """OT-CFM: the I-CFM path on the exact minibatch-OT coupling (:class:`ExactOTCoupling`).

    Args:
        sigma: path noise.
        replace: False (default) = the optimal permutation; True = torchcfm's pairs drawn with
            replacement from the exact plan (about 37% of the batch repeated).
        coupling: another coupling instead (then ``replace`` is unused).
    """

    def __init__(self, sigma: float = 0.0, replace: bool = False, coupling: Optional[Coupling] = None) -> None:
        super().__init__(sigma, coupling if coupling is not None else ExactOTCoupling(replace))
        self.replace = replace


class SchrodingerBridgeCFM(IndependentCFM):
    r"""SB-CFM: Brownian-bridge paths :math:`\sigma_t = \sigma\sqrt{t(1-t)}` on the entropic OT coupling
    with :math:`\varepsilon = 2\sigma^2` (absolute, as in the paper and torchcfm).

    Args:
        sigma: bridge noise, > 0.
        ot_method: "sinkhorn" (entropic, the paper's choice) or "exact" (torchcfm's default).
        replace: as in :class:`OptimalTransportCFM`.
        coupling: another coupling instead of the preset (then ``ot_method``/``replace`` are unused).
    """

    kernel_path = "bridge"

    def __init__(self, sigma: float = 1.0, ot_method: str = "sinkhorn", replace: bool = False,
                 coupling: Optional[Coupling] = None) -> None:
        if ot_method not in ("sinkhorn", "exact"):
            raise ValueError(f"ot_method must be 'sinkhorn' or 'exact', got {ot_method!r}")
        super().__init__(sigma, coupling)
        if coupling is None:
            self.coupling = (ExactOTCoupling(replace) if ot_method == "exact"
                             else _BridgeCoupling(self.sigma, replace))
        self.ot_method = ot_method
        self.replace = replace

    def compute_sigma_t(self, t):
        return self.sigma * torch.sqrt(t * (1 - t))

    def compute_conditional_flow(self, x0, x1, t, xt):
        t = pad_t_like_x(t, x0)
        mu_t = t * x1 + (1 - t) * x0
        return (1 - 2 * t) / (2 * t * (1 - t) + _BRIDGE_GUARD) * (xt - mu_t) + x1 - x0

    def conditional_flow_from_noise(self, x0, x1, t, xt, noise):
        # x_t - mu_t = sigma_t noise, in float32 at least: the guard (1e-8) is 0 in float16, where
        # compute_conditional_flow's 1/(2 t (1 - t)) meets sigma_t = 0 at t = 0 or 1 as inf * 0.
        wide = torch.promote_types(x0.dtype, torch.float32)
        tw = pad_t_like_x(t.to(wide), x0)
        coefficient = (1 - 2 * tw) / (2 * tw * (1 - tw) + _BRIDGE_GUARD) * self.sigma * torch.sqrt(tw * (1 - tw))
        return (coefficient * noise.to(wide) + (x1.to(wide) - x0.to(wide))).to(x0.dtype)



class _BridgeCoupling(SinkhornCoupling):
    """SB-CFM's entropic coupling, eps = 2 sigma^2: errors about eps are told in terms of sigma,
    the argument the caller set."""

    def __init__(self, sigma: float, replace: bool) -> None:
        super().__init__(eps=2 * sigma**2, replace=replace)
        self.sigma = sigma

    def indices(self, x0, x1, generator=None):
        try:
            return super().indices(x0, x1, generator)
        except ValueError as error:
            if "too small" not in str(error):
                raise
            cost = pairwise_cost(as_points(x0), as_points(x1))
            least = math.sqrt(MIN_RELATIVE_EPS[cost.dtype] * float(cost.amax() - cost.amin()) / 2)
            raise ValueError(f"SB-CFM couples with eps = 2 sigma^2 = {2 * self.sigma**2:.3g} (sigma={self.sigma:g}), "
                             f"too small for {str(cost.dtype).replace('torch.', '')} on this batch: use "
                             f"sigma >= {least:.3g}, {'' if cost.dtype == torch.float64 else 'float64 batches, '}"
                             "or ot_method='exact'") from None


class TargetCFM(IndependentCFM):
    """Lipman et al.'s flow matching (torchcfm's TargetConditionalFlowMatcher): the path ends at x1
    with width ``sigma`` (sigma_min); the source must be N(0, I)."""

    kernel_path = "target"

    def compute_mu_t(self, x0, x1, t):
        return pad_t_like_x(t, x1) * x1

    def compute_sigma_t(self, t):
        return 1 - (1 - self.sigma) * t

    def compute_conditional_flow(self, x0, x1, t, xt):
        t = pad_t_like_x(t, x1)
        return (x1 - (1 - self.sigma) * xt) / (1 - (1 - self.sigma) * t)

    def conditional_flow_from_noise(self, x0, x1, t, xt, noise):
        # (x1 - (1 - sigma) x_t) / (1 - (1 - sigma) t) with x_t = t x1 + (1 - (1 - sigma) t) noise
        # is x1 - (1 - sigma) noise: no 0/0 at t = 1, sigma = 0 (the fused kernels' form).
        return x1 - (1 - self.sigma) * noise


class VariancePreservingCFM(IndependentCFM):
    """Trigonometric (variance-preserving) interpolant cos(pi t/2) x0 + sin(pi t/2) x1."""

    kernel_path = "vp"

    def compute_mu_t(self, x0, x1, t):
        t = pad_t_like_x(t, x0)
        return torch.cos(math.pi / 2 * t) * x0 + torch.sin(math.pi / 2 * t) * x1

    def compute_conditional_flow(self, x0, x1, t, xt):
        t = pad_t_like_x(t, x0)
        return math.pi / 2 * (torch.cos(math.pi / 2 * t) * x1 - torch.sin(math.pi / 2 * t) * x0)
