"""Pure-torch Philox4x32-10 and the draws built on it, number for number those of
csrc/include/flowfast/random.h (the kernels' counter-based RNG), vectorized over int64 tensors
holding uint32 words: the tests' oracle for every stochastic kernel."""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a * b < 2^64 may overflow int64; split b into 16-bit halves to stay exact.
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_part = a * b_lo                      # < 2^48
    hi_part = a * b_hi                      # < 2^48
    low = (lo_part + ((hi_part & 0xFFFF) << 16)) & MASK32
    carry = (lo_part + ((hi_part & 0xFFFF) << 16)) >> 32
    high = ((hi_part >> 16) + carry) & MASK32
    return high, low


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of int64 tensors holding uint32 counters; returns four such tensors."""
    x0, x1, x2, x3 = c0, c1, c2, c3
    for _ in range(10):
        hi0, lo0 = _mulhilo(0xD2511F53, x0)
        hi1, lo1 = _mulhilo(0xCD9E8D57, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return x0, x1, x2, x3


def gumbel(seed: int, offset: int, index: torch.Tensor) -> torch.Tensor:
    """Same numbers as ff::gumbel(seed, offset, index) in csrc/include/flowfast/random.h."""
    index = index.to(torch.int64)
    c0, c1 = index & MASK32, (index >> 32) & MASK32
    c2 = torch.full_like(index, offset & MASK32)
    c3 = torch.full_like(index, (offset >> 32) & MASK32)
    r0, r1, _, _ = philox4x32(c0, c1, c2, c3, seed & MASK32, (seed >> 32) & MASK32)
    return -torch.log(-torch.log(uniform53(r0, r1)))


def uniform53(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    bits = ((hi << 21) ^ (lo >> 11)) & ((1 << 53) - 1)
    return (bits.to(torch.float64) + 0.5) * (1.0 / 9007199254740992.0)


def uniform24(word: torch.Tensor) -> torch.Tensor:
    return ((word >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def standard_normal(seed: int, offset: int, count: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """ff::standard_normal for elements 0..count-1: element k takes the cos (k even) or sin (k odd)
    half of Box-Muller pair k // 2. dtype float64 draws in double, any other in float32 (as the
    kernels do). Returns (count,) float64 or float32."""
    index = torch.arange(count, dtype=torch.int64, device=device)
    pair = index >> 1
    c0, c1 = pair & MASK32, (pair >> 32) & MASK32
    c2 = torch.full_like(pair, offset & MASK32)
    c3 = torch.full_like(pair, ((offset >> 32) & MASK32) ^ 0x9E3779B9)
    r0, r1, r2, r3 = philox4x32(c0, c1, c2, c3, seed & MASK32, (seed >> 32) & MASK32)
    if dtype == torch.float64:
        u1, u2 = uniform53(r0, r1), uniform53(r2, r3)
    else:
        u1, u2 = uniform24(r0), uniform24(r2)
    radius = torch.sqrt(-2 * torch.log(u1))
    angle = 2 * math.pi * u2
    z = torch.where((index & 1).bool(), radius * torch.sin(angle), radius * torch.cos(angle))
    return z


__all__ = ["MASK32", "gumbel", "philox4x32", "standard_normal", "uniform24", "uniform53"]
