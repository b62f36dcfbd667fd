"""Loads the compiled core (flowfast._C) and answers what this build and machine can do."""

from __future__ import annotations

import functools

try:
    from flowfast import _C
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "flowfast's compiled extension (flowfast._C) is missing. Build it with "
        "`pip install --no-build-isolation -e .` (or `make test`) from the repository root."
    ) from exc

__all__ = ["_C", "build_info", "cuda_available", "cuda_compiled"]


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    """What the extension was compiled with.

    Returns:
        dict with ``cuda_compiled`` (bool), ``cuda_version`` (int like 13000, or None),
        ``archs`` (str, e.g. ``"90"``) and ``openmp`` (bool).
    """
    return dict(_C.build_info())


def cuda_compiled() -> bool:
    return bool(build_info()["cuda_compiled"])


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """Runtime probe: CUDA kernels compiled in AND a CUDA device usable by both torch and flowfast."""
    if not cuda_compiled():
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available() and _C.cuda_runtime_available())
