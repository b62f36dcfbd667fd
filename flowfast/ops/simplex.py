"""Custom ops over the `simplex` kernel family (twin of csrc/include/flowfast/simplex.h): flow
maps towards the probability simplex.

Every tensor is ``(*lead, V)``: one softmax over the last dim per position (``lead`` is usually
``(B, L)``). Per-position scalars (``gamma``, ``s``, ``t``) are a Python float, a 0-d tensor, or a
tensor whose shape is a prefix of ``lead`` (``(B,)`` for ``(B, L, V)`` rows: one time per
sequence). They are carried in the accumulation dtype: float64 for float64 rows, float32
otherwise (16-bit rows are computed in float32).

The family's validation point is :func:`validate_rows` / :func:`per_position` (shapes, dtypes,
devices, and with ``validate=True`` the finiteness of every input and the order of the times in
one fused reduction: one host read).

Ops:
    ``flowfast::simplex_step``          (x_new, argmax or empty, log softmax or empty);
                                        differentiable in logits, x and gamma
    ``flowfast::simplex_distill_loss``  (per-position loss, d loss/d logits, d loss/d logits_dot):
                                        forward and backward in one launch, the gradients only when
                                        asked for; its autograd scales them by the upstream rows
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._validate import check_choice, check_float, check_same_device
from flowfast.ops import _switch

#: storage dtypes of the kernels
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: distillation losses and their kernel codes (csrc: ff::DistillKind)
DISTILL_KINDS = {"ecld": 0, "csd": 1}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- validation ------------------------------------------------------------------------------------
def validate_rows(name: str, logits, **like) -> torch.Tensor:
    """``logits``: a ``(*lead, V)`` tensor of a kernel dtype with V >= 1; every ``like`` tensor
    (None allowed) has its shape, dtype and device. Values are not read."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    check_float(name, logits, KERNEL_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must be (*lead, V) with V >= 1 classes, got shape {tuple(logits.shape)}")
    for other, t in like.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{other} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != logits.shape:
            raise ValueError(f"{other} must have the shape of {name} {tuple(logits.shape)}, got {tuple(t.shape)}")
        if t.dtype != logits.dtype:
            raise TypeError(f"{other} must have the dtype of {name} ({logits.dtype}), got {t.dtype}")
        check_same_device(**{name: logits, other: t})
    return logits


def per_position(name: str, value, logits: torch.Tensor) -> torch.Tensor:
    """``value`` (float, 0-d, or a tensor whose shape is a prefix of ``logits.shape[:-1]``) as a
    contiguous ``(R,)`` tensor of the accumulation dtype, R = the number of positions. Expanding
    keeps autograd: a gradient flows back to ``value``'s own shape."""
    lead = logits.shape[:-1]
    acc = accumulation_dtype(logits.dtype)
    if not isinstance(value, torch.Tensor):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
        value = torch.tensor(float(value), dtype=acc, device=logits.device)
    elif not (value.is_floating_point()):
        raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
    check_same_device(**{name: value, "logits": logits})
    if value.dim() > len(lead) or tuple(value.shape) != tuple(lead[: value.dim()]):
        raise ValueError(f"{name} must be a scalar or have a prefix of the positions' shape {tuple(lead)} "
                         f"(e.g. one value per sequence), got shape {tuple(value.shape)}")
    value = value.to(acc).reshape(tuple(value.shape) + (1,) * (len(lead) - value.dim()))
    return value.expand(lead).reshape(-1).contiguous()


def _check_values(tensors: Sequence[Optional[torch.Tensor]], names: Sequence[str],
                  s: Optional[torch.Tensor] = None, t: Optional[torch.Tensor] = None) -> None:
    """Finite inputs and 0 <= s <= t <= 1, in one fused reduction (one host read); the failing
    input is named only on failure."""
    present = [(n, a) for n, a in zip(names, tensors) if a is not None and a.numel()]
    flags = [torch.isfinite(a.detach()).all() for _, a in present]
    if s is not None:
        sd, td = s.detach(), t.detach()
        flags.append(((sd >= 0) & (sd <= td) & (td <= 1)).all())
    if not flags or bool(torch.stack(flags).all()):
        return
    for (n, a), ok in zip(present, flags):
        if not bool(ok):
            raise ValueError(f"{n} contains NaN/Inf values; all entries must be finite")
    raise ValueError("the times must satisfy 0 <= s <= t <= 1 (finite) at every position; "
                     f"got s in [{float(s.min()):.4g}, {float(s.max()):.4g}], t in [{float(t.min()):.4g}, "
                     f"{float(t.max()):.4g}] with {int((s > t).sum())} positions where s > t")


def impl_is_kernel(backend: str, device: torch.device) -> bool:
    return _switch.resolve(backend, device, "logits")[0] == "kernel"


def _rows(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None:
        return None
    t = _arrays.plain(t)
    return t.reshape(-1, t.shape[-1]).contiguous()


def _describe(t: Optional[torch.Tensor]):
    return None if t is None else _arrays.describe(t)


# --- the flow-map step -----------------------------------------------------------------------------
def simplex_step_impl(logits: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, return_argmax: bool,
                      return_log_probs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel call behind ``flowfast::simplex_step``: rows (R, V), gamma (R,) ->
    (x + gamma (softmax(logits) - x), argmax (R,) or empty, log softmax (R, V) or empty)."""
    with _arrays.kernel_scope():
        z, xr, g = _rows(logits), _rows(x), _arrays.plain(gamma).contiguous()
        x_new = torch.empty_like(xr)
        argmax = torch.empty(z.shape[0] if return_argmax else 0, dtype=torch.int64, device=z.device)
        log_probs = torch.empty_like(z) if return_log_probs else z.new_empty(0)
        _C.simplex_step(_arrays.describe(z), _arrays.describe(xr), _arrays.describe(g), _arrays.describe(x_new),
                        _arrays.describe(argmax) if return_argmax else None,
                        _arrays.describe(log_probs) if return_log_probs else None, _arrays.stream_handle(z.device))
    return x_new, argmax, log_probs


@torch.library.custom_op("flowfast::simplex_step", mutates_args=())
def simplex_step(logits: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, return_argmax: bool,
                 return_log_probs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return simplex_step_impl(logits, x, gamma, return_argmax, return_log_probs)


@simplex_step.register_fake
def _(logits, x, gamma, return_argmax, return_log_probs):
    argmax = logits.new_empty(logits.shape[0] if return_argmax else 0, dtype=torch.int64)
    return torch.empty_like(x), argmax, (torch.empty_like(logits) if return_log_probs else logits.new_empty(0))


def _step_setup(ctx, inputs, output):
    logits, x, gamma, _, _ = inputs
    ctx.save_for_backward(logits, x, gamma)


def _step_backward(ctx, grad_x, _grad_argmax, grad_log_probs):
    logits, x, gamma = ctx.saved_tensors
    acc = gamma.dtype
    p = torch.softmax(logits.to(acc), dim=-1)
    g = gamma[:, None]
    gx = grad_x.to(acc)
    grad_logits = g * p * (gx - (p * gx).sum(-1, keepdim=True))
    if grad_log_probs is not None and grad_log_probs.numel():
        glp = grad_log_probs.to(acc)
        grad_logits = grad_logits + glp - p * glp.sum(-1, keepdim=True)
    grad_gamma = ((p - x.to(acc)) * gx).sum(-1)
    return grad_logits.to(logits.dtype), ((1 - g) * gx).to(x.dtype), grad_gamma, None, None


simplex_step.register_autograd(_step_backward, setup_context=_step_setup)


def _step_jvp(logits, x, gamma, d_logits, d_x, d_gamma):
    """Tangent of x_new = x + gamma (p - x): (1 - gamma) dx + dgamma (p - x) + gamma p (dz - <p, dz>)."""
    acc = gamma.dtype
    p = torch.softmax(logits.to(acc), dim=-1)
    g = gamma[:, None]
    out = torch.zeros_like(p)
    if d_logits is not None:
        dz = d_logits.to(acc)
        out = out + g * p * (dz - (p * dz).sum(-1, keepdim=True))
    if d_x is not None:
        out = out + (1 - g) * d_x.to(acc)
    if d_gamma is not None:
        out = out + d_gamma[:, None] * (p - x.to(acc))
    return out.to(x.dtype)


class _EagerStep(torch.autograd.Function):
    """The step in eager mode where a derivative may be asked for: reverse mode as the custom op's
    (``_step_backward``) and forward mode (``torch.func.jvp``, ``forward_ad``), which torch.library
    custom ops cannot register. Only x_new is differentiable here (argmax / log softmax are not
    asked for by the flow maps' jumps)."""

    @staticmethod
    def forward(logits, x, gamma):
        return simplex_step_impl(logits, x, gamma, False, False)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_x):
        return _step_backward(ctx, grad_x, None, None)[:3]

    @staticmethod
    def jvp(ctx, d_logits, d_x, d_gamma):
        return _step_jvp(*ctx.saved_tensors, d_logits, d_x, d_gamma)


def _transforms_active() -> bool:
    """A torch.func transform or a forward-mode AD level is active."""
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


class StepResult(NamedTuple):
    """x: the new state (like the input x); argmax: (*lead,) int64 class of the largest logit (or
    None); log_probs: log softmax of the logits (or None)."""

    x: torch.Tensor
    argmax: Optional[torch.Tensor]
    log_probs: Optional[torch.Tensor]


def flow_map_step(logits: torch.Tensor, x: torch.Tensor, gamma, *, return_argmax: bool = False,
                  return_log_probs: bool = False, backend: str = "auto", validate: bool = True) -> StepResult:
    """One step towards the predicted endpoint: ``x + gamma (softmax(logits) - x)`` per position.

    Args:
        logits, x: ``(*lead, V)`` of one dtype and device (x: the current state, on or off the
            simplex). gamma: per-position weight (see the module docstring); a flow map's
            ``(t - s) / (1 - s)``, 1 lands on the simplex exactly.
        return_argmax / return_log_probs: also return the argmax class and log softmax (same pass).
        backend: "auto" | "cpu" | "cuda" | "torch" (the reference).
        validate: check finiteness (one host read); callers that built the inputs skip it.
    """
    if x is None:
        raise TypeError("x (the current state, shaped like logits) is required")
    validate_rows("logits", logits, x=x)
    check_choice("backend", backend, _switch.BACKENDS)
    g = per_position("gamma", gamma, logits)
    if validate:
        _check_values([logits, x, g], ["logits", "x", "gamma"])
    lead = logits.shape[:-1]
    impl, device = _switch.resolve(backend, logits.device, "logits")
    z, xr, gr = logits.reshape(-1, logits.shape[-1]), x.reshape(-1, x.shape[-1]), g
    if device != logits.device:
        z, xr, gr = z.to(device), xr.to(device), gr.to(device)
    if impl == "torch":
        x_new, argmax, log_probs = _switch.reference("simplex").simplex_step(z, xr, gr, bool(return_argmax),
                                                                             bool(return_log_probs))
    elif _transforms_active() and not torch.compiler.is_compiling():
        if return_log_probs:
            raise ValueError("flow_map_step: return_log_probs is not supported under torch.func transforms or "
                             "forward-mode AD; take torch.log_softmax of the logits instead")
        x_new = _EagerStep.apply(z, xr, gr)
        with _arrays.kernel_scope():
            argmax = _arrays.plain(z).argmax(-1) if return_argmax else None  # lowest index among ties, as the kernel
        log_probs = None
    else:
        x_new, argmax, log_probs = simplex_step(z, xr, gr, bool(return_argmax), bool(return_log_probs))
    back = logits.device
    return StepResult(x_new.to(back).view(x.shape),
                      argmax.to(back).view(lead) if return_argmax else None,
                      log_probs.to(back).view(logits.shape) if return_log_probs else None)


# --- the distillation losses -----------------------------------------------------------------------
@torch.library.custom_op("flowfast::simplex_distill_loss", mutates_args=())
def simplex_distill_loss(kind: int, logits: torch.Tensor, logits_dot: torch.Tensor, target_logits: torch.Tensor,
                         x: Optional[torch.Tensor], s: torch.Tensor, t: torch.Tensor, ce_weight: float,
                         td_weight: float, min_one_minus_s: float,
                         need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (R, V), times (R,): (loss (R,), d loss/d logits, d loss/d logits_dot), the last two
    empty unless need_grad."""
    with _arrays.kernel_scope():
        z, zdot, zt, xr = _rows(logits), _rows(logits_dot), _rows(target_logits), _rows(x)
        sr, tr = _arrays.plain(s).contiguous(), _arrays.plain(t).contiguous()
        loss = torch.empty(z.shape[0], dtype=sr.dtype, device=z.device)
        grad_z = torch.empty_like(z) if need_grad else z.new_empty(0)
        grad_zdot = torch.empty_like(z) if need_grad else z.new_empty(0)
        problem = (int(kind), _arrays.describe(z), _arrays.describe(zdot), _arrays.describe(zt), _describe(xr),
                   _arrays.describe(sr), _arrays.describe(tr), float(ce_weight), float(td_weight),
                   float(min_one_minus_s))
        _C.simplex_distill_loss(problem, _arrays.describe(loss), _arrays.describe(grad_z) if need_grad else None,
                                _arrays.describe(grad_zdot) if need_grad else None, _arrays.stream_handle(z.device))
    return loss, grad_z, grad_zdot


@simplex_distill_loss.register_fake
def _(kind, logits, logits_dot, target_logits, x, s, t, ce_weight, td_weight, min_one_minus_s, need_grad):
    loss = s.new_empty(logits.shape[0])
    if need_grad:
        return loss, torch.empty_like(logits), torch.empty_like(logits)
    return loss, logits.new_empty(0), logits.new_empty(0)


def _distill_setup(ctx, inputs, output):
    if not inputs[-1]:
        raise RuntimeError("internal: simplex_distill_loss was called with need_grad=False inside autograd")
    _, grad_z, grad_zdot = output
    ctx.save_for_backward(grad_z, grad_zdot)
    ctx.set_materialize_grads(False)  # the gradient outputs get no upstream: no zero-filled (R, V) tensors


def _distill_backward(ctx, grad_loss, _grad_z, _grad_zdot):
    if torch.is_grad_enabled():
        raise RuntimeError("distill_loss has no second derivative (its gradients come from the kernel as "
                           "constants); double backward / create_graph=True through it is not supported")
    grad_z, grad_zdot = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 11
    # The product in the upstream's dtype (float32), cast once: a 16-bit upstream could overflow
    # under loss scaling (fp16 ends at 65504).
    scale = grad_loss[:, None]
    return (None, (grad_z * scale).to(grad_z.dtype), (grad_zdot * scale).to(grad_zdot.dtype), None, None, None, None,
            None, None, None, None)


simplex_distill_loss.register_autograd(_distill_backward, setup_context=_distill_setup)


def distill_loss(kind: str, logits: torch.Tensor, logits_dot: torch.Tensor, target_logits: torch.Tensor, s, t, *,
                 x: Optional[torch.Tensor] = None, ce_weight: float = 4.0, td_weight: float = 2.0,
                 min_one_minus_s: float = 0.05, backend: str = "auto", validate: bool = True) -> torch.Tensor:
    """Per-position self-distillation loss of a categorical flow map, shape ``lead`` (the
    accumulation dtype), differentiable in ``logits`` and ``logits_dot``.

    With p = softmax(logits) = pi(x_s; s, t), pdot = d/dt p (the JVP of the logits in t is
    ``logits_dot``), q = softmax(target_logits) = pi(X_{s,t}; t, t) (a stop-gradient target) and
    gamma = (t - s) / max(1 - s, min_one_minus_s):

    - ``"ecld"``: ``ce_weight CE(q, p) + td_weight gamma^2 |pdot|^2`` (the bound of the paper's
      identity, 4 and 2 by default; CE = -<q, log p>, not KL: same gradient);
    - ``"csd"``: ``|(1 - t) dX/dt - (q - X)|^2`` with X = x + gamma (p - x), dX/dt = (p - x) /
      (1 - s) + gamma pdot (the scaled Lagrangian residual; needs ``x`` = x_s).

    Sums run over V; reduce over positions yourself (the losses in flowfast.categorical average
    over positions). The times and ``x`` are constants (no gradient).
    """
    check_choice("kind", kind, tuple(DISTILL_KINDS))
    validate_rows("logits", logits, logits_dot=logits_dot, target_logits=target_logits, x=x)
    if kind == "csd" and x is None:
        raise ValueError("the CSD loss needs x, the state x_s the jump starts from")
    check_choice("backend", backend, _switch.BACKENDS)
    if not 0 < float(min_one_minus_s) <= 1:
        raise ValueError(f"min_one_minus_s must lie in (0, 1], got {min_one_minus_s}")
    for name, w in (("ce_weight", ce_weight), ("td_weight", td_weight)):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ValueError(f"{name} must be a finite number, got {w!r}")
    sr, tr = per_position("s", s, logits), per_position("t", t, logits)
    if validate:
        _check_values([logits, logits_dot, target_logits, x, sr, tr],
                      ["logits", "logits_dot", "target_logits", "x", "s", "t"], sr, tr)
    if _transforms_active() and impl_is_kernel(backend, logits.device):
        raise ValueError("distill_loss: the fused kernel has no forward-mode derivative and does not run "
                         "under torch.func transforms; call it outside them (take the JVP of the logits "
                         "first, as flowfast.categorical does), or use backend='torch'")
    lead = logits.shape[:-1]
    V = logits.shape[-1]
    x_used = x if kind == "csd" else None
    impl, device = _switch.resolve(backend, logits.device, "logits")
    args = [a if a is None else a.reshape(-1, V) for a in (logits, logits_dot, target_logits, x_used)]
    args += [sr, tr]
    if device != logits.device:
        args = [a if a is None else a.to(device) for a in args]
    z, zdot, zt, xr, sd, td = args
    if impl == "torch":
        loss = _switch.reference("simplex").distill_loss(DISTILL_KINDS[kind], z, zdot, zt, xr, sd, td,
                                                         float(ce_weight), float(td_weight), float(min_one_minus_s))
    else:
        need_grad = torch.is_grad_enabled() and (logits.requires_grad or logits_dot.requires_grad)
        loss = simplex_distill_loss(DISTILL_KINDS[kind], z, zdot, zt.detach(), None if xr is None else xr.detach(),
                                    sd.detach(), td.detach(), float(ce_weight), float(td_weight),
                                    float(min_one_minus_s), bool(need_grad))[0]
    return loss.to(logits.device).view(lead)
