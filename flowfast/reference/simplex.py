"""Pure-torch reference of the `simplex` family (same contracts as flowfast.ops.simplex, on the
kernels' (R, V) rows): the flow-map step on the simplex and the ECLD / CSD distillation losses,
written the obvious way (softmax, its JVP, autograd for the gradients). The tests compare the
kernels' values and gradients with these."""

from __future__ import annotations

from typing import Optional

import torch

ECLD, CSD = 0, 1


def simplex_step(logits: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, return_argmax: bool,
                 return_log_probs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + gamma (softmax(logits) - x) per row; argmax (R,) and log softmax (R, V) or empty."""
    acc = gamma.dtype
    log_p = torch.log_softmax(logits.to(acc), dim=-1)
    x_new = x.to(acc) + gamma[:, None] * (log_p.exp() - x.to(acc))
    argmax = logits.argmax(-1) if return_argmax else logits.new_empty(0, dtype=torch.int64)
    log_probs = log_p.to(logits.dtype) if return_log_probs else logits.new_empty(0)
    return x_new.to(x.dtype), argmax, log_probs


def gamma_of(s: torch.Tensor, t: torch.Tensor, min_one_minus_s: float) -> torch.Tensor:
    """(t - s) / max(1 - s, min_one_minus_s)."""
    return (t - s) / (1 - s).clamp_min(min_one_minus_s)


def softmax_jvp(logits: torch.Tensor, logits_dot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, d/dt p) = (softmax(z), p * (zdot - <p, zdot>)) per row."""
    p = torch.softmax(logits, dim=-1)
    return p, p * (logits_dot - (p * logits_dot).sum(-1, keepdim=True))


def distill_loss(kind: int, logits: torch.Tensor, logits_dot: torch.Tensor, target_logits: torch.Tensor,
                 x: Optional[torch.Tensor], s: torch.Tensor, t: torch.Tensor, ce_weight: float, td_weight: float,
                 min_one_minus_s: float) -> torch.Tensor:
    """Per-row loss (R,) in s's dtype, differentiable in logits and logits_dot (the target and x
    are constants).

    ECLD: ce_weight CE(softmax(target), softmax(z)) + td_weight gamma^2 |d/dt softmax(z)|^2
    CSD:  |(1 - t) dX/dt - (softmax(target) - X)|^2, X = x + gamma (p - x),
          dX/dt = (p - x) / max(1 - s, min) + gamma d/dt p
    """
    acc = s.dtype
    z, zdot = logits.to(acc), logits_dot.to(acc)
    q = torch.softmax(target_logits.detach().to(acc), dim=-1)
    p, pdot = softmax_jvp(z, zdot)
    gamma = gamma_of(s, t, min_one_minus_s)[:, None]
    if kind == ECLD:
        ce = -(q * torch.log_softmax(z, dim=-1)).sum(-1)
        return ce_weight * ce + td_weight * gamma[:, 0] ** 2 * (pdot**2).sum(-1)
    if x is None:
        raise ValueError("the CSD loss needs the state x")
    xs = x.detach().to(acc)
    landing = xs + gamma * (p - xs)
    velocity = (p - xs) / (1 - s).clamp_min(min_one_minus_s)[:, None] + gamma * pdot
    residual = (1 - t)[:, None] * velocity - (q - landing.detach())
    return (residual**2).sum(-1)
