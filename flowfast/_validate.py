"""Input validation helpers shared by every layer: one message style, naming the argument."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from flowfast import _interop

FLOAT_DTYPES = (torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def to_tensor(name: str, x: Any) -> tuple[torch.Tensor, bool]:
    """A torch tensor, or a zero-copy torch view of another library's array (numpy, cupy, JAX,
    DLPack: :mod:`flowfast._interop`); returns (tensor, was_foreign). Anything else is a TypeError
    listing what is accepted."""
    if isinstance(x, torch.Tensor):
        return x, False
    if _interop.is_foreign(x):
        return _interop.library_of(x).to_torch(name, x), True
    raise _interop.unsupported(name, x)


def check_float(name: str, t: torch.Tensor, allowed: tuple = FLOAT_DTYPES) -> None:
    if t.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def check_ndim(name: str, t: torch.Tensor, allowed: tuple[int, ...], layout: str) -> None:
    if t.dim() not in allowed:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def check_nonempty(name: str, t: torch.Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); every dimension must be >= 1")


def distinct_view(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(view, repeats)``: ``t`` without the repeats of its broadcast (stride-0) dims, as a view
    (no copy), and how many times each of its entries appears in ``t``. Checks run on the view, so
    an expanded (n, m) input of n distinct values is validated without materializing n * m."""
    if t.is_contiguous() or all(stride != 0 or size <= 1 for stride, size in zip(t.stride(), t.shape)):
        return t, 1  # (contiguous: no broadcast dims, known without the Python loop)
    index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None) for stride, size in zip(t.stride(), t.shape))
    view = t[index]
    return view, t.numel() // max(view.numel(), 1)


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise on NaN/Inf. On CUDA this reads one flag back to the host (a synchronization)."""
    view, repeats = distinct_view(t.detach())
    if not bool(torch.isfinite(view).all()):
        n_bad = int((~torch.isfinite(view)).sum()) * repeats
        raise ValueError(f"{name} contains {n_bad} NaN/Inf value(s); all entries must be finite")


def stacked_peaks(tensors: dict) -> tuple[list, Optional[torch.Tensor]]:
    """``(named, bounds)``: the non-empty ``(name, tensor)`` pairs of ``tensors`` (None skipped) and
    a tensor of their ``(min, max)`` pairs (NaN where one holds NaN), one reduction each on
    the device, nothing read yet. Broadcast (stride-0) dims are read once (:func:`distinct_view`); no
    temporary of a tensor's size."""
    named = [(name, t) for name, t in tensors.items() if t is not None and t.numel()]
    if not named:
        return [], None
    device = named[0][1].device
    # aminmax: one pass, NaN-propagating, and on CPU far faster than an inf-norm or abs().amax()
    dtype = named[0][1].dtype if all(t.dtype == named[0][1].dtype for _, t in named) else torch.float64
    bounds = [b if b.dtype == dtype and b.device == device else b.to(device=device, dtype=dtype)
              for _, t in named for b in torch.aminmax(distinct_view(t.detach())[0])]
    return named, torch.stack(bounds)


def checked_peaks(named: list, values: list) -> dict:
    """``{name: largest |entry|}`` from :func:`stacked_peaks` once read (its ``(min, max)`` pairs);
    ValueError naming the first tensor holding NaN/Inf."""
    peaks = [max(-lo, hi) if math.isfinite(lo) and math.isfinite(hi) else math.nan
             for lo, hi in zip(values[::2], values[1::2])]
    for (name, t), peak in zip(named, peaks):
        if not math.isfinite(peak):
            check_finite(name, t)
    return {name: peak for (name, _), peak in zip(named, peaks)}


def check_magnitude(name: str, t: torch.Tensor, limit: float) -> None:
    """Raise on NaN/Inf or |t| > limit with one reduction (one host read on CUDA), without a
    temporary of t's size."""
    named, bounds = stacked_peaks({name: t})
    peak = checked_peaks(named, bounds.tolist()).get(name, 0.0) if named else 0.0
    if peak > limit:
        raise ValueError(f"{name} has entries up to {peak:.3g} in magnitude; at most {limit:.0e} is supported (rescale it)")


def check_device_supported(name: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on device '{t.device}'; flowfast runs on CPU or CUDA tensors")


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    items = list(tensors.items())
    device = items[0][1].device
    for name, t in items[1:]:
        if t.device != device:
            raise ValueError(
                f"{items[0][0]} is on {device} but {name} is on {t.device}; put them on one device"
            )
    return device


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_batch_pair(x0: Any, x1: Any, *, dtypes: tuple = FLOAT_DTYPES, same_size: bool = True,
                     min_ndim: int = 1) -> None:
    """The one check of a (source, data) pair of batches, every layer's: torch tensors of an
    allowed float dtype, non-empty ``(n, *shape)``, one device, one dtype, the same sample shape,
    and (``same_size``) as many x0 as x1 samples. Values are not read (no host sync)."""
    for name, x in (("x0", x0), ("x1", x1)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        check_float(name, x, dtypes)
        if x.dim() < min_ndim or x.numel() == 0:
            raise ValueError(f"{name} must be a non-empty (n, *shape) batch, got shape {tuple(x.shape)}")
    check_same_device(x0=x0, x1=x1)
    if x0.dtype != x1.dtype:
        raise TypeError(f"x0 and x1 must share a dtype, got {x0.dtype} and {x1.dtype}")
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x0 and x1 must have the same sample shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if same_size and x0.shape[0] != x1.shape[0]:
        raise ValueError(f"x0 and x1 must have the same shape (as many x0 as x1 samples), got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
