"""Training objective of a uniform-source discrete flow model (the trainer protocol of
flowfast.train: ``loss``, ``couple``, ``source_shape``, ``sample``).

Mixture path with kappa_t = t (t = 0 source, t = 1 data), per token d:

    x_t^d = x1^d with probability t, else x0^d,

where x0 is a uniform token (independent coupling: the argmax over V of the trainer's N(0, I)
noise of shape (L, V), which is exactly uniform) or the **stored paired source** of the row
(PairFlow: data rows ``with_sources(x1, x0)`` of shape (N, 2L)). Losses, per token, mean over
tokens and rows, with p = p_theta(. | x_t, t):

- ``"elbo"``: the continuous-time ELBO of the CTMC (generalized KL of the mixture path; the
  UDLM/DUO bound for uniform noise up to a constant): kappa'/(1 - kappa) [delta - p(x_t^d) -
  (1 - delta) log p(x1^d)], delta = [x_t^d == x1^d]. Zero iff p puts all mass on x1^d.
- ``"ce"``: -log p(x1^d), unweighted.

t ~ U[0, t_max] stratified over the batch (one uniform offset per batch: low variance, as DUO's
antithetic sampling).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from flowfast.ops.dfm import check_vocab

__all__ = ["DFMObjective", "with_sources"]

LOSSES = ("elbo", "ce")


def with_sources(tokens: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Data rows (N, 2L): the tokens x1 (N, L) followed by their paired sources x0 (N, L)."""
    if not isinstance(tokens, torch.Tensor) or not isinstance(sources, torch.Tensor):
        raise TypeError("with_sources takes two (N, L) integer tensors")
    if tokens.shape != sources.shape or tokens.dim() != 2:
        raise ValueError(f"tokens and sources must both be (N, L), got {tuple(tokens.shape)} and {tuple(sources.shape)}")
    return torch.cat([tokens.long(), sources.long()], 1)


class DFMObjective:
    """Uniform-source DFM training.

    Args:
        vocab: V.
        loss: "elbo" or "ce".
        paired: data rows carry their paired source (:func:`with_sources`, PairFlow) instead of
            drawing a fresh uniform one.
        t_max: largest training time (the ELBO weight 1 / (1 - t) is capped at 1 / (1 - t_max)).
    """

    def __init__(self, vocab: int, loss: str = "elbo", *, paired: bool = False, t_max: float = 1 - 1e-3):
        self.vocab = check_vocab(vocab)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not isinstance(paired, bool):
            raise TypeError(f"paired must be a bool, got {type(paired).__name__}")
        if not isinstance(t_max, float) or not 0 < t_max < 1:
            raise ValueError(f"t_max must be a float in (0, 1), got {t_max!r}")
        self.loss_kind, self.paired, self.t_max = loss, paired, t_max

    @property
    def default_sampler(self) -> tuple[str, int]:
        """32 ancestral steps, the last one greedy."""
        return ("ancestral", 32)

    def source_shape(self, data_item_shape: tuple) -> tuple:
        """(L,) data rows ((2L,) paired) -> (L, V) Gaussian noise whose argmax is the uniform source."""
        length = data_item_shape[0] // 2 if self.paired else data_item_shape[0]
        return (length, self.vocab)

    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        return x0, x1

    def split(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(source tokens, data tokens), both (B, L) int64, range-checked with one host read."""
        if not isinstance(x1, torch.Tensor) or x1.dim() != 2 or x1.is_floating_point():
            raise TypeError(f"x1 must be (B, L) integer token ids (paired: (B, 2L)), got "
                            f"{getattr(x1, 'dtype', type(x1).__name__)} {tuple(getattr(x1, 'shape', ()))}")
        if self.paired:
            if x1.shape[1] % 2:
                raise ValueError(f"paired rows must be (B, 2L) = data then source (with_sources), got {tuple(x1.shape)}")
            length = x1.shape[1] // 2
            tokens, source = x1[:, :length].long(), x1[:, length:].long()
        else:
            tokens = x1.long()
            source = source_tokens(x0, tokens.shape, self.vocab)
        if not bool(((tokens >= 0) & (tokens < self.vocab) & (source >= 0) & (source < self.vocab)).all()):
            raise ValueError(f"x1 must hold token ids in [0, {self.vocab}), got ids from {int(x1.min())} to {int(x1.max())}")
        return source, tokens

    def loss(self, model, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Scalar loss. x0: the trainer's (B, L, V) noise (or (B, L) source tokens); x1: (B, L) data
        tokens ((B, 2L) paired)."""
        source, tokens = self.split(x0, x1)
        B = tokens.shape[0]
        where = generator.device if generator is not None else tokens.device
        offset = torch.rand((), generator=generator, device=where).to(tokens.device)
        t = ((torch.arange(B, device=tokens.device) + offset) / B) * self.t_max
        keep = torch.rand(tokens.shape, generator=generator, device=where).to(tokens.device) < t[:, None]
        xt = torch.where(keep, tokens, source)
        log_p = F.log_softmax(model(xt, t), -1)
        log_p_x1 = log_p.gather(-1, tokens[..., None]).squeeze(-1)
        if self.loss_kind == "ce":
            return -log_p_x1.mean()
        same = (xt == tokens).to(log_p.dtype)
        p_xt = log_p.gather(-1, xt[..., None]).squeeze(-1).exp()
        weight = (1.0 / (1.0 - t))[:, None]
        return (weight * (same - p_xt - (1 - same) * log_p_x1)).mean()

    def evaluate_samples(self, tokens: torch.Tensor, real: torch.Tensor) -> dict:
        """What :meth:`Trainer.evaluate` reports instead of W2: histogram distances of the generated
        tokens (n, L) to real rows (paired rows: their data half), and the distinct fraction."""
        from flowfast.categorical._tokens import histogram_distances

        return histogram_distances(tokens, real, self.vocab)

    def sample(self, model, x0: torch.Tensor, *, steps: int = 32, method: str = "ancestral", atol=None, rtol=None,
               return_path: bool = False):
        """:class:`flowfast.samplers.ODEResult` with ``x`` the (B, L) int64 tokens (K steps of
        :func:`flowfast.discrete.sample`, greedy last step) from the trainer's noise or tokens x0."""
        from flowfast.discrete.sampling import sample
        from flowfast.samplers import ODEResult

        result = sample(model, source_tokens(x0, x0.shape[:2], self.vocab), steps=steps, method=method)
        return ODEResult(x=result.tokens, nfe=result.nfe)


def source_tokens(x0: torch.Tensor, shape, vocab: int) -> torch.Tensor:
    """Uniform source tokens from x0: integer (B, L) tokens as they are, or the argmax over V of
    (B, L, V) i.i.d. noise (uniform over V)."""
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a tensor, got {type(x0).__name__}")
    if x0.is_floating_point():
        if tuple(x0.shape) != (*shape, vocab):
            raise ValueError(f"x0 noise must be (B, L, V) = {(*shape, vocab)}, got {tuple(x0.shape)}")
        return x0.argmax(-1)
    if tuple(x0.shape) != tuple(shape):
        raise ValueError(f"x0 tokens must be (B, L) = {tuple(shape)}, got {tuple(x0.shape)}")
    return x0.long()
