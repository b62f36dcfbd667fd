"""Custom ops over the `interpolant` kernel family (twin of csrc/include/flowfast/interpolant.h).

Inputs are ``(B, *shape)`` batches (flattened to ``(B, D)`` rows here), ``t`` is ``(B,)``. The
noise is either given (``noise``) or drawn inside the kernels by Philox from ``(seed, offset)``, in
which case no noise tensor is ever materialized and the loss recomputes it in both passes.

The family's validation point is :func:`validate_batches` / :func:`validate_t` (called by
:mod:`flowfast.paths`; ``t`` is checked only when the caller gives it, with one host read).

Ops:
    ``flowfast::interpolant_sample``         (x_t, noise or an empty tensor)
    ``flowfast::interpolant_loss``           per-sample ``w_b * sum_d (v - u_t)^2``, differentiable in v
    ``flowfast::interpolant_loss_backward``  its gradient kernel (a custom op so AOT/compile can trace it)
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._path_kinds import BRIDGE, BRIDGE_GUARD, KINDS, LINEAR, VP  # noqa: F401  KINDS re-exported
from flowfast._validate import check_batch_pair, check_finite

#: storage dtypes of the kernels (they compute in double)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def validate_batches(x0: torch.Tensor, x1: torch.Tensor) -> None:
    """x0, x1: (B, *shape) of one kernel dtype, device and shape."""
    check_batch_pair(x0, x1, dtypes=KERNEL_DTYPES)


def validate_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    check_finite("t", t)
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must lie in [0, 1]")
    return t.to(device=x.device, dtype=x.dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, *shape) -> contiguous (B, D); (B, D) contiguous batches pass as they are (the common case
    of a training step, where the reshape's cost is noticeable)."""
    if t.dim() == 2 and t.is_contiguous():
        return t
    return t.reshape(t.shape[0], -1).contiguous()


def _like(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, D) kernel output viewed with x's shape."""
    return rows if rows.dim() == x.dim() else rows.view(x.shape)


def _inputs(x0, x1, t, noise, kind, sigma, seed, offset):
    """Descriptor tuple; every tensor passed in must stay alive during the call."""
    return (_arrays.describe(x0), _arrays.describe(x1), _arrays.describe(t),
            None if noise is None else _arrays.describe(noise), int(kind), float(sigma), int(seed), int(offset))


def _kernel_call(fn):
    """Runs a kernel wrapper in :func:`flowfast._arrays.kernel_scope` (functorch transforms
    suspended), so the autograd.Function rules can call kernels under torch.func.jvp/grad."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _arrays.kernel_scope():
            return fn(*args, **kwargs)
    return call


def _prepare(x0, x1, t, noise, v=None, weight=None):
    x0, x1, t, noise, v, weight = (_arrays.plain(a) for a in (x0, x1, t, noise, v, weight))
    rows = [_rows(x0), _rows(x1), t.contiguous(), None if noise is None else _rows(noise)]
    rows.append(None if v is None else _rows(v))
    rows.append(None if weight is None else weight.contiguous())
    return rows


@_kernel_call
def sample_impl(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor], kind: int,
                sigma: float, seed: int, offset: int, return_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel call behind ``flowfast::interpolant_sample`` (callable directly in eager mode)."""
    r0, r1, tc, e, _, _ = _prepare(x0, x1, t, noise)
    xt = torch.empty_like(r0)
    used_noise = torch.empty_like(r0) if return_noise else r0.new_empty(0)
    _C.interpolant_sample(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(xt),
                          _arrays.describe(used_noise) if return_noise else None, _arrays.stream_handle(r0.device))
    return _like(xt, x0), (_like(used_noise, x0) if return_noise else used_noise)


@torch.library.custom_op("flowfast::interpolant_sample", mutates_args=())
def interpolant_sample(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor], kind: int,
                       sigma: float, seed: int, offset: int,
                       return_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_impl(x0, x1, t, noise, kind, sigma, seed, offset, return_noise)


@interpolant_sample.register_fake
def _(x0, x1, t, noise, kind, sigma, seed, offset, return_noise):
    return torch.empty_like(x0), (torch.empty_like(x0) if return_noise else x0.new_empty(0))


@_kernel_call
def loss_backward_impl(grad: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                       noise: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int,
                       offset: int) -> torch.Tensor:
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, noise, v, weight)
    g = _arrays.plain(grad).contiguous()
    grad_v = torch.empty_like(rv)
    _C.interpolant_loss_backward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                 None if w is None else _arrays.describe(w), _arrays.describe(g),
                                 _arrays.describe(grad_v), _arrays.stream_handle(r0.device))
    return _like(grad_v, v)


@torch.library.custom_op("flowfast::interpolant_loss_backward", mutates_args=())
def interpolant_loss_backward(grad: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor,
                              t: torch.Tensor, noise: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int,
                              sigma: float, seed: int, offset: int) -> torch.Tensor:
    return loss_backward_impl(grad, v, x0, x1, t, noise, weight, kind, sigma, seed, offset)


@interpolant_loss_backward.register_fake
def _(grad, v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
    return torch.empty_like(v)


@_kernel_call
def loss_impl(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor],
              weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    return _loss_forward(v, x0, x1, t, noise, weight, kind, sigma, seed, offset, None)[0]


@_kernel_call
def mean_loss_impl(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                   noise: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int, sigma: float,
                   seed: int, offset: int) -> torch.Tensor:
    """The mean loss ``sum_b per_sample[b] / v.numel()``, reduced by the kernel (no gradient)."""
    return _loss_forward(v, x0, x1, t, noise, weight, kind, sigma, seed, offset, None, mean=True)[2]


@_kernel_call
def mean_loss_and_grad_impl(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                            noise: Optional[torch.Tensor], weight: Optional[torch.Tensor], kind: int, sigma: float,
                            seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss ``sum_b per_sample[b] / v.numel()`` and its gradient w.r.t. v, from one pass
    of the forward kernel."""
    grad_scale = 1.0 if _grad_stored_unscaled(v) else 1.0 / v.numel()
    _, grad_v, mean = _loss_forward(v, x0, x1, t, noise, weight, kind, sigma, seed, offset, grad_scale, mean=True)
    return mean, _like(grad_v, v)


def _grad_stored_unscaled(v: torch.Tensor) -> bool:
    """Whether the forward kernel stores dL/dv without the 1 / numel of the mean: for 16-bit
    dtypes, whose 2 w (v - u_t) / numel underflows (a loss scaler's factor arrives only in the
    backward, which then divides, as eager autograd does)."""
    return v.element_size() < 4


def _loss_forward(v, x0, x1, t, noise, weight, kind, sigma, seed, offset, grad_scale, mean=False):
    """(per-sample loss (B,), the gradient of grad_scale * its sum as (B, D) rows or None, the
    mean loss as a 0-d tensor or None). An empty batch's mean is 0 / 0 = nan, as torch's."""
    r0, r1, tc, e, rv, w = _prepare(x0, x1, t, noise, v, weight)
    per_sample = r0.new_empty(r0.shape[0])
    grad_v = None if grad_scale is None else torch.empty_like(rv)
    total = r0.new_empty(()) if mean and r0.numel() else None
    _C.interpolant_loss_forward(_inputs(r0, r1, tc, e, kind, sigma, seed, offset), _arrays.describe(rv),
                                None if w is None else _arrays.describe(w), _arrays.describe(per_sample),
                                None if grad_v is None else _arrays.describe(grad_v),
                                0.0 if grad_scale is None else float(grad_scale),
                                None if total is None else _arrays.describe(total), _arrays.stream_handle(r0.device))
    if mean and total is None:
        total = per_sample.sum() / r0.numel()
    return per_sample, grad_v, total


@torch.library.custom_op("flowfast::interpolant_loss", mutates_args=())
def interpolant_loss(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor],
                     weight: Optional[torch.Tensor], kind: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    return loss_impl(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)


@interpolant_loss.register_fake
def _(v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
    return v.new_empty(v.shape[0])


# --- derivatives ---------------------------------------------------------------------------------
class _Kernels(NamedTuple):
    """The three kernel entry points, as plain calls (eager autograd.Functions) or as the custom
    ops (the custom ops' own autograd, which AOT autograd / torch.compile trace)."""

    sample: Callable
    loss: Callable
    loss_backward: Callable


# For a fixed t every path is linear in (x0, x1, noise): x_t = a x0 + b x1 + c noise and
# u_t = da x0 + db x1 + dc noise. So the kernels themselves give the derivatives in those inputs
# exactly: the sample kernel applied to tangents (dx0, dx1, dnoise) is the tangent of x_t, and the
# backward kernel at v = 0 with upstream -1/2 returns u_t of its inputs (2 * (-1/2) * (0 - u_t) =
# u_t, exact in floating point), which applied to tangents or cotangents gives du_t. In t:
# dx_t/dt = u_t except for the bridge, whose u_t carries torchcfm's guard (a correction term on the
# noise), and du_t/dt is 0 (linear, target), -(pi/2)^2 (x_t - sigma noise) (VP) or
# d(dc)/dt noise (bridge).

def _linear_xt(k, x0, x1, t, noise, kind, sigma):
    """a x0 + b x1 + c noise (None = 0) at the given t: the sample kernel on given noise."""
    noise = torch.zeros_like(x0) if noise is None else noise
    return k.sample(x0, x1, t, noise, kind, sigma, 0, 0, False)[0]


def _linear_ut(k, x0, x1, t, noise, kind, sigma, seed=0, offset=0):
    """da x0 + db x1 + dc noise: u_t of the given rows (noise None = drawn from (seed, offset))."""
    half = torch.full((x0.shape[0],), -0.5, dtype=x0.dtype, device=x0.device)
    return k.loss_backward(half, torch.zeros_like(x0), x0, x1, t, noise, None, kind, sigma, seed, offset)


def _zeros_or(tangent, like):
    return torch.zeros_like(like) if tangent is None else tangent


def _rows_scale(per_row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return per_row.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * x


def _noise(k, x0, t, noise, seed, offset):
    """The noise the kernels use: noise, or the Philox draw of (seed, offset)."""
    if noise is not None:
        return noise
    return k.sample(x0, x0, t, None, LINEAR, 0.0, seed, offset, True)[1]


def _bridge_dc(t: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c'(t) - dc(t), d(dc)/dt) of the bridge, in float64: c = sigma sqrt(t(1-t)) and
    dc = k c with k = (1 - 2t) / (2t(1-t) + guard)."""
    t = t.double()
    q = t * (1 - t)
    root = torch.sqrt(q)
    c, dc_true = sigma * root, sigma * (1 - 2 * t) / (2 * root)
    den = 2 * q + BRIDGE_GUARD
    k = (1 - 2 * t) / den
    dk = (-2 * den - 2 * (1 - 2 * t) ** 2) / den**2
    return dc_true - k * c, dk * c + k * dc_true


def _dxt_dt(k, x0, x1, t, noise, kind, sigma, seed, offset):
    """d x_t / dt (like x0)."""
    ut = _linear_ut(k, x0, x1, t, noise, kind, sigma, seed, offset).view(x0.shape)
    if kind != BRIDGE:
        return ut
    correction, _ = _bridge_dc(t, sigma)
    return ut + _rows_scale(correction, _noise(k, x0, t, noise, seed, offset))


def _dut_dt(k, x0, x1, t, noise, kind, sigma, seed, offset):
    """d u_t / dt (like x0), or None where it is 0."""
    if kind == VP:
        mean = _linear_xt(k, x0, x1, t, None, kind, sigma)
        return -(math.pi / 2) ** 2 * mean
    if kind == BRIDGE:
        _, ddc = _bridge_dc(t, sigma)
        return _rows_scale(ddc, _noise(k, x0, t, noise, seed, offset))
    return None


def _sample_backward(k, grad_xt, x0, x1, t, noise, kind, sigma, seed, offset, needs):
    """(grad_x0, grad_x1, grad_t, grad_noise) of x_t = a x0 + b x1 + c noise, each None unless needed."""
    zero = torch.zeros_like(grad_xt)
    gx0 = _linear_xt(k, grad_xt, zero, t, zero, kind, sigma) if needs[0] else None
    gx1 = _linear_xt(k, zero, grad_xt, t, zero, kind, sigma) if needs[1] else None
    gt = None
    if needs[2]:
        dxt = _dxt_dt(k, x0, x1, t, noise, kind, sigma, seed, offset)
        gt = (grad_xt * dxt).reshape(grad_xt.shape[0], -1).sum(1).to(t.dtype)
    geps = _linear_xt(k, zero, zero, t, grad_xt, kind, sigma) if needs[3] else None
    return gx0, gx1, gt, geps


def _loss_backward_all(k, grad, v, x0, x1, t, noise, weight, kind, sigma, seed, offset, needs):
    """Gradients of per-sample w_b sum_d (v - u_t)^2 w.r.t. (v, x0, x1, t, noise, weight)."""
    if not any(needs):
        return (None,) * 6
    grad_v = k.loss_backward(grad, v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
    gx0 = gx1 = gt = geps = gw = None
    if needs[1] or needs[2] or needs[4]:
        # dL/du_t = -dL/dv; pulled back through u_t = da x0 + db x1 + dc noise.
        back = -grad_v
        zero = torch.zeros_like(back)
        gx0 = _linear_ut(k, back, zero, t, zero, kind, sigma) if needs[1] else None
        gx1 = _linear_ut(k, zero, back, t, zero, kind, sigma) if needs[2] else None
        geps = _linear_ut(k, zero, zero, t, back, kind, sigma) if needs[4] else None
    if needs[3]:
        dut = _dut_dt(k, x0, x1, t, noise, kind, sigma, seed, offset)
        gt = (torch.zeros_like(t) if dut is None
              else -(grad_v * dut.view(grad_v.shape)).reshape(v.shape[0], -1).sum(1).to(t.dtype))
    if needs[5]:
        gw = grad * k.loss(v, x0, x1, t, noise, None, kind, sigma, seed, offset)
    return (grad_v if needs[0] else None), gx0, gx1, gt, geps, gw


def _loss_jvp(k, tangents, v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
    """Tangent of the per-sample loss for tangents of (v, x0, x1, t, noise, weight)."""
    dv, dx0, dx1, dt, deps, dw = tangents
    B = v.shape[0]
    out = torch.zeros(B, dtype=v.dtype, device=v.device)
    dut_dt = _dut_dt(k, x0, x1, t, noise, kind, sigma, seed, offset) if dt is not None else None
    if dv is not None or dx0 is not None or dx1 is not None or deps is not None or dut_dt is not None:
        # 2 w_b (v - u_t) from the backward kernel, against the tangent of (v - u_t).
        ones = torch.ones(B, dtype=v.dtype, device=v.device)
        residual_grad = k.loss_backward(ones, v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
        d_residual = _zeros_or(dv, v)
        if dx0 is not None or dx1 is not None or deps is not None:
            d_residual = d_residual - _linear_ut(k, _zeros_or(dx0, x0), _zeros_or(dx1, x1), t, _zeros_or(deps, x0),
                                                 kind, sigma).view(v.shape)
        if dut_dt is not None:
            d_residual = d_residual - _rows_scale(dt, dut_dt).view(v.shape)
        out = out + (residual_grad * d_residual).reshape(B, -1).sum(1)
    if dw is not None:
        out = out + dw * k.loss(v, x0, x1, t, noise, None, kind, sigma, seed, offset)
    return out


def _loss_inputs(ctx):
    """(v, x0, x1, t, noise, weight, kind, sigma, seed, offset) as saved by the loss Functions."""
    return (*ctx.saved_tensors, *ctx.config)


def _loss_setup(ctx, inputs, output):
    v, x0, x1, t, noise, weight, *config = inputs
    ctx.save_for_backward(v, x0, x1, t, noise, weight)
    ctx.config = tuple(config)
    ctx.kernels = TRACEABLE


def _loss_backward(ctx, grad):
    grads = _loss_backward_all(ctx.kernels, grad, *_loss_inputs(ctx), needs=ctx.needs_input_grad[:6])
    return (*grads, None, None, None, None)


EAGER = _Kernels(sample_impl, loss_impl, loss_backward_impl)
TRACEABLE = _Kernels(interpolant_sample, interpolant_loss, interpolant_loss_backward)

torch.library.register_autograd("flowfast::interpolant_loss", _loss_backward, setup_context=_loss_setup)


def _sample_setup(ctx, inputs, output):
    x0, x1, t, noise, kind, sigma, seed, offset, return_noise = inputs
    ctx.save_for_backward(x0, x1, t, noise)
    ctx.config = (kind, sigma, seed, offset)
    ctx.kernels = TRACEABLE


def _sample_backward_op(ctx, grad_xt, _grad_noise):
    x0, x1, t, noise = ctx.saved_tensors
    grads = _sample_backward(ctx.kernels, grad_xt, x0, x1, t, noise, *ctx.config, ctx.needs_input_grad[:4])
    return (*grads, None, None, None, None, None)


torch.library.register_autograd("flowfast::interpolant_sample", _sample_backward_op, setup_context=_sample_setup)


class _SampleRules:
    """``interpolant_sample``, differentiable in x0, x1, t and a given noise (reverse and forward
    mode); the returned noise is not differentiable."""

    @staticmethod
    def forward(x0, x1, t, noise, kind, sigma, seed, offset, return_noise):
        return sample_impl(x0, x1, t, noise, kind, sigma, seed, offset, return_noise)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _sample_setup(ctx, inputs, output)
        ctx.kernels = EAGER
        ctx.save_for_forward(*inputs[:4])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_xt, _grad_noise):
        return _sample_backward_op(ctx, grad_xt, _grad_noise)

    @staticmethod
    def jvp(ctx, dx0, dx1, dt, dnoise, *_):
        x0, x1, t, noise = ctx.saved_tensors
        kind, sigma, seed, offset = ctx.config
        dxt = _linear_xt(ctx.kernels, _zeros_or(dx0, x0), _zeros_or(dx1, x1), t, dnoise, kind, sigma)
        if dt is not None:
            dxt = dxt + _rows_scale(dt, _dxt_dt(ctx.kernels, x0, x1, t, noise, kind, sigma, seed, offset))
        return dxt, None


class _LossRules:
    """Per-sample ``interpolant_loss``, differentiable in v, x0, x1, t, a given noise and the
    weight (reverse and forward mode)."""

    @staticmethod
    def forward(*inputs):
        return loss_impl(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _loss_setup(ctx, inputs, output)
        ctx.kernels = EAGER
        ctx.save_for_forward(*inputs[:6])

    backward = staticmethod(_loss_backward)

    @staticmethod
    def jvp(ctx, *tangents):
        return _loss_jvp(ctx.kernels, tangents[:6], *_loss_inputs(ctx))


class _MeanLossRules(_LossRules):
    """``interpolant_loss(...).sum() / v.numel()`` as one autograd node: the scalar a training step
    needs, without the two extra nodes (sum, div) per step (~35 us on a CPU toy step)."""

    @staticmethod
    def forward(*inputs):
        return loss_impl(*inputs).sum() / inputs[0].numel()

    @staticmethod
    def backward(ctx, grad):
        v = ctx.saved_tensors[0]
        return _loss_backward(ctx, (grad / v.numel()).expand(v.shape[0]))

    @staticmethod
    def jvp(ctx, *tangents):
        return _LossRules.jvp(ctx, *tangents).sum() / ctx.saved_tensors[0].numel()


class _EagerOp:
    """An op's rules as autograd.Functions, without the dispatcher (the custom op costs ~0.1 ms per
    call in eager mode, which a 2-D toy step notices). Two classes from the same rules: torch.func
    transforms need the ``setup_context`` form, whose ``apply`` binds arguments by signature
    (~20 us per call), so outside those transforms the classic ``forward(ctx, ...)`` form runs
    (reverse mode and ``torch.autograd.forward_ad`` both work there). Under torch.compile use the
    custom ops (see :func:`sample`, :func:`loss`)."""

    def __init__(self, rules) -> None:
        def classic_forward(ctx, *inputs):
            output = rules.forward(*inputs)
            rules.setup_context(ctx, inputs, output)
            return output

        common = {"backward": staticmethod(rules.backward), "jvp": staticmethod(rules.jvp), "__doc__": rules.__doc__}
        name = rules.__name__.strip("_").replace("Rules", "")
        self.classic = type(name, (torch.autograd.Function,), {"forward": staticmethod(classic_forward), **common})
        self.transformable = type(name + "Transformable", (torch.autograd.Function,),
                                  {"forward": staticmethod(rules.forward),
                                   "setup_context": staticmethod(rules.setup_context), **common})

    def apply(self, *inputs):
        if torch._C._are_functorch_transforms_active():
            return self.transformable.apply(*inputs)
        return self.classic.apply(*inputs)


EagerSample = _EagerOp(_SampleRules)
EagerLoss = _EagerOp(_LossRules)
EagerMeanLoss = _EagerOp(_MeanLossRules)


class TrainingMeanLoss(torch.autograd.Function):
    """The mean loss of a training step, where only the prediction v needs a gradient: the forward
    kernel writes dL/dv in the same pass and the backward scales it (no second kernel, one autograd
    node). Memory: one (B, D) buffer held until the backward, like the u_t that eager code keeps.
    Reverse mode, first order only (:func:`mean_loss` takes :data:`EagerMeanLoss` for the rest)."""

    @staticmethod
    def forward(ctx, v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
        loss, grad_v = mean_loss_and_grad_impl(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
        ctx.save_for_backward(grad_v)
        ctx.unscaled_numel = v.numel() if _grad_stored_unscaled(v) else None
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (grad_v,) = ctx.saved_tensors
        if ctx.unscaled_numel is not None:
            grad = grad / ctx.unscaled_numel
        return grad_v * grad, None, None, None, None, None, None, None, None, None


def _only_v_needs_grad(v, x0, x1, t, noise, weight) -> bool:
    """A plain training step: reverse mode, grad on, v the only input that requires grad, and no
    torch.func transform or forward-mode level active."""
    if not (v.requires_grad and torch.is_grad_enabled()):
        return False
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return False
    return not any(a is not None and a.requires_grad for a in (x0, x1, t, noise, weight))


def _needs_derivatives(*tensors) -> bool:
    """Whether an autograd node is needed: an input requires grad (with grad mode on), forward-mode
    AD is active (a dual level is open) or a torch.func transform is."""
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def sample(x0, x1, t, noise, kind, sigma, seed, offset, return_noise=False):
    """``interpolant_sample``: the custom op while compiling, :class:`EagerSample` where a
    derivative can be asked for, the bare kernel call otherwise (a training step's x_t)."""
    if torch.compiler.is_compiling():
        return interpolant_sample(x0, x1, t, noise, kind, sigma, seed, offset, return_noise)
    if _needs_derivatives(x0, x1, t, noise):
        return EagerSample.apply(x0, x1, t, noise, kind, sigma, seed, offset, return_noise)
    return sample_impl(x0, x1, t, noise, kind, sigma, seed, offset, return_noise)


def loss(v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
    """``interpolant_loss`` (per-sample, differentiable in v): the custom op while compiling,
    :class:`EagerLoss` otherwise."""
    if torch.compiler.is_compiling():
        return interpolant_loss(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
    return EagerLoss.apply(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)


def mean_loss(v, x0, x1, t, noise, weight, kind, sigma, seed, offset):
    """``sum_b w_b sum_d (v - u_t)^2 / v.numel()`` (a scalar, differentiable in v): the custom op
    plus torch reductions while compiling, :class:`EagerMeanLoss` otherwise."""
    if torch.compiler.is_compiling():
        return interpolant_loss(v, x0, x1, t, noise, weight, kind, sigma, seed, offset).sum() / v.numel()
    if _only_v_needs_grad(v, x0, x1, t, noise, weight):
        return TrainingMeanLoss.apply(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
    if not _needs_derivatives(v, x0, x1, t, noise, weight):
        return mean_loss_impl(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
    return EagerMeanLoss.apply(v, x0, x1, t, noise, weight, kind, sigma, seed, offset)
