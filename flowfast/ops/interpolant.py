"""Custom ops over the `interpolant` kernel family (twin of csrc/include/flowfast/interpolant.h).

Inputs are ``(B, *shape)`` batches (flattened to ``(B, D)`` rows here), ``t`` is ``(B,)``. The
noise is either given (``eps``) or drawn inside the kernels by Philox from ``(seed, offset)``, in
which case no noise tensor is ever materialized and the loss recomputes it in both passes.

Ops:
    ``flowfast::interpolant_sample``         (x_t, eps or an empty tensor)
    ``flowfast::interpolant_loss``           per-sample ``w_b * sum_d (v - u_t)^2``, differentiable in v
    ``flowfast::interpolant_loss_backward``  its gradient kernel (a custom op so AOT/compile can trace it)
"""

from __future__ import annotations

from typing import Optional

import torch

from flowfast import _arrays
from flowfast._backend import _C

KINDS = {"linear": 0, "bridge": 1, "target": 2, "vp": 3}


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).contiguous()


def _inputs(x0, x1, t, eps, kind, sigma, seed, offset):
    """Descriptor tuple; every tensor passed in must stay alive during the call."""
    return (_arrays.describe(x0), _arrays.describe(x1), _arrays.describe(t),
            None if eps is None else _arrays.describe(eps), int(kind), float(sigma), int(seed), int(offset))


def _prepare(x0, x1, t, eps, v=None, weight=None):
    rows = [_rows(x0), _rows(x1), t.contiguous(), None if eps is None else _rows(eps)]
    rows.append(None if v is None else _rows(v))
    rows.append(None if weight is None else weight.contiguous())
    return rows


def sample_impl(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor], kind: int,
                sigma: float, seed: int, offset: int, return_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel call behind ``flowfast::interpolant_sample`` (callable directly in eager mode)."""
    r0, r1, tc, e, _, _ = _prepare(x0, x1, t, eps)
    xt = torch.empty_like(r0)
    noise = torch.empty_like(r0) if return_noise else r0.new_empty(0)
    _C.interpolant_sample(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(xt),
                          _arrays.describe(noise) if return_noise else None, _arrays.stream_handle(r0.device))
    return xt.view(x0.shape), (noise.view(x0.shape) if return_noise else noise)


@torch.library.custom_op("flowfast::interpolant_sample", mutates_args=())
def interpolant_sample(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor], kind: int,
                       sigma: float, seed: int, offset: int,
                       return_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_impl(x0, x1, t, eps, kind, sigma, seed, offset, return_noise)


@interpolant_sample.register_fake
def _(x0, x1, t, eps, kind, sigma, seed, offset, return_noise):
    return torch.empty_like(x0), (torch.empty_like(x0) if return_noise else x0.new_empty(0))


def loss_backward_impl(grad: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                       eps: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int,
                       offset: int) -> torch.Tensor:
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, eps, v, weight)
    g = grad.contiguous()
    grad_v = torch.empty_like(rv)
    _C.interpolant_loss_backward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                 None if w is None else _arrays.describe(w), _arrays.describe(g),
                                 _arrays.describe(grad_v), _arrays.stream_handle(r0.device))
    return grad_v.view(v.shape)


@torch.library.custom_op("flowfast::interpolant_loss_backward", mutates_args=())
def interpolant_loss_backward(grad: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                              t: torch.Tensor, eps: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int,
                              sigma: float, seed: int, offset: int) -> torch.Tensor:
    return loss_backward_impl(grad, v, x0, x1, t, eps, weight, kind, sigma, seed, offset)


@interpolant_loss_backward.register_fake
def _(grad, v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    return torch.empty_like(v)


def loss_impl(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor],
              weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, eps, v, weight)
    per_sample = r0.new_empty(r0.shape[0])
    _C.interpolant_loss_forward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                None if w is None else _arrays.describe(w), _arrays.describe(per_sample),
                                _arrays.stream_handle(r0.device))
    return per_sample


@torch.library.custom_op("flowfast::interpolant_loss", mutates_args=())
def interpolant_loss(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor],
                     weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    return loss_impl(v, x0, x1, t, eps, weight, kind, sigma, seed, offset)


@interpolant_loss.register_fake
def _(v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    return v.new_empty(v.shape[0])


def _save_loss_inputs(ctx, inputs) -> None:
    """Keep what the loss backward recomputes u_t from: (v, x0, x1, t, eps, weight) and the config
    (kind, sigma, seed, offset). Shared by the custom op's autograd and the eager Functions."""
    v, x0, x1, t, eps, weight, *config = inputs
    ctx.save_for_backward(v, x0, x1, t, eps, weight)
    ctx.config = tuple(config)


def _saved_loss_inputs(ctx) -> tuple:
    """(v, x0, x1, t, eps, weight, kind, sigma, seed, offset) as saved by :func:`_save_loss_inputs`."""
    return (*ctx.saved_tensors, *ctx.config)


def _loss_setup(ctx, inputs, output):
    _save_loss_inputs(ctx, inputs)


def _loss_backward(ctx, grad):
    grad_v = None
    if ctx.needs_input_grad[0]:
        grad_v = interpolant_loss_backward(grad, *_saved_loss_inputs(ctx))
    return grad_v, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("flowfast::interpolant_loss", _loss_backward, setup_context=_loss_setup)


class EagerLoss(torch.autograd.Function):
    """``interpolant_loss`` without the dispatcher (same kernels, same gradient): the custom op
    costs ~0.1 ms per call in eager mode, which a 2-D toy step notices. Under torch.compile use the
    custom ops (:func:`loss`)."""

    @staticmethod
    def forward(ctx, *inputs):
        _save_loss_inputs(ctx, inputs)
        return loss_impl(*inputs)

    @staticmethod
    def backward(ctx, grad):
        return (loss_backward_impl(grad, *_saved_loss_inputs(ctx)),) + (None,) * 9


class EagerMeanLoss(torch.autograd.Function):
    """``interpolant_loss(...).sum() / v.numel()`` as one autograd node: the scalar a training step
    needs, without the two extra nodes (sum, div) per step (~35 us on a CPU toy step)."""

    @staticmethod
    def forward(ctx, *inputs):
        _save_loss_inputs(ctx, inputs)
        return loss_impl(*inputs).sum() / inputs[0].numel()

    @staticmethod
    def backward(ctx, grad):
        saved = _saved_loss_inputs(ctx)
        v = saved[0]
        per_sample_grad = (grad / v.numel()).expand(v.shape[0])
        return (loss_backward_impl(per_sample_grad, *saved),) + (None,) * 9


def sample(x0, x1, t, eps, kind, sigma, seed, offset, return_noise=False):
    """``interpolant_sample``: the custom op while compiling, the direct kernel call otherwise."""
    fn = interpolant_sample if torch.compiler.is_compiling() else sample_impl
    return fn(x0, x1, t, eps, kind, sigma, seed, offset, return_noise)


def loss(v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    """``interpolant_loss`` (per-sample, differentiable in v): the custom op while compiling,
    :class:`EagerLoss` otherwise."""
    if torch.compiler.is_compiling():
        return interpolant_loss(v, x0, x1, t, eps, weight, kind, sigma, seed, offset)
    return EagerLoss.apply(v, x0, x1, t, eps, weight, kind, sigma, seed, offset)


def mean_loss(v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    """``sum_b w_b sum_d (v - u_t)^2 / v.numel()`` (a scalar, differentiable in v): the custom op
    plus torch reductions while compiling, :class:`EagerMeanLoss` otherwise."""
    if torch.compiler.is_compiling():
        return interpolant_loss(v, x0, x1, t, eps, weight, kind, sigma, seed, offset).sum() / v.numel()
    return EagerMeanLoss.apply(v, x0, x1, t, eps, weight, kind, sigma, seed, offset)
