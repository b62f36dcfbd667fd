"""K-step samplers of a uniform-source discrete flow model (kappa_t = t, grid t_k = k / K).

From x at t to s > t, with p = p_theta(x1 | x, t) per token:

- ``"ancestral"``: x_s ~ q(x_s | x_t = x, x1 ~ p), the exact posterior of the mixture path
  (the UDLM / DUO predictor): with r = kappa_t / kappa_s and w(y) = p(y) / q(x_t = x | x1 = y),
  q(y) = [y = x] (r kappa_s w(x) + r (1 - kappa_s) W / V) + (1 - r) kappa_s w(y) / V
         + (1 - r)(1 - kappa_s) W / V^2,   W = sum_y w(y)     (float64);
- ``"euler"``: one CTMC Euler step of the DFM velocity, [y = x] + (s - t) / (1 - t) (p(y) - [y = x]).

Both equal p at s = 1, so the last step draws from (``final="sample"``) or takes the argmax of
(``final="greedy"``) the model's posterior: NFE = K either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from flowfast.ops.dfm import check_vocab

__all__ = ["DiscreteSample", "METHODS", "sample", "step_probabilities"]

METHODS = ("ancestral", "euler")


@dataclass
class DiscreteSample:
    tokens: torch.Tensor  # (B, L) int64
    nfe: int


def step_probabilities(p: torch.Tensor, x: torch.Tensor, t: float, s: float, method: str) -> torch.Tensor:
    """Transition probabilities (B, L, V) float64 from tokens x (B, L) at t to time s (t < s <= 1)."""
    p = p.double()
    vocab = p.shape[-1]
    here = torch.nn.functional.one_hot(x, vocab).double()
    if s >= 1.0:
        return p
    if method == "euler":
        return (here + (s - t) / (1 - t) * (p - here)).clamp_min(0.0)
    r = t / s
    den = (1 - t) / vocab + t * here          # q(x_t = x | x1 = y) for every y
    w = p / den
    W = w.sum(-1, keepdim=True)
    w_x = w.gather(-1, x[..., None])
    stay = r * s * w_x + r * (1 - s) * W / vocab
    return here * stay + (1 - r) * s * w / vocab + (1 - r) * (1 - s) * W / vocab ** 2


def _categorical(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    flat = probs.reshape(-1, probs.shape[-1])
    where = generator.device if generator is not None else flat.device
    draws = torch.multinomial(flat.to(where), 1, generator=generator).to(flat.device)
    return draws.reshape(probs.shape[:-1])


@torch.no_grad()
def sample(model, x0: torch.Tensor, *, steps: int = 32, method: str = "ancestral", final: str = "greedy",
           generator: Optional[torch.Generator] = None) -> DiscreteSample:
    """K = ``steps`` steps from source tokens x0 (B, L) at t = 0 to data at t = 1.

    Args:
        model: :class:`flowfast.discrete.DiscreteFlowModel` (``model(tokens, t) -> logits``).
        x0: (B, L) integer source tokens in [0, V) (uniform, or PairFlow-paired ones).
        method: "ancestral" or "euler" for the steps before the last.
        final: "greedy" (argmax of p at the last grid time) or "sample" (a draw from it).
    """
    vocab = check_vocab(getattr(model, "vocab", None))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if final not in ("greedy", "sample"):
        raise ValueError(f"final must be 'greedy' or 'sample', got {final!r}")
    if not isinstance(x0, torch.Tensor) or x0.is_floating_point() or x0.dim() != 2:
        raise TypeError(f"x0 must be (B, L) integer source tokens, got {getattr(x0, 'dtype', type(x0).__name__)}")
    if not bool(((x0 >= 0) & (x0 < vocab)).all()):
        raise ValueError(f"x0 must hold token ids in [0, {vocab})")
    x = x0.long()
    for k in range(steps):
        t, s = k / steps, (k + 1) / steps
        logits = model(x, torch.full((x.shape[0],), t, device=x.device))
        p = torch.softmax(logits.double(), -1)
        if k == steps - 1 and final == "greedy":
            x = p.argmax(-1)
        else:
            x = _categorical(step_probabilities(p, x, t, s, method), generator)
    return DiscreteSample(tokens=x, nfe=steps)
