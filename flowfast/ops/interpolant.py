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


@torch.library.custom_op("flowfast::interpolant_sample", mutates_args=())
def interpolant_sample(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor], kind: int,
                       sigma: float, seed: int, offset: int,
                       return_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    r0, r1, tc, e, _, _ = _prepare(x0, x1, t, eps)
    xt = torch.empty_like(r0)
    noise = torch.empty_like(r0) if return_noise else r0.new_empty(0)
    _C.interpolant_sample(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(xt),
                          _arrays.describe(noise) if return_noise else None, _arrays.stream_handle(r0.device))
    return xt.view(x0.shape), (noise.view(x0.shape) if return_noise else noise)


@interpolant_sample.register_fake
def _(x0, x1, t, eps, kind, sigma, seed, offset, return_noise):
    return torch.empty_like(x0), (torch.empty_like(x0) if return_noise else x0.new_empty(0))


@torch.library.custom_op("flowfast::interpolant_loss_backward", mutates_args=())
def interpolant_loss_backward(grad: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                              t: torch.Tensor, eps: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int,
                              sigma: float, seed: int, offset: int) -> torch.Tensor:
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, eps, v, weight)
    g = grad.contiguous()
    grad_v = torch.empty_like(rv)
    _C.interpolant_loss_backward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                 None if w is None else _arrays.describe(w), _arrays.describe(g),
                                 _arrays.describe(grad_v), _arrays.stream_handle(r0.device))
    return grad_v.view(v.shape)


@interpolant_loss_backward.register_fake
def _(grad, v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    return torch.empty_like(v)


@torch.library.custom_op("flowfast::interpolant_loss", mutates_args=())
def interpolant_loss(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, eps: Optional[torch.Tensor],
                     weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, eps, v, weight)
    per_sample = r0.new_empty(r0.shape[0])
    _C.interpolant_loss_forward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                None if w is None else _arrays.describe(w), _arrays.describe(per_sample),
                                _arrays.stream_handle(r0.device))
    return per_sample


@interpolant_loss.register_fake
def _(v, x0, x1, t, eps, weight, kind, sigma, seed, offset):
    return v.new_empty(v.shape[0])


def _loss_setup(ctx, inputs, output):
    v, x0, x1, t, eps, weight, kind, sigma, seed, offset = inputs
    ctx.save_for_backward(v, x0, x1, t, eps, weight)
    ctx.config = (kind, sigma, seed, offset)


def _loss_backward(ctx, grad):
    v, x0, x1, t, eps, weight = ctx.saved_tensors
    grad_v = None
    if ctx.needs_input_grad[0]:
        grad_v = interpolant_loss_backward(grad, v, x0, x1, t, eps, weight, *ctx.config)
    return grad_v, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("flowfast::interpolant_loss", _loss_backward, setup_context=_loss_setup)
