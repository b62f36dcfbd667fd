"""The categorical flow map: a network's logits as an endpoint on the simplex, and the jump.

    pi_theta(x; s, t) = softmax(net(c(s) x, s, t))            per position, over V
    X_{s,t}(x)        = x + gamma (pi_theta(x; s, t) - x),    gamma = (t - s) / max(1 - s, 0.05)

X_{s,s} = x; X_{s,1} = pi_theta(x; s, 1) lies on the simplex (the one-step sample is the predicted
endpoint); the diagonal pi_theta(x; t, t) is the plain (VFM) model with velocity
(pi_theta(x; t, t) - x) / (1 - t). ``c(s)`` is the input scaling (:func:`path.input_scale`), applied
at the state's own time s.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from flowfast._interop import accepts_arrays
from flowfast.categorical.path import input_scale
from flowfast.ops import simplex as simplex_ops

__all__ = ["CategoricalFlowMap", "MIN_ONE_MINUS_S", "flow_map_step"]

#: The fused step ``x + gamma (softmax(logits) - x)`` on its own (``simplex`` kernels), for torch
#: tensors or any array library's arrays (numpy, cupy, JAX, DLPack: results in that library).
flow_map_step = accepts_arrays("logits", "x", "gamma")(simplex_ops.flow_map_step)

#: the clamp of 1 - s in gamma (both official code bases' 0.05 for the graphs; the text code's
#: 1e-8 overflows where a time sampler can return s = 1)
MIN_ONE_MINUS_S = 0.05


class CategoricalFlowMap(nn.Module):
    """A flow map towards the simplex around ``net(x, s, t[, label]) -> logits (B, L, V)``.

    Args:
        net: the network (e.g. :class:`flowfast.models.SimplexTransformer`); a class-conditional
            one takes ``label=`` (None = the null class).
        vocab: V.
        input_scaling: multiply the state by :func:`input_scale` of its time before the net.
        min_one_minus_s: the clamp of 1 - s in gamma.

    ``logits``/``forward`` and ``endpoint`` are plain torch (they run under ``torch.func.jvp``);
    ``jump`` takes the fused ``simplex`` step.
    """

    def __init__(self, net: nn.Module, vocab: int, *, input_scaling: bool = True,
                 min_one_minus_s: float = MIN_ONE_MINUS_S) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
            raise ValueError(f"vocab must be an int >= 2, got {vocab!r}")
        if not 0 < float(min_one_minus_s) <= 1:
            raise ValueError(f"min_one_minus_s must lie in (0, 1], got {min_one_minus_s!r}")
        self.net, self.vocab = net, vocab
        self.input_scaling, self.min_one_minus_s = bool(input_scaling), float(min_one_minus_s)

    @property
    def conditional(self) -> bool:
        return getattr(self.net, "num_classes", None) is not None

    def logits(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
               label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """net logits at state x ``(B, L, V)`` of time s ``(B,)``, for a jump to t ``(B,)``."""
        if self.input_scaling:
            x = x * input_scale(s, self.vocab).to(x.dtype)[:, None, None]
        if label is None:
            return self.net(x, s, t)
        return self.net(x, s, t, label=label)

    forward = logits

    def guided_logits(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, label: torch.Tensor,
                      weight: float) -> torch.Tensor:
        """Classifier-free guidance in logit space: ``z_c + weight (z_c - z_null)``, both from one
        batched call (weight 0: the conditional logits, unguided)."""
        if float(weight) == 0.0:
            return self.logits(x, s, t, label)
        null = torch.full_like(label, self.net.num_classes)
        both = self.logits(torch.cat([x, x]), torch.cat([s, s]), torch.cat([t, t]), torch.cat([label, null]))
        conditional, unconditional = both.chunk(2)
        return conditional + float(weight) * (conditional - unconditional)

    def endpoint(self, x, s, t, label=None) -> torch.Tensor:
        """pi_theta(x; s, t) ``(B, L, V)`` (float32 at least)."""
        z = self.logits(x, s, t, label)
        return torch.softmax(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=-1)

    def gamma(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (t - s) / (1 - s).clamp_min(self.min_one_minus_s)

    def jump(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, logits: torch.Tensor, *,
             gamma: Optional[torch.Tensor] = None, return_argmax: bool = False) -> simplex_ops.StepResult:
        """X_{s,t}(x) from given logits (of this map at (x, s, t), possibly guided): the fused step,
        with ``gamma`` (default :meth:`gamma`, clamped as in training; the samplers pass the exact
        (t - s) / (1 - s) of their grid, so the last step lands on the simplex for any K)."""
        return simplex_ops.flow_map_step(logits, x.to(logits.dtype), self.gamma(s, t) if gamma is None else gamma,
                                         return_argmax=return_argmax, validate=False)
