"""2D toy distributions as plain functions ``sample(n, generator=None, device=None) -> (n, 2)``.

Conventions follow torchcfm so published W2 numbers are comparable: ``eight_gaussians`` puts
8 modes on a circle of radius 5 with per-coordinate std sqrt(sqrt(0.1)) (torchcfm passes
sqrt(var) as the covariance), ``moons`` is sklearn-style two moons (noise 0.2) scaled by 3 minus 1.

Also one small image set: the 8x8 digits (``digits``, ``digits_labels``; needs scikit-learn).
"""

from __future__ import annotations

import functools
import math

import torch


def _check_n(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return n


def gaussian(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Standard normal source, (n, 2)."""
    return torch.randn(_check_n(n), 2, generator=generator).to(device)  # drawn where the generator lives


def eight_gaussians(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """8 Gaussian modes on a circle of radius 5, (n, 2)."""
    n = _check_n(n)
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    centers = 5.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    which = torch.randint(0, 8, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator) * math.sqrt(math.sqrt(0.1))
    return (centers[which] + noise).to(device)


def moons(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Two interleaved half circles with Gaussian noise 0.2, scaled by 3 and shifted by -1, (n, 2)."""
    n = _check_n(n)
    n_outer = n // 2
    n_inner = n - n_outer
    t_outer = torch.rand(n_outer, generator=generator) * math.pi
    t_inner = torch.rand(n_inner, generator=generator) * math.pi
    outer = torch.stack([torch.cos(t_outer), torch.sin(t_outer)], dim=1)
    inner = torch.stack([1 - torch.cos(t_inner), 1 - torch.sin(t_inner) - 0.5], dim=1)
    x = torch.cat([outer, inner]) + 0.2 * torch.randn(n, 2, generator=generator)
    x = x[torch.randperm(n, generator=generator)]
    return (x * 3 - 1).to(device)


def scurve(n: int, generator: torch.Generator | None = None, device=None, noise: float = 0.1) -> torch.Tensor:
    """2-D S curve: the (x, z) projection of sklearn's ``make_s_curve`` (t ~ U(-3pi/2, 3pi/2),
    x = sin t, z = sign(t) (cos t - 1)), scaled by 2, plus Gaussian noise of std ``noise``, (n, 2)."""
    n = _check_n(n)
    t = 3 * math.pi * (torch.rand(n, generator=generator) - 0.5)
    x = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1)], dim=1) * 2
    return (x + noise * torch.randn(n, 2, generator=generator)).to(device)


def checkerboard(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4 x 4 checkerboard over [-4, 4]^2, (n, 2)."""
    n = _check_n(n)
    row = torch.randint(0, 4, (n,), generator=generator)
    col_in_row = torch.randint(0, 2, (n,), generator=generator)
    y = (2 * col_in_row + (row % 2)) * 2 - 4 + torch.rand(n, generator=generator) * 2
    x = row * 2 - 4 + torch.rand(n, generator=generator) * 2
    return torch.stack([x, y], dim=1).to(device)


SAMPLERS = {
    "gaussian": gaussian,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "scurve": scurve,
    "checkerboard": checkerboard,
}


def get_sampler(name: str):
    """A sampler by name (see ``SAMPLERS``); any callable ``sample(n, generator)`` works in its place."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(SAMPLERS)}") from None


# --- 8x8 digits (a fixed image set, not a sampler) -----------------------------------------------


@functools.lru_cache(maxsize=1)
def _load_digits():
    # Cached: load_digits parses a compressed CSV on every call; callers copy before returning.
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the 8x8 digits come from scikit-learn (it ships the data, no download): "
                          "pip install scikit-learn") from e
    return load_digits()


def digits(device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 1797 8x8 handwritten digits of ``sklearn.datasets.load_digits`` as ``(1797, 1, 8, 8)``
    images in [-1, 1] (pixel value v in 0..16 becomes ``v / 8 - 1``; background is -1), in the
    dataset's fixed order. As data x1 (t = 1) for image flow matching; see ``digits_labels``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    images = torch.from_numpy(_load_digits().images)  # float64, values 0..16
    return (images / 8 - 1).reshape(-1, 1, 8, 8).to(device=device, dtype=dtype)


def digits_labels(device=None) -> torch.Tensor:
    """The classes 0..9 of ``digits()``, int64 ``(1797,)``, in the same order."""
    return torch.from_numpy(_load_digits().target).to(dtype=torch.int64).clone().to(device)
