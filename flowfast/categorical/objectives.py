"""Training objectives of categorical flow maps (the trainer's objective protocol).

Per batch (an exact split, :func:`flowfast.flowmaps.times.sample_times`): ``diagonal_fraction``
(0.75) of the sequences on the diagonal s = t, the rest off it.

- diagonal (every method; ``"vfm"`` is this alone): cross-entropy of pi_theta(x_t; t, t) against
  the data tokens (variational flow matching), mean over positions;
- ``"csd"``: the scaled Lagrangian residual |(1 - t) d/dt X_{s,t}(x_s) - sg(pi_theta(X; t, t) - X)|^2;
- ``"ecld"``: 4 CE(sg pi_theta(X; t, t), pi_theta(x_s; s, t)) + 2 gamma^2 |d/dt pi_theta(x_s; s, t)|^2.

Both distillation losses come from the fused ``simplex`` kernel (:func:`flowfast.ops.simplex.distill_loss`)
with d/dt of the logits from one ``torch.func.jvp`` in t. Reduction (a choice; the two official
code bases differ, see ../shared/reference §1.3): each loss is summed over V, averaged over the
positions of a sequence, and the per-sequence losses (diagonal and off-diagonal alike) are averaged
over the batch, so both ECLD terms are averaged like the CE, with gamma squared (our derivation).

Class-conditional training: the data rows carry their label as an extra last column
(:func:`with_labels`), replaced by the null class with probability ``label_dropout`` (for
classifier-free guidance). ``guidance_weight`` w > 0 distils the guided diagonal into the map: the
target logits at the landing point are ``z_c + w (z_c - z_null)`` (logit-space guidance) on the
conditioned rows.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F

from flowfast.categorical import sampling
from flowfast.categorical._tokens import histogram_distances
from flowfast.categorical.flow_map import CategoricalFlowMap
from flowfast.categorical.path import check_source, check_token_batch, interpolate
from flowfast.flowmaps.times import OFF_DIAGONAL, check_fraction, sample_times
from flowfast.ops import simplex as simplex_ops
from flowfast.samplers import ODEResult

__all__ = ["METHODS", "CategoricalObjective", "with_labels"]

METHODS = ("vfm", "csd", "ecld")


def with_labels(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token rows ``(N, L)`` with their class labels ``(N,)`` as a last column: ``(N, L + 1)``, the
    data layout of a class-conditional objective."""
    if tokens.dim() != 2 or labels.shape != (tokens.shape[0],):
        raise ValueError(f"need tokens (N, L) and labels (N,), got {tuple(tokens.shape)} and {tuple(labels.shape)}")
    return torch.cat([tokens.long(), labels.long().to(tokens.device)[:, None]], dim=1)


def _flow_map(model) -> CategoricalFlowMap:
    if not isinstance(model, CategoricalFlowMap):
        raise TypeError(f"categorical objectives train a CategoricalFlowMap, got {type(model).__name__}")
    return model


class CategoricalObjective:
    """``CategoricalObjective(vocab, method="ecld")``: the loss, the sampler and the source shape.

    Args:
        vocab: V. method: ``"vfm"``, ``"csd"`` or ``"ecld"`` (module docstring).
        diagonal_fraction: share of diagonal sequences (forced to 1 for ``"vfm"``).
        off_diagonal: law of the off-diagonal (s, t) (``flowfast.flowmaps.times.OFF_DIAGONAL``).
        ce_weight, td_weight: ECLD's weights (4, 2: the bound's constants).
        label_smoothing: of the diagonal cross-entropy.
        num_classes: labels of a class-conditional model (data rows carry them as a last column).
        label_dropout: probability that a row trains the null class (classifier-free guidance).
        guidance_weight: CFG weight distilled into the map (0: none).
        backend: of the ``simplex`` kernels ("auto", "cpu", "cuda", "torch").
    """

    uses_function_transforms = True

    def __init__(self, vocab: int, method: str = "ecld", *, diagonal_fraction: float = 0.75,
                 off_diagonal: str = "triangle", ce_weight: float = 4.0, td_weight: float = 2.0,
                 label_smoothing: float = 0.0, num_classes: Optional[int] = None, label_dropout: float = 0.1,
                 guidance_weight: float = 0.0, backend: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
            raise ValueError(f"vocab must be an int >= 2, got {vocab!r}")
        if off_diagonal not in OFF_DIAGONAL:
            raise ValueError(f"off_diagonal must be one of {OFF_DIAGONAL}, got {off_diagonal!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        if not 0.0 <= float(label_dropout) <= 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout!r}")
        for name, w in (("guidance_weight", guidance_weight), ("ce_weight", ce_weight), ("td_weight", td_weight)):
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise ValueError(f"{name} must be a finite number, got {w!r}")
        if num_classes is None and guidance_weight:
            raise ValueError("guidance_weight needs a class-conditional objective (num_classes=...)")
        self.vocab, self.method = vocab, method
        self.diagonal_fraction = 1.0 if method == "vfm" else check_fraction(diagonal_fraction)
        self.off_diagonal_times = off_diagonal
        self.ce_weight, self.td_weight = float(ce_weight), float(td_weight)
        self.label_smoothing, self.label_dropout = float(label_smoothing), float(label_dropout)
        self.num_classes, self.guidance_weight = num_classes, float(guidance_weight)
        self.backend = backend

    # --- the trainer's protocol ---------------------------------------------------------------------
    @property
    def default_sampler(self) -> tuple[str, int]:
        """A flow map samples in 4 jumps; the diagonal (VFM) model by 100 Euler steps."""
        return ("euler", 100) if self.method == "vfm" else ("map", 4)

    def source_shape(self, data_item_shape: tuple) -> tuple:
        """x0's item shape for data rows of ``data_item_shape``: (L,) -> (L, V) ((L + 1,) with labels)."""
        length = data_item_shape[0] - (1 if self.num_classes is not None else 0)
        return (length, self.vocab)

    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Independent pairs (the source is fresh Gaussian noise)."""
        return x0, x1

    def split_labels(self, x1: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                     dropout: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(tokens (B, L), labels (B,) or None) of a data batch; labels dropped to the null class
        with probability ``label_dropout`` when ``dropout``."""
        if self.num_classes is None:
            return check_token_batch(x1, self.vocab), None
        if not isinstance(x1, torch.Tensor) or x1.dim() != 2 or x1.shape[1] < 2:
            raise ValueError(f"a class-conditional objective takes rows (B, L + 1) with the label last "
                             f"(with_labels), got {tuple(getattr(x1, 'shape', ()))}")
        tokens = check_token_batch(x1[:, :-1], self.vocab, check_range=False)
        labels = x1[:, -1].long()
        in_range = ((tokens >= 0) & (tokens < self.vocab)).all() & ((labels >= 0) & (labels < self.num_classes)).all()
        if not bool(in_range):  # one host read for both; the messages say which failed
            check_token_batch(tokens, self.vocab)
            raise ValueError(f"labels (the last column of x1) must lie in [0, {self.num_classes}), got values "
                             f"from {int(labels.min())} to {int(labels.max())}")
        if dropout and self.label_dropout > 0:
            where = generator.device if generator is not None else labels.device
            drop = torch.rand(labels.shape, generator=generator, device=where).to(labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return tokens, labels

    def loss(self, model, x0: torch.Tensor, x1: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Scalar loss. x0: source ``(B, L, V)``; x1: token ids ``(B, L)`` (``(B, L + 1)`` with labels)."""
        flow_map = _flow_map(model)
        x0, x1 = self.couple(x0, x1, generator)
        tokens, labels = self.split_labels(x1, generator)
        x0 = check_source(x0, tokens, self.vocab)
        acc = torch.float64 if x0.dtype == torch.float64 else torch.float32
        times = sample_times(tokens.shape[0], self.diagonal_fraction, generator=generator, dtype=acc,
                             device=x0.device, off_diagonal=self.off_diagonal_times)
        n = times.n_diagonal
        parts = []
        if n:
            parts.append(self.diagonal(flow_map, x0[:n], tokens[:n], times.t[:n], _rows(labels, 0, n)))
        if n < tokens.shape[0]:
            parts.append(self.off_diagonal(flow_map, x0[n:], tokens[n:], times.s[n:], times.t[n:],
                                           _rows(labels, n, None)))
        return torch.cat(parts).mean()

    def diagonal(self, flow_map: CategoricalFlowMap, x0, tokens, t, labels) -> torch.Tensor:
        """Per-sequence cross-entropy of pi_theta(x_t; t, t) against the tokens ``(B,)``."""
        xt = interpolate(x0, tokens, t)
        logits = flow_map.logits(xt, t, t, labels)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        ce = F.cross_entropy(logits.reshape(-1, self.vocab), tokens.reshape(-1), reduction="none",
                             label_smoothing=self.label_smoothing)
        return ce.view(tokens.shape).mean(1)

    def off_diagonal(self, flow_map: CategoricalFlowMap, x0, tokens, s, t, labels) -> torch.Tensor:
        """Per-sequence CSD / ECLD loss ``(B,)``."""
        xs = interpolate(x0, tokens, s)
        logits, logits_dot = torch.func.jvp(lambda tt: flow_map.logits(xs, s, tt, labels), (t,),
                                            (torch.ones_like(t),))
        with torch.no_grad():
            landing = flow_map.jump(xs, s, t, logits.detach()).x
            target = self.target_logits(flow_map, landing, t, labels)
        per_position = simplex_ops.distill_loss(
            self.method, logits, logits_dot, target.to(logits.dtype), s, t, x=xs.to(logits.dtype),
            ce_weight=self.ce_weight, td_weight=self.td_weight, min_one_minus_s=flow_map.min_one_minus_s,
            backend=self.backend, validate=False)
        return per_position.mean(1)

    def target_logits(self, flow_map: CategoricalFlowMap, x, t, labels) -> torch.Tensor:
        """The diagonal model's logits at the landing point (guided on conditioned rows when
        ``guidance_weight`` > 0; null-class rows stay unguided)."""
        if labels is None or not self.guidance_weight:
            return flow_map.logits(x, t, t, labels)
        # Null-class rows get z_null + w (z_null - z_null) = z_null: unguided without a special case.
        return flow_map.guided_logits(x, t, t, labels, self.guidance_weight)

    def evaluate_samples(self, probs: torch.Tensor, real: torch.Tensor) -> dict:
        """What :meth:`Trainer.evaluate` reports for this objective (instead of W2): the argmax tokens
        of ``probs`` ``(n, L, V)`` against real rows ``(n, L)`` (labels dropped): total variation
        between the unigram histograms and, averaged over positions, between the per-position token
        histograms (0 = same statistics), and the fraction of distinct sequences. Exact metrics
        need the task's own ``evaluate`` (flowfast.categorical.tasks)."""
        return histogram_distances(probs.argmax(-1), real, self.vocab)

    def sample(self, model, x0: torch.Tensor, *, steps: int = 4, method: str = "map", atol: float = 1e-5,
               rtol: float = 1e-5, return_path: bool = False) -> ODEResult:
        """The trainer's sampler: K flow-map jumps (``"map"``) or K Euler steps of the diagonal model
        (``"euler"``) from x0; ``x`` is the final state (on the simplex: the endpoint probabilities,
        argmax for tokens). Unconditional (labels: :func:`sampling.sample`)."""
        result = sampling.sample(_flow_map(model), x0, steps=steps, method=method, return_path=return_path)
        return ODEResult(x=result.probs, nfe=result.nfe, path=result.path)


def _rows(labels: Optional[torch.Tensor], start: int, stop: Optional[int]) -> Optional[torch.Tensor]:
    return None if labels is None else labels[start:stop]
