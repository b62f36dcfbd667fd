"""Pure-torch reference of the `dfm` kernel family (csrc/include/flowfast/dfm.h): token packing
and PairFlow's inversion step, written the straightforward way (the B x N match counts and
weights materialised, float64), with the kernels' Philox draws number for number.

Conventions: t runs from 0 (source) to 1 (data), kappa_t = t, gamma_t = 1 + V t / (1 - t);
one backward step goes from t to t - h.
"""

from __future__ import annotations

import math

import torch

from flowfast.reference._philox import MASK32, philox4x32, uniform53

__all__ = ["keep_probability", "pack_layout", "pack_tokens", "inversion_step", "posterior", "resample"]

# Elements per chunk of the materialised (B, n, D) comparisons: bounds the reference's memory.
_CHUNK_ELEMENTS = 1 << 24


def pack_layout(vocab: int, length: int) -> tuple[int, int, int]:
    """(bits per token, tokens per 64-bit word, words per sequence), as ff::pack_layout."""
    bits = max(1, (vocab - 1).bit_length())
    per_word = 64 // bits
    return bits, per_word, -(-length // per_word)


def pack_tokens(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """tokens (N, D) ids in [0, vocab) -> (N, W) int64 words (two's complement of the uint64)."""
    N, D = tokens.shape
    bits, per_word, words = pack_layout(vocab, D)
    padded = torch.zeros((N, words * per_word), dtype=torch.int64, device=tokens.device)
    padded[:, :D] = tokens.to(torch.int64)
    fields = padded.view(N, words, per_word)
    shifts = torch.arange(per_word, device=tokens.device, dtype=torch.int64) * bits
    # Fields are disjoint bit ranges, so the sum is their OR; a field at bit 63 wraps to the sign.
    return (fields << shifts).sum(-1)


def unpack_tokens(packed: torch.Tensor, vocab: int, length: int) -> torch.Tensor:
    """(N, W) packed words -> (N, length) int64 tokens."""
    bits, per_word, words = pack_layout(vocab, length)
    shifts = torch.arange(per_word, device=packed.device, dtype=torch.int64) * bits
    fields = (packed[:, :, None] >> shifts) & ((1 << bits) - 1)
    return fields.reshape(packed.shape[0], words * per_word)[:, :length]


def _match_counts(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    B, D = x.shape
    rows = max(1, _CHUNK_ELEMENTS // max(1, B * D))
    return torch.cat([(x[:, None, :] == keys[None, n:n + rows]).sum(-1) for n in range(0, keys.shape[0], rows)], 1)


def posterior(keys: torch.Tensor, x: torch.Tensor, vocab: int, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, D) float64 = P(x1^d = x^d | x_t = x) under the empirical distribution of the key
    tokens (N, D), and the largest match count per query (B,)."""
    counts = _match_counts(x, keys)
    best = counts.amax(1)
    if t >= 1.0:
        weights = (counts == best[:, None]).double()
    else:
        weights = ((counts - best[:, None]).double() * math.log1p(vocab * t / (1.0 - t))).exp()
    weights = weights / weights.sum(1, keepdim=True)
    v = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, x.numel()))
    for n in range(0, keys.shape[0], rows):
        same = (keys[None, n:n + rows] == x[:, None, :]).double()
        v += torch.einsum("bn,bnd->bd", weights[:, n:n + rows], same)
    return v, best


def keep_probability(v: torch.Tensor, t: float, h: float, vocab: int, tau: float = 1.0) -> torch.Tensor:
    """P(token stays) over a backward step of size h from t (ff::keep_probability)."""
    scale = 1.0 - t + t * vocab
    if tau == 1.0:
        return 1.0 - (vocab - 1) * h * v / scale
    rho = (h * v / (scale - (vocab - 1) * h * v)) ** (1.0 / tau)
    return 1.0 / (1.0 + (vocab - 1) * rho)


def resample(x: torch.Tensor, keep: torch.Tensor, vocab: int, seed: int, offset: int, row_offset: int = 0):
    """The keep/jump draws of ff::resample_token for elements (row_offset + b) * D + d."""
    B, D = x.shape
    index = (torch.arange(B, device=x.device, dtype=torch.int64)[:, None] + row_offset) * D + torch.arange(
        D, device=x.device, dtype=torch.int64)
    c0, c1 = index & MASK32, (index >> 32) & MASK32
    c2 = torch.full_like(index, offset & MASK32)
    c3 = torch.full_like(index, ((offset >> 32) & MASK32) ^ 0x85EBCA6B)
    r0, r1, r2, r3 = philox4x32(c0, c1, c2, c3, seed & MASK32, (seed >> 32) & MASK32)
    stays = uniform53(r0, r1) < keep
    shift = (uniform53(r2, r3) * (vocab - 1)).to(torch.int64).clamp_max(vocab - 2)
    return torch.where(stays, x.to(torch.int64), (x.to(torch.int64) + 1 + shift) % vocab)


def inversion_step(keys: torch.Tensor, x: torch.Tensor, vocab: int, t: float, h: float, *, tau: float = 1.0,
                   seed: int = 0, offset: int = 0, row_offset: int = 0):
    """One backward step t -> t - h of the queries x (B, D) against the packed training set
    keys (N, W). Returns (x_new (B, D) int32, posterior v (B, D) float32, best (B,) int32)."""
    key_tokens = unpack_tokens(keys, vocab, x.shape[1])
    x = x.to(torch.int64)
    v, best = posterior(key_tokens, x, vocab, t)
    x_new = resample(x, keep_probability(v, t, h, vocab, tau), vocab, seed, offset, row_offset)
    return x_new.to(torch.int32), v.float(), best.to(torch.int32)
