"""A quality score for generated 8x8 digits (``flowfast.data.digits``): is each sample a clear
digit, are all ten classes there, and is the model copying its training set?

``DigitScorer().score(samples)`` returns a dict of plain floats. How to read it (the ``real_*``
entries are the same statistics for real digits, measured once, so every report carries its own
yardstick; the numbers in brackets are this module's values with the default seed):

- ``confidence``: mean max-softmax probability of a small classifier. Real held-out digits
  ``real_confidence`` [0.95]; uniform noise about 0.12; a 50/50 blend of two digits about
  0.6; the blurry mean image about 0.2; digits blurred by a 3x3 box filter about 0.5. Lower
  than real = unclear or blurry samples. (The classifier's own training digits reach 0.96, so
  copies of the data score slightly above real held-out digits.)
- ``confident_fraction``: fraction with confidence > 0.9 (real ``real_confident_fraction``
  [0.89]; noise 0).
- ``class_entropy``: entropy (nats) of the histogram of predicted classes, ``class_histogram``.
  ``log 10 = 2.303`` when all classes are equally frequent (real digits: about 2.30); mode
  collapse shows as a drop (one class: 0; five equal classes: log 5 = 1.61). Needs a few hundred
  samples to be meaningful: 500 draws from ten equally likely classes give about 2.29.
- ``nn_distance``: mean L2 distance (pixels in [-1, 1], 64 of them) from each sample to its
  nearest neighbour in the training set. Baseline ``real_nn_distance`` [2.05 for the full set]:
  the same mean for real digits, each held out of the training set in turn (leave-one-out), i.e.
  how far a fresh real digit lies from the training set. ``nn_ratio = nn_distance /
  real_nn_distance``: about 1 for novel, realistic samples; far below 1 = memorisation (a copy of
  the training set gives 0); far above = off the data (uniform noise: about 3.5). A generator
  trained on a subset should be scored with ``DigitScorer(train=subset)``: then real digits
  outside the subset give a ratio of about 1.0.
- ``close_fraction`` / ``far_fraction``: fraction of samples nearer than the 5th / farther than
  the 95th percentile of those real leave-one-out distances; both about 0.05 for samples that
  are as novel as real digits. ``close_fraction`` near 1 = copying; ``far_fraction`` near 1 = junk.
- ``clamped_fraction``: fraction of pixel values outside [-1, 1] (they are clamped before scoring).

A good generator is near the real numbers on all of these at once; confidence alone rewards a
collapsed model (see class_entropy), NN distance alone rewards noise (see confidence).

The classifier: an MLP ``64 -> 256 -> 256 -> 10`` (SiLU) trained for a few seconds (one thread)
on a fixed 80% split of the digits (the other 20%, 360 digits, give ``heldout_accuracy`` [0.992]),
with ±1 pixel shifts, mixup (so blends and averages of digits get low confidence instead of an
arbitrary class) and outlier exposure (uniform noise, smooth blobs and Gaussian noise trained
towards the uniform prediction, so noise gets low confidence). All randomness comes from
``seed``; the trained weights are cached in memory per seed, so later scorers are instant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowfast import data
from flowfast._validate import to_tensor

__all__ = ["DigitScorer"]

_HELDOUT = 360  # digits held out of the classifier's training split (20% of 1797)
_STEPS = 500
_BATCH = 256
_CACHE: dict[int, dict] = {}  # seed -> trained classifier state and its held-out statistics


def _classifier(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                         nn.Linear(256, 10))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of x ``(n, 1, 8, 8)`` moved by -1, 0 or +1 pixels per axis, padded with background."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=g)
    dx = torch.randint(0, 3, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def _outliers(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 1, 8, 8)`` non-digits: uniform noise, smooth random blobs, clamped Gaussian noise."""
    k = n // 3
    uniform = torch.rand(k, 1, 8, 8, generator=g) * 2 - 1
    coarse = torch.rand(k, 1, 4, 4, generator=g) * 2 - 1
    blobs = F.interpolate(coarse, size=8, mode="bilinear", align_corners=False)
    gauss = torch.randn(n - 2 * k, 1, 8, 8, generator=g).clamp(-1, 1)
    return torch.cat([uniform, blobs, gauss])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, seed: int, *, augment, mix, outliers) -> dict:
    """The recipe of both digit scorers (continuous and binarized): a fixed split (the first
    ``_HELDOUT`` of a seeded permutation held out), ``_STEPS`` AdamW steps on batches of ``_BATCH``
    augmented digits (``augment(x, g)``), plus half a batch of mixed digits with soft labels
    (``mix(x, y, n, g) -> (x_mixed, target)``) and half a batch of ``outliers(n, g)`` trained towards
    the uniform prediction. Returns the trained state and the held-out statistics."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=g)
    test, train = perm[:_HELDOUT], perm[_HELDOUT:]
    x_tr, y_tr = images[train], labels[train]
    net = _classifier(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    half = _BATCH // 2
    for _ in range(_STEPS):
        idx = torch.randint(0, len(x_tr), (_BATCH,), generator=g)
        loss = F.cross_entropy(net(augment(x_tr[idx], g)), y_tr[idx])
        xm, target = mix(x_tr, y_tr, half, g)
        loss = loss - 0.5 * (target * F.log_softmax(net(xm), dim=1)).sum(1).mean()
        loss = loss - 0.5 * F.log_softmax(net(outliers(half, g)), dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        probs = net(images[test]).softmax(dim=1)
    conf = probs.max(dim=1).values
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "heldout_accuracy": float((probs.argmax(dim=1) == labels[test]).float().mean()),
        "real_confidence": float(conf.mean()),
        "real_confident_fraction": float((conf > 0.9).float().mean()),
        "heldout_index": test,
    }


def mix_pairs(x_tr: torch.Tensor, y_tr: torch.Tensor, n: int, g: torch.Generator):
    """n random pairs (j, k) of training digits with weights lam ~ U(0, 1) and their soft labels."""
    j = torch.randint(0, len(x_tr), (n,), generator=g)
    k = torch.randint(0, len(x_tr), (n,), generator=g)
    lam = torch.rand(n, generator=g)
    target = lam[:, None] * F.one_hot(y_tr[j], 10) + (1 - lam[:, None]) * F.one_hot(y_tr[k], 10)
    return j, k, lam, target


def _augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    moved = _shift(xb, g)
    xb = torch.where(torch.rand(xb.shape[0], 1, 1, 1, generator=g) < 0.5, xb, moved)
    return xb + 0.05 * torch.randn(xb.shape, generator=g)


def _mix(x_tr, y_tr, n, g):
    # mixup: a blend of two digits is not a clear digit, so its target is the blend of labels
    j, k, lam, target = mix_pairs(x_tr, y_tr, n, g)
    return lam[:, None, None, None] * x_tr[j] + (1 - lam[:, None, None, None]) * x_tr[k], target


def _train(seed: int) -> dict:
    return train_classifier(data.digits(), data.digits_labels(), seed, augment=_augment, mix=_mix,
                            outliers=_outliers)


def _as_images(name: str, x) -> torch.Tensor:
    """x ``(n, 1, 8, 8)``, ``(n, 8, 8)`` or ``(n, 64)`` (tensor or numpy array) as ``(n, 64)``
    float64 on the CPU (finite)."""
    x, _ = to_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor in [-1, 1], got {x.dtype}")
    if x.dim() not in (2, 3, 4) or x.shape[1:] not in ((1, 8, 8), (8, 8), (64,)) or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, 1, 8, 8) with n >= 1 (8x8 digits in [-1, 1]), "
                         f"got {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float64).reshape(x.shape[0], 64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has {int((~torch.isfinite(x)).sum())} NaN/Inf values")
    return x


def _nearest(x: torch.Tensor, ref: torch.Tensor, exclude_self: bool = False, chunk: int = 1024) -> torch.Tensor:
    """Distance ``(n,)`` from each row of x ``(n, 64)`` to its nearest row of ref ``(m, 64)``
    (``exclude_self``: x is ref, and row i may not match itself)."""
    out = []
    for start in range(0, x.shape[0], chunk):
        # differences, not the ||a||^2 + ||b||^2 - 2ab form: exact zeros for exact copies
        d = torch.cdist(x[start:start + chunk], ref, compute_mode="donot_use_mm_for_euclid_dist")
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = math.inf
        out.append(d.min(dim=1).values)
    return torch.cat(out)


class DigitScorer:
    """Scores generated 8x8 digits against real ones; see the module docstring for how to read it.

    Args:
        train: the images the generator was trained on, ``(m, 1, 8, 8)`` in [-1, 1] (default: all
            of ``flowfast.data.digits()``), for the nearest-neighbour statistics (m >= 2).
        seed: seed of the classifier's data split, initialisation and training.

    Attributes: ``heldout_accuracy`` (classifier accuracy on its 360 held-out digits),
    ``real_confidence``, ``real_confident_fraction`` (the classifier's statistics on those),
    ``real_nn_distance`` (leave-one-out NN distance within ``train``), ``heldout_index`` (the
    indices into ``digits()`` of the held-out digits).

    Raises:
        ImportError: scikit-learn (which ships the digits) is missing.
    """

    def __init__(self, train: torch.Tensor | None = None, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if seed not in _CACHE:
            # One thread: the net is tiny, so more threads only add synchronisation (and on a
            # loaded machine, oversubscription: 3x slower measured); it also fixes the
            # summation order, so the weights do not depend on the machine's thread count.
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
        ref = data.digits() if train is None else train
        self.train = _as_images("train", ref)
        if self.train.shape[0] < 2:
            raise ValueError("train needs at least 2 images (the baseline holds each one out in turn)")
        loo = _nearest(self.train, self.train, exclude_self=True)
        self.real_nn_distance = float(loo.mean())
        self._close, self._far = (float(q) for q in torch.quantile(loo, torch.tensor([0.05, 0.95], dtype=loo.dtype)))

    @torch.no_grad()
    def classify(self, samples: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(n, 10)`` of samples ``(n, 1, 8, 8)`` (values clamped to [-1, 1])."""
        x = _as_images("samples", samples).clamp(-1, 1)
        return self.net(x.float()).softmax(dim=1).double()

    @torch.no_grad()
    def score(self, samples: torch.Tensor) -> dict:
        """The quality statistics of samples ``(n, 1, 8, 8)`` in [-1, 1] (also ``(n, 8, 8)``,
        ``(n, 64)``; a tensor on any device, or a numpy array), as a dict of floats
        (``class_histogram``: a list of 10 fractions; the keys are explained in the module
        docstring).
        Values outside [-1, 1] are clamped (their share is ``clamped_fraction``).

        Raises:
            TypeError: samples is not a floating tensor or array.
            ValueError: wrong shape, empty, or NaN/Inf values.
        """
        x = _as_images("samples", samples)
        clamped = float(((x < -1) | (x > 1)).double().mean())
        x = x.clamp(-1, 1)
        probs = self.net(x.float()).softmax(dim=1)
        conf = probs.max(dim=1).values
        hist = torch.bincount(probs.argmax(dim=1), minlength=10).double() / x.shape[0]
        nz = hist[hist > 0]
        nn_dist = _nearest(x, self.train)
        mean_nn = float(nn_dist.mean())
        return {
            "n": x.shape[0],
            "confidence": float(conf.mean()),
            "confident_fraction": float((conf > 0.9).double().mean()),
            "class_entropy": float(-(nz * nz.log()).sum()),
            "class_histogram": hist.tolist(),
            "nn_distance": mean_nn,
            "nn_ratio": mean_nn / self.real_nn_distance,
            "close_fraction": float((nn_dist < self._close).double().mean()),
            "far_fraction": float((nn_dist > self._far).double().mean()),
            "clamped_fraction": clamped,
            "real_confidence": self.real_confidence,
            "real_confident_fraction": self.real_confident_fraction,
            "real_nn_distance": self.real_nn_distance,
            "max_class_entropy": math.log(10),
            "heldout_accuracy": self.heldout_accuracy,
        }
