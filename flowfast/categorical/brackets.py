"""Balanced brackets of several kinds (Dyck words): a discrete benchmark with a hard global
constraint, every opening bracket closed by one of its own kind, checked exactly.

Tokens: ``V = 2 * kinds``; bracket kind ``i`` opens with token ``2 i`` and closes with
``2 i + 1``. Sequences have a fixed even length ``L``. ``sample`` draws uniformly over *all*
valid words of length L: the nesting shape uniformly over the ``Catalan(L / 2)`` Dyck paths (the
choice open vs close at each position weighted by exact path counts of the remaining length),
then the kind of each pair uniformly. So true samples are maximally diverse, and every token has
frequency exactly ``1 / V`` in every valid word.

``evaluate(samples, train=None)`` returns a dict of plain floats. How to read it:

- ``valid_fraction``: fraction of properly nested, matched words (true samples: 1.0; uniform
  random tokens of length 32: essentially 0).
- ``unique_fraction``: distinct sequences among all samples; ``unique_valid_fraction``: distinct
  valid sequences divided by ``n`` (true samples of the defaults: 1.0 for both; a generator
  that memorised a few words is valid but repetitive).
- ``novel_fraction`` (only with ``train``): fraction of samples that are valid and not a copy
  of a training word (invalid samples do not count as novel).
- ``mean_max_depth``: mean maximal nesting depth of the valid samples (NaN if none), next to
  the exact value ``true_mean_max_depth`` of the uniform distribution (L = 32: 5.79): shallow
  samples = the generator avoids long-range nesting.
- ``unigram_entropy``: entropy (nats) of the token histogram, ``true_unigram_entropy = log V``.
"""

from __future__ import annotations

import math

import torch

from flowfast._rng import check_generator, generator_device
from flowfast.categorical import _tokens
from flowfast.data import _check_n

__all__ = ["BracketsTask", "dyck_paths"]


def dyck_paths(steps: int, depth: int = 0, ceiling: int | None = None) -> int:
    """Number of ±1 paths of ``steps`` steps from height ``depth`` to 0 that never go below 0
    (nor above ``ceiling`` if given): ``dyck_paths(2 k) = Catalan(k)``. Exact (Python ints)."""
    top = steps + depth if ceiling is None else ceiling
    if depth > top:
        return 0
    ways = [0] * (top + 1)
    ways[0] = 1  # ways[h]: paths of the steps taken so far (backwards from the end) ending at 0
    for _ in range(steps):
        ways = [(ways[h - 1] if h > 0 else 0) + (ways[h + 1] if h < top else 0) for h in range(top + 1)]
    return ways[depth]


class BracketsTask:
    """Balanced words of ``kinds`` bracket kinds, ``length`` tokens each.

    Args:
        length: even sequence length L >= 2.
        kinds: number of bracket kinds (>= 1); the vocabulary has ``2 * kinds`` tokens.
        seed: kept for the generic task interface (the distribution has no random parameters).

    Attributes: ``vocab``, ``length``, ``kinds``, ``open_probability`` float64 ``(L + 1, L + 1)``:
    entry ``[r, d]`` is the probability of opening with ``r`` tokens left at depth ``d``.
    """

    def __init__(self, length: int = 32, kinds: int = 3, seed: int = 0) -> None:
        self.length = _tokens.check_int("length", length, 2)
        if length % 2:
            raise ValueError(f"length must be even (every bracket is closed), got {length}")
        self.kinds = _tokens.check_int("kinds", kinds, 1)
        self.seed = _tokens.check_int("seed", seed, 0)
        self.vocab = 2 * kinds
        # counts[r][d]: completions of r tokens from depth d (Python ints: exact for any length)
        counts = [[0] * (length + 2) for _ in range(length + 1)]
        counts[0][0] = 1
        for r in range(1, length + 1):
            for d in range(length + 1):
                counts[r][d] = counts[r - 1][d + 1] + (counts[r - 1][d - 1] if d > 0 else 0)
        prob = torch.zeros(length + 1, length + 1, dtype=torch.float64)
        for r in range(1, length + 1):
            for d in range(length + 1):
                if counts[r][d]:
                    prob[r, d] = counts[r - 1][d + 1] / counts[r][d]  # big-int division, rounded once
        self.open_probability = prob
        total = counts[length][0]
        # E[max depth] = sum_h P(max depth > h), P(max <= h) from the paths under a ceiling h
        half = length // 2
        self._true_mean_max_depth = sum(1 - dyck_paths(length, 0, h) / total for h in range(half))

    def __repr__(self) -> str:
        return f"BracketsTask(length={self.length}, kinds={self.kinds})"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` uniform valid words, int64 ``(n, L)``, drawn where ``generator`` lives."""
        n, generator = _check_n(n), check_generator(generator)
        device = generator_device(generator)
        prob = self.open_probability.to(device)
        u = torch.rand(self.length, n, generator=generator, device=device, dtype=torch.float64)
        kind = torch.randint(0, self.kinds, (self.length, n), generator=generator, device=device)
        rows = torch.arange(n, device=device)
        stack = torch.zeros(n, self.length // 2 + 1, dtype=torch.int64, device=device)  # open kinds
        depth = torch.zeros(n, dtype=torch.int64, device=device)
        out = []
        for t in range(self.length):
            opens = u[t] < prob[self.length - t, depth]
            # opening: push a fresh kind at the current depth; closing: pop the kind below
            depth = torch.where(opens, depth, depth - 1)
            stack[rows, depth] = torch.where(opens, kind[t], stack[rows, depth])
            out.append(2 * stack[rows, depth] + (~opens).long())
            depth = torch.where(opens, depth + 1, depth)
        return torch.stack(out, dim=1)

    def check(self, tokens, name: str = "tokens") -> torch.Tensor:
        """``tokens`` as an int64 CPU ``(n, L)`` tensor; TypeError / ValueError naming the problem."""
        return _tokens.check_tokens(name, tokens, self.vocab, self.length)

    def _scan(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(valid ``(n,)`` bool, maximal depth ``(n,)``) of a checked batch."""
        n = x.shape[0]
        rows = torch.arange(n)
        stack = torch.zeros(n, self.length + 1, dtype=torch.int64)
        depth = torch.zeros(n, dtype=torch.int64)
        peak = torch.zeros(n, dtype=torch.int64)
        ok = torch.ones(n, dtype=torch.bool)
        for t in range(self.length):
            opens, kind = x[:, t] % 2 == 0, x[:, t] // 2
            slot = depth.clamp(0, self.length)  # rows already invalid may sit outside the stack
            stack[rows, slot] = torch.where(opens, kind, stack[rows, slot])
            depth = torch.where(opens, depth + 1, depth - 1)
            closed = depth.clamp(0, self.length)
            ok &= opens | ((depth >= 0) & (stack[rows, closed] == kind))
            peak = torch.maximum(peak, depth)
        return ok & (depth == 0), peak

    def is_valid(self, tokens) -> torch.Tensor:
        """Bool ``(n,)``: properly nested (depth never below 0, back to 0 at the end) and every
        closing bracket of the kind of the bracket it closes."""
        return self._scan(self.check(tokens))[0]

    def evaluate(self, tokens, train=None) -> dict:
        """The statistics of samples ``(n, L)`` as a dict of plain floats (keys explained in the
        module docstring); ``train`` ``(m, L)``: the generator's training words, adds
        ``novel_fraction``.

        Raises:
            TypeError: tokens / train not an integer tensor or array.
            ValueError: wrong shape, empty, or ids outside ``[0, 2 * kinds)``.
        """
        x = self.check(tokens)
        n = x.shape[0]
        valid, peak = self._scan(x)
        good = x[valid]
        out = {
            "n": n,
            "valid_fraction": float(valid.double().mean()),
            "unique_fraction": _tokens.unique_fraction(x),
            "unique_valid_fraction": torch.unique(good, dim=0).shape[0] / n if len(good) else 0.0,
            "mean_max_depth": float(peak[valid].double().mean()) if len(good) else math.nan,
            "true_mean_max_depth": self._true_mean_max_depth,
            "unigram_entropy": _tokens.unigram_entropy(x, self.vocab),
            "true_unigram_entropy": math.log(self.vocab),
        }
        if train is not None:
            seen = _tokens.in_set(x, self.check(train, "train"))
            out["novel_fraction"] = float((valid & ~seen).double().mean())
        return out
