"""Shared helpers of the discrete benchmark tasks: token-batch validation and the statistics every
task reports (unigram entropy, distinct and novel sequences).

Token batches are integer tensors (or numpy arrays) ``(n, L)`` of ids in ``0 .. V-1``; every
helper returns or works on an int64 CPU copy, so metrics do not depend on the input's device.
"""

from __future__ import annotations

import torch

from flowfast._validate import INT_DTYPES as _INT_DTYPES, to_tensor


def check_int(name: str, value, low: int) -> int:
    """``value`` as an int ``>= low`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_tokens(name: str, tokens, vocab: int, length: int) -> torch.Tensor:
    """``tokens`` ``(n, length)`` of ids in ``[0, vocab)`` as an int64 CPU tensor.

    Raises:
        TypeError: not a tensor / array, or not of an integer dtype (floats and bools refused).
        ValueError: wrong shape, empty, or an id outside ``[0, vocab)``.
    """
    t, _ = to_tensor(name, tokens)
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor of token ids in [0, {vocab}), got dtype "
                        f"{str(t.dtype).replace('torch.', '')}")
    if t.dim() != 2 or t.shape[1] != length or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, {length}) with n >= 1 (n sequences of {length} "
                         f"tokens), got {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= vocab:
        bad = int(((t < 0) | (t >= vocab)).sum())
        raise ValueError(f"{name} must hold token ids in [0, {vocab}) (vocab={vocab}), got ids from {lo} "
                         f"to {hi} ({bad} out of range)")
    return t


def histogram_entropy(counts: torch.Tensor) -> float:
    """Entropy (nats) of the distribution proportional to ``counts`` (zeros contribute 0)."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def unigram_entropy(tokens: torch.Tensor, vocab: int) -> float:
    """Plug-in entropy (nats) of the histogram of all tokens of a checked batch. It is biased low
    by about ``(V - 1) / (2 n L)`` nats for a batch of ``n L`` tokens."""
    return histogram_entropy(torch.bincount(tokens.reshape(-1), minlength=vocab))


def unique_fraction(tokens: torch.Tensor) -> float:
    """Fraction of distinct rows of a checked batch (1 = no sequence repeats)."""
    return torch.unique(tokens, dim=0).shape[0] / tokens.shape[0]


def in_set(tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bool ``(n,)``: which rows of ``tokens (n, L)`` appear among the rows of ``reference (m, L)``."""
    _, inverse = torch.unique(torch.cat([reference, tokens]), dim=0, return_inverse=True)
    return torch.isin(inverse[reference.shape[0]:], inverse[:reference.shape[0]])


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the distribution(s) along the last dim of ``p`` (positive entries)."""
    return -(p * p.log()).sum(-1)


def histogram_distances(tokens: torch.Tensor, real: torch.Tensor, vocab: int) -> dict:
    """Generated tokens ``(n, L)`` against real rows (their first L columns): total variation
    between the unigram histograms and, averaged over positions, between the per-position token
    histograms (0 = same statistics), and the fraction of distinct generated sequences."""
    real = real[:, :tokens.shape[1]].long().to(tokens.device)

    def histograms(rows):  # (L, V) per-position frequencies
        return torch.nn.functional.one_hot(rows.long(), vocab).double().mean(0)

    gen_h, real_h = histograms(tokens), histograms(real)
    return {"unigram_tv": float(0.5 * (gen_h.mean(0) - real_h.mean(0)).abs().sum()),
            "position_tv": float(0.5 * (gen_h - real_h).abs().sum(-1).mean()),
            "unique_fraction": torch.unique(tokens, dim=0).shape[0] / tokens.shape[0]}

