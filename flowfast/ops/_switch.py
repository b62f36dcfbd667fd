"""The one backend switch of the op layer: ``backend="auto" | "cpu" | "cuda" | "torch"``.

Every family's public entry resolves its ``backend`` here to an implementation and a device:
``"kernel"`` (flowfast._C on CPU or CUDA) or ``"torch"`` (the family's pure-torch reference in
:mod:`flowfast.reference`, reached only through this switch, never imported by the layers above).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from flowfast._backend import cuda_available
from flowfast._validate import check_choice

BACKENDS = ("auto", "cpu", "cuda", "torch")

__all__ = ["BACKENDS", "reference", "resolve"]


def resolve(backend: str, device: torch.device, what: str = "inputs") -> tuple[str, torch.device]:
    """``(implementation, run_device)`` for ``backend`` and the inputs' device: "auto" runs the
    kernels where the inputs are, "cpu" runs the CPU kernels (a CUDA input is copied to the host
    and the result back), "cuda" requires the CUDA kernels, "torch" the reference."""
    check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return "torch", device
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs {what} on a CUDA device, got {device}")
        if not cuda_available():
            raise ValueError("backend='cuda' but this flowfast build/machine has no usable CUDA kernels")
    if backend == "cpu":
        return "kernel", torch.device("cpu")
    return "kernel", device


def reference(family: str) -> ModuleType:
    """The pure-torch reference module of a family (imported on first use)."""
    return importlib.import_module(f"flowfast.reference.{family}")
