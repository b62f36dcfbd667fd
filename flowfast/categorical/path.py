"""The probability path of categorical flow maps on R^{L x V}.

Data x1 are token ids ``(B, L)`` (int64, ids in [0, V)); the source x0 ~ N(0, I) is dense
``(B, L, V)``; the path is ``x_t = (1 - t) x0 + t onehot(x1)`` (t = 0: noise, t = 1: data), built by
a scatter-add of t at the data's ids, so the one-hot is never materialised. ``x_t`` is off the
simplex for t < 1 (Gaussian source); only the endpoints the model predicts are on it.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowfast._validate import check_same_device

__all__ = ["check_token_batch", "check_source", "interpolate", "input_scale", "source_noise"]

_TOKEN_DTYPES = (torch.int64, torch.int32)


def check_token_batch(tokens, vocab: int, name: str = "x1", length: Optional[int] = None,
                      check_range: bool = True) -> torch.Tensor:
    """``tokens`` ``(B, L)`` int64/int32 ids in ``[0, vocab)``, as int64 on their device. The range
    check reads one flag back to the host (``check_range=False``: the caller fuses it with its own)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in _TOKEN_DTYPES:
        raise TypeError(f"{name} must hold int64 or int32 token ids in [0, {vocab}), got dtype "
                        f"{str(tokens.dtype).replace('torch.', '')}")
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must be (B, L) token ids with B, L >= 1, got shape {tuple(tokens.shape)}")
    if length is not None and tokens.shape[1] != length:
        raise ValueError(f"{name} has sequences of {tokens.shape[1]} tokens; the model expects L = {length}")
    if check_range and not bool(((tokens >= 0) & (tokens < vocab)).all()):
        lo, hi = int(tokens.min()), int(tokens.max())
        raise ValueError(f"{name} must hold token ids in [0, {vocab}) (V = {vocab}), got ids from {lo} to {hi}")
    return tokens.long()


def check_source(x0, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """x0: a float ``(B, L, V)`` tensor matching ``tokens (B, L)``."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a float tensor (B, L, V), got {getattr(x0, 'dtype', type(x0).__name__)}")
    want = (*tokens.shape, vocab)
    if tuple(x0.shape) != want:
        raise ValueError(f"x0 must be the dense source (B, L, V) = {want} for x1 of shape {tuple(tokens.shape)}, "
                         f"got {tuple(x0.shape)}")
    check_same_device(x0=x0, x1=tokens)
    return x0


def interpolate(x0: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1 - t) x0 + t onehot(tokens)``: x0 ``(B, L, V)``, tokens ``(B, L)`` int64, t ``(B,)``."""
    t = t.to(x0.dtype)
    xt = x0 * (1 - t)[:, None, None]
    return xt.scatter_add(-1, tokens[..., None], t[:, None, None].expand(*tokens.shape, 1))


def input_scale(t: torch.Tensor, vocab: int) -> torch.Tensor:
    """``1 / sqrt(t^2 + (1 - t)^2 V)`` ``(B,)``: one over the expected norm of x_t at time t (the
    noise has norm about sqrt(V), the one-hot 1), so the network sees inputs of norm about 1 at
    every time and vocabulary size."""
    return torch.rsqrt(t * t + (1 - t) ** 2 * vocab)


def source_noise(n: int, length: int, vocab: int, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """x0 ~ N(0, I) ``(n, L, V)``, drawn where ``generator`` lives, then moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(n, length, vocab, generator=generator, dtype=dtype, device=where).to(device)
