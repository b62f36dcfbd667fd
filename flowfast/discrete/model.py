"""The denoiser of a discrete flow model: p_theta(x1 | x_t, t) for token states x_t.

Any network with flowfast's dense convention ``net(x (B, L, V), s (B,), t (B,)) -> (B, L, V)``
(e.g. :class:`flowfast.models.SimplexTransformer`) becomes one: the tokens go in one-hot, with
s = t (a single time; a flow-map net's second time input sees t - s = 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flowfast.ops.dfm import check_vocab

__all__ = ["DiscreteFlowModel"]


class DiscreteFlowModel(nn.Module):
    """Logits of p_theta(x1^d | x_t, t) per position.

    Args:
        net: ``net(x, s, t)`` on dense (B, L, V) inputs, returning (B, L, V) logits.
        vocab: V.
    """

    def __init__(self, net: nn.Module, vocab: int):
        super().__init__()
        self.net = net
        self.vocab = check_vocab(vocab)

    def forward(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int64 ids, t (B,) float -> logits (B, L, V) float32."""
        dtype = next((p.dtype for p in self.net.parameters() if p.is_floating_point()), torch.float32)
        x = F.one_hot(tokens.long(), self.vocab).to(dtype)
        t = t.to(dtype)
        logits = self.net(x, t, t)
        if logits.shape != x.shape:
            raise ValueError(f"the net must return logits (B, L, V) = {tuple(x.shape)}, got {tuple(logits.shape)}")
        return logits.float()
