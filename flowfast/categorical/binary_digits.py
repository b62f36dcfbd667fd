"""Binarized 8x8 digits as a discrete benchmark: 64 tokens in {0, 1} per image, scored by a small
classifier and by Hamming distances to the training set.

``binarized_digits()`` is ``flowfast.data.digits()`` thresholded (pixel value ``v / 16 > 0.5``,
i.e. ``v > 8``, becomes 1), ``(1797, 64)`` int64 in row-major pixel order; 29% of the pixels
are 1, and 45 of the 1797 binarized images repeat an earlier one.

``BinaryDigitScorer().score(samples)`` returns a dict of plain floats; as in
``flowfast.digit_quality`` the ``real_*`` entries are the same statistics of real binarized
digits (numbers in brackets: this module's values with the default seed):

- ``confidence``: mean max-softmax probability of the classifier. Real held-out digits
  ``real_confidence`` [0.91] (binarizing loses detail: the continuous digits reach 0.95);
  uniform random bits 0.15, digits with 10% of their pixels flipped 0.73.
  ``confident_fraction``: fraction above 0.9 (real ``real_confident_fraction`` [0.76]; noise 0).
- ``class_entropy``: entropy (nats) of the histogram of predicted classes (``class_histogram``);
  ``max_class_entropy = log 10 = 2.303`` when the classes are balanced, as in real digits; a
  drop = mode collapse. Needs a few hundred samples.
- ``nn_hamming``: mean Hamming distance (pixels that differ, of 64) from each sample to its
  nearest training image; ``real_nn_hamming`` [2.98 for the full set, 3.17 for the task's 80%
  split]: the same for real digits, each held out of the training set in turn (leave-one-out).
  ``nn_ratio = nn_hamming / real_nn_hamming``: about 1 for novel realistic samples, near 0 =
  memorisation, far above 1 = off the data (uniform random bits: about 7.7).
  ``copy_fraction``: fraction of samples equal to a training image (real leave-one-out
  ``real_copy_fraction`` [0.04 for the full set]: duplicates exist in the data).
- ``ones_fraction``: fraction of 1 pixels, next to the training set's ``real_ones_fraction``.
- ``unique_fraction``: fraction of distinct samples.

``class_rate(samples, label)``: fraction classified as ``label``, e.g. to test guidance.

The classifier is ``flowfast.digit_quality``'s MLP ``64 -> 256 -> 256 -> 10`` (SiLU), trained a
few seconds on one thread on the same fixed 80% split (``digit_split(seed)``; the other 360
digits give ``heldout_accuracy`` [0.96]), on ±1 inputs with ±1 pixel shifts, 3% random pixel
flips, pixel-wise mixup (each pixel from one of two digits; target the blend of their labels)
and outlier exposure (random bits of random density and thresholded smooth blobs trained
towards the uniform prediction, so noise gets low confidence). Cached in memory per seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowfast import data
from flowfast._rng import check_generator, generator_device
from flowfast.categorical import _tokens
from flowfast.digit_quality import _HELDOUT, _classifier, _nearest, _shift, mix_pairs, train_classifier

__all__ = ["BinaryDigitScorer", "BinaryDigitsTask", "binarized_digit_labels", "binarized_digits",
           "digit_split"]

_CACHE: dict[int, dict] = {}  # seed -> trained classifier state and its held-out statistics
_FLIP = 0.03


def binarized_digits(threshold: float = 0.5, device=None) -> torch.Tensor:
    """``flowfast.data.digits()`` as bits: int64 ``(1797, 64)``, 1 where the pixel on the [0, 1]
    scale (``v / 16``) exceeds ``threshold``; same order as ``binarized_digit_labels()``.

    Raises:
        ImportError: scikit-learn (which ships the digits) is missing.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    pixels = (data.digits(dtype=torch.float64).reshape(-1, 64) + 1) / 2
    return (pixels > threshold).long().to(device)


def binarized_digit_labels(device=None) -> torch.Tensor:
    """The classes 0..9 of ``binarized_digits()``, int64 ``(1797,)`` (``data.digits_labels()``)."""
    return data.digits_labels(device)


def digit_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, heldout_index)`` into the 1797 digits: the classifier's fixed 80% / 20%
    split for ``seed``, the same as ``DigitScorer(seed=seed).heldout_index``."""
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(_tokens.check_int("seed", seed, 0)))
    return perm[_HELDOUT:], perm[:_HELDOUT]


def _as_pm1(bits: torch.Tensor) -> torch.Tensor:
    """Bits ``(n, 64)`` as ``(n, 1, 8, 8)`` float32 images in {-1, 1} (the classifier's input)."""
    return (bits.float() * 2 - 1).reshape(-1, 1, 8, 8)


def _outliers(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 1, 8, 8)`` binary non-digits in {-1, 1}: random bits of density U(0.05, 0.6), and
    smooth random blobs thresholded at a random level."""
    k = n // 2
    density = 0.05 + 0.55 * torch.rand(k, 1, 1, 1, generator=g)
    bits = torch.rand(k, 1, 8, 8, generator=g) < density
    blobs = F.interpolate(torch.rand(n - k, 1, 4, 4, generator=g), size=8, mode="bilinear", align_corners=False)
    blobs = blobs > 0.3 + 0.4 * torch.rand(n - k, 1, 1, 1, generator=g)
    return torch.cat([bits, blobs]).float() * 2 - 1


def _augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    xb = torch.where(torch.rand(xb.shape[0], 1, 1, 1, generator=g) < 0.5, xb, _shift(xb, g))
    return torch.where(torch.rand(xb.shape, generator=g) < _FLIP, -xb, xb)


def _mix(x_tr, y_tr, n, g):
    # pixel-wise mixup: each pixel from digit j with probability lam, else from digit k
    j, k, lam, target = mix_pairs(x_tr, y_tr, n, g)
    return torch.where(torch.rand(n, 1, 8, 8, generator=g) < lam[:, None, None, None], x_tr[j], x_tr[k]), target


def _train(seed: int) -> dict:
    # the permutation digit_split draws: the same split
    return train_classifier(_as_pm1(binarized_digits()), binarized_digit_labels(), seed, augment=_augment, mix=_mix,
                            outliers=_outliers)


def _hamming_to_nearest(x: torch.Tensor, ref: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Hamming distance ``(n,)`` from each bit row of x to its nearest row of ref (squared L2
    of bits, exact after rounding)."""
    return _nearest(x.double(), ref.double(), exclude_self=exclude_self).square().round()


class BinaryDigitScorer:
    """Scores generated binary 8x8 digits against real ones; see the module docstring.

    Args:
        train: the bit images the generator was trained on, ``(m, 64)`` ints in {0, 1} (default:
            all of ``binarized_digits()``), for the nearest-neighbour statistics (m >= 2).
        seed: seed of the classifier's data split, initialisation and training.

    Attributes: ``heldout_accuracy``, ``real_confidence``, ``real_confident_fraction`` (the
    classifier on its 360 held-out digits), ``real_nn_hamming``, ``real_copy_fraction``
    (leave-one-out within ``train``), ``real_ones_fraction``, ``heldout_index``.
    """

    def __init__(self, train=None, seed: int = 0) -> None:
        _tokens.check_int("seed", seed, 0)
        if seed not in _CACHE:
            # one thread, as DigitScorer: faster for this tiny net, and machine-independent weights
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                _CACHE[seed] = _train(seed)
            finally:
                torch.set_num_threads(threads)
        trained = _CACHE[seed]
        self.seed = seed
        self.net = _classifier(seed)
        self.net.load_state_dict(trained["state"])
        self.net.eval().requires_grad_(False)
        self.heldout_accuracy = trained["heldout_accuracy"]
        self.real_confidence = trained["real_confidence"]
        self.real_confident_fraction = trained["real_confident_fraction"]
        self.heldout_index = trained["heldout_index"].clone()
        self.train = self._check(binarized_digits() if train is None else train, "train")
        if self.train.shape[0] < 2:
            raise ValueError("train needs at least 2 images (the baseline holds each one out in turn)")
        loo = _hamming_to_nearest(self.train, self.train, exclude_self=True)
        self.real_nn_hamming = float(loo.mean())
        self.real_copy_fraction = float((loo == 0).double().mean())
        self.real_ones_fraction = float(self.train.double().mean())

    @staticmethod
    def _check(tokens, name: str = "samples") -> torch.Tensor:
        return _tokens.check_tokens(name, tokens, 2, 64)

    @torch.no_grad()
    def classify(self, samples) -> torch.Tensor:
        """Class probabilities, float64 ``(n, 10)``, of bit images ``(n, 64)``."""
        return self.net(_as_pm1(self._check(samples))).softmax(dim=1).double()

    def class_rate(self, samples, label: int) -> float:
        """Fraction of samples ``(n, 64)`` classified as ``label`` (0..9)."""
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise ValueError(f"label must be an int in 0..9, got {label!r}")
        return float((self.classify(samples).argmax(dim=1) == label).double().mean())

    @torch.no_grad()
    def score(self, samples) -> dict:
        """The statistics of bit images ``(n, 64)`` (ints in {0, 1}, tensor or numpy array) as a
        dict of plain floats (``class_histogram``: a list of 10 fractions); keys explained in the
        module docstring.

        Raises:
            TypeError: samples not an integer tensor or array.
            ValueError: wrong shape, empty, or values other than 0 and 1.
        """
        x = self._check(samples)
        probs = self.net(_as_pm1(x)).softmax(dim=1)
        conf = probs.max(dim=1).values
        hist = torch.bincount(probs.argmax(dim=1), minlength=10).double() / x.shape[0]
        nn = _hamming_to_nearest(x, self.train)
        return {
            "n": x.shape[0],
            "confidence": float(conf.mean()),
            "confident_fraction": float((conf > 0.9).double().mean()),
            "class_entropy": _tokens.histogram_entropy(hist),
            "class_histogram": hist.tolist(),
            "max_class_entropy": math.log(10),
            "nn_hamming": float(nn.mean()),
            "nn_ratio": float(nn.mean()) / self.real_nn_hamming,
            "copy_fraction": float((nn == 0).double().mean()),
            "ones_fraction": float(x.double().mean()),
            "unique_fraction": _tokens.unique_fraction(x),
            "real_confidence": self.real_confidence,
            "real_confident_fraction": self.real_confident_fraction,
            "heldout_accuracy": self.heldout_accuracy,
            "real_nn_hamming": self.real_nn_hamming,
            "real_copy_fraction": self.real_copy_fraction,
            "real_ones_fraction": self.real_ones_fraction,
        }


class BinaryDigitsTask:
    """The binarized digits as a task: ``vocab = 2``, ``length = 64``; ``sample`` draws rows of
    the classifier's 80% training split (``train``, ``(1437, 64)``; ``train_labels``), the 360
    others are ``heldout`` / ``heldout_labels``; ``evaluate`` is ``BinaryDigitScorer(train,
    seed).score`` (the scorer is trained on first use)."""

    vocab = 2
    length = 64

    def __init__(self, seed: int = 0) -> None:
        train, heldout = digit_split(seed)
        self.seed = seed
        bits, labels = binarized_digits(), binarized_digit_labels()
        self.train, self.train_labels = bits[train], labels[train]
        self.heldout, self.heldout_labels = bits[heldout], labels[heldout]
        self._scorer: BinaryDigitScorer | None = None

    def __repr__(self) -> str:
        return f"BinaryDigitsTask(seed={self.seed})"

    @property
    def scorer(self) -> BinaryDigitScorer:
        if self._scorer is None:
            self._scorer = BinaryDigitScorer(train=self.train, seed=self.seed)
        return self._scorer

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training images drawn with replacement, int64 ``(n, 64)``, where ``generator`` lives."""
        n, generator = data._check_n(n), check_generator(generator)
        device = generator_device(generator)
        idx = torch.randint(0, self.train.shape[0], (n,), generator=generator, device=device)
        return self.train.to(device)[idx]

    def evaluate(self, tokens) -> dict:
        """``self.scorer.score(tokens)``: see ``BinaryDigitScorer.score``."""
        return self.scorer.score(tokens)
