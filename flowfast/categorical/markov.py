"""A random first-order Markov chain over ``V`` tokens: a discrete benchmark whose likelihood,
entropy rate and unigram statistics are all known exactly.

``MarkovChainTask(vocab, length, seed)`` draws an initial distribution and a transition matrix
from Dirichlet(``concentration``) (small concentration = peaked rows = low entropy, structure a
model can learn), mixed with ``smoothing`` of the uniform distribution so every probability is
positive and the NLL of any sequence is finite.

``evaluate(samples)`` returns a dict of plain floats. How to read it:

- ``nll_per_token``: mean negative log-likelihood (nats per token) of the samples under the true
  chain, ``true_nll_per_token`` (= ``entropy_rate()``) the same expectation for true samples.
  ``nll_ratio = nll_per_token / true_nll_per_token``: about 1 for a faithful generator (true
  samples: 1 within a few ``1/sqrt(n)``); above 1 = samples the chain finds unlikely (uniform
  random tokens: 2.55 for the defaults); *below* 1 = the generator
  concentrates on the chain's most likely sequences (a mode-seeking or collapsed model), so read
  it with the two diversity numbers below.
- ``unigram_entropy``: entropy (nats) of the histogram of all sampled tokens,
  ``true_unigram_entropy`` the exact value of the chain (of its marginal averaged over
  positions). Far below = mode collapse onto a few tokens; the plug-in estimate is biased low by
  about ``(V - 1) / (2 n L)``.
- ``unique_fraction``: fraction of distinct sequences (true samples of the defaults: 1.0; a
  collapsed generator repeats itself). ``novel_fraction`` (only with ``train``): fraction of
  samples that are not copies of a training sequence.
"""

from __future__ import annotations

import math

import torch

from flowfast._rng import check_generator, generator_device
from flowfast.categorical import _tokens
from flowfast.data import _check_n

__all__ = ["MarkovChainTask"]


class MarkovChainTask:
    """A random Markov chain over ``vocab`` tokens, sequences of ``length`` tokens.

    Args:
        vocab: number of tokens V (>= 2).
        length: sequence length L (>= 1).
        seed: seed of the torch generator that draws the chain (the global RNG is left alone).
        concentration: Dirichlet concentration of the initial distribution and of each row of
            the transition matrix (> 0; 0.3 gives a few likely successors per token).
        smoothing: weight of the uniform distribution mixed into every row (in (0, 1)), so every
            probability is at least ``smoothing / V``.

    Attributes: ``vocab``, ``length``, ``init`` float64 ``(V,)`` (distribution of the first
    token), ``transition`` float64 ``(V, V)`` (row a: distribution of the token after a).
    """

    def __init__(self, vocab: int = 16, length: int = 32, seed: int = 0, concentration: float = 0.3,
                 smoothing: float = 1e-3) -> None:
        self.vocab = _tokens.check_int("vocab", vocab, 2)
        self.length = _tokens.check_int("length", length, 1)
        self.seed = _tokens.check_int("seed", seed, 0)
        for name, value in (("concentration", concentration), ("smoothing", smoothing)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
        if concentration <= 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        if not 0 < smoothing < 1:
            raise ValueError(f"smoothing must be in (0, 1), got {smoothing}")
        self.concentration, self.smoothing = float(concentration), float(smoothing)
        # torch's Dirichlet takes no generator: seed a forked global RNG, restored on exit
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            alpha = torch.full((self.vocab + 1, self.vocab), self.concentration, dtype=torch.float64)
            rows = torch.distributions.Dirichlet(alpha).sample()
        rows = (1 - self.smoothing) * rows + self.smoothing / self.vocab
        rows = rows / rows.sum(dim=1, keepdim=True)
        self.init, self.transition = rows[0].clone(), rows[1:].clone()
        self._log_init, self._log_transition = self.init.log(), self.transition.log()

    def __repr__(self) -> str:
        return (f"MarkovChainTask(vocab={self.vocab}, length={self.length}, seed={self.seed}, "
                f"concentration={self.concentration})")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` true sequences, int64 ``(n, L)``, drawn where ``generator`` lives (CPU if None)."""
        n, generator = _check_n(n), check_generator(generator)
        device = generator_device(generator)
        cum_init = self.init.cumsum(0).to(device)
        cum_rows = self.transition.cumsum(1).to(device)
        u = torch.rand(self.length, n, 1, generator=generator, device=device, dtype=torch.float64)
        # inverse CDF: the first token whose cumulative probability exceeds u (clamped: rounding)
        cols = [torch.searchsorted(cum_init, u[0, :, 0], right=True).clamp(max=self.vocab - 1)]
        for t in range(1, self.length):
            cdf = cum_rows[cols[-1]]
            cols.append(torch.searchsorted(cdf, u[t], right=True)[:, 0].clamp(max=self.vocab - 1))
        return torch.stack(cols, dim=1)

    def check(self, tokens, name: str = "tokens") -> torch.Tensor:
        """``tokens`` as an int64 CPU ``(n, L)`` tensor; TypeError / ValueError naming the problem."""
        return _tokens.check_tokens(name, tokens, self.vocab, self.length)

    def nll(self, tokens) -> torch.Tensor:
        """Exact negative log-likelihood (nats) of each sequence, float64 ``(n,)`` on the CPU."""
        x = self.check(tokens)
        return -(self._log_init[x[:, 0]] + self._log_transition[x[:, :-1], x[:, 1:]].sum(dim=1))

    def nll_per_token(self, tokens) -> torch.Tensor:
        """``nll(tokens) / L``, float64 ``(n,)``."""
        return self.nll(tokens) / self.length

    def marginals(self) -> torch.Tensor:
        """Exact distribution of the token at each position, float64 ``(L, V)``."""
        m = [self.init]
        for _ in range(1, self.length):
            m.append(m[-1] @ self.transition)
        return torch.stack(m)

    def entropy_rate(self) -> float:
        """Exact expected NLL per token of a true sequence: ``(H(init) + sum_t E_{marginal t-1}
        H(transition row)) / L``, by propagating the marginals (no sampling)."""
        row_entropy = _tokens.entropy(self.transition)
        m = self.marginals()
        return float((_tokens.entropy(self.init) + (m[:-1] @ row_entropy).sum()) / self.length)

    def true_unigram_entropy(self) -> float:
        """Exact entropy (nats) of the token distribution averaged over positions."""
        return float(_tokens.entropy(self.marginals().mean(dim=0)))

    def unigram_entropy(self, tokens) -> float:
        """Entropy (nats) of the histogram of all tokens of the batch (catches mode collapse)."""
        return _tokens.unigram_entropy(self.check(tokens), self.vocab)

    def evaluate(self, tokens, train=None) -> dict:
        """The statistics of samples ``(n, L)`` as a dict of plain floats (keys explained in the
        module docstring); ``train`` ``(m, L)``: the generator's training sequences, adds
        ``novel_fraction``.

        Raises:
            TypeError: tokens / train not an integer tensor or array.
            ValueError: wrong shape, empty, or ids outside ``[0, vocab)``.
        """
        x = self.check(tokens)
        nll = float(self.nll(x).mean()) / self.length
        true = self.entropy_rate()
        out = {
            "n": x.shape[0],
            "nll_per_token": nll,
            "true_nll_per_token": true,
            "nll_ratio": nll / true,
            "unigram_entropy": _tokens.unigram_entropy(x, self.vocab),
            "true_unigram_entropy": self.true_unigram_entropy(),
            "max_unigram_entropy": math.log(self.vocab),
            "unique_fraction": _tokens.unique_fraction(x),
        }
        if train is not None:
            out["novel_fraction"] = float((~_tokens.in_set(x, self.check(train, "train"))).double().mean())
        return out
