"""Runs flowfast's own op layer on the SIMT emulation of the CUDA kernels.

``emulated_cuda(module)`` swaps the kernel module of flowfast.ops for an emulation module
(build/emu/_C_emu_race or _C_emu_asan) and describes CPU tensors to it as CUDA memory, so the
public API called on CPU tensors runs the CUDA launch path of csrc/cuda/*.cu on host memory:
the same Python validation, layouts, workspaces and dispatch as on a GPU. Every output buffer is
filled with 0xFF bytes before each kernel (NaN for floats, -1 for integers), so an element the
launch grid never writes shows up in the result.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
from pathlib import Path

import flowfast._arrays as arrays
import flowfast.ops.assignment as ops_assignment
import flowfast.ops.dfm as ops_dfm
import flowfast.ops.interpolant as ops_interpolant
import flowfast.ops.simplex as ops_simplex
import flowfast.ops.sinkhorn as ops_sinkhorn

ROOT = Path(__file__).resolve().parents[2]
_ITEMSIZE = {0: 4, 1: 8, 2: 8, 3: 4, 4: 2, 5: 2}

# Positions of output descriptors in each binding's arguments (sentinel-filled before the call).
_OUTPUTS = {
    "linear_assignment": (1,),
    "interpolant_sample": (1, 2),
    "interpolant_loss_forward": (3, 4, 6),
    "interpolant_loss_backward": (4,),
    "sinkhorn_solve": (3, 4),
    "sinkhorn_plan": (4, 5, 6, 7, 8, 9),
    "sinkhorn_sample": (5,),
    "simplex_step": (3, 4, 5),
    "simplex_distill_loss": (1, 2, 3),
    "dfm_pack": (1,),
    "dfm_inversion_step": (3, 4, 5),
}


def build_name() -> str:
    """'race' (default) or 'asan' (the process must have libasan preloaded: see the Makefile)."""
    return os.environ.get("FLOWFAST_EMU_BUILD", "race")


def load_module():
    """The emulation module of this process's build, or None when it has not been built."""
    directory = os.environ.get("FLOWFAST_EMU_DIR", str(ROOT / "build" / "emu"))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        return importlib.import_module(f"_C_emu_{build_name()}")
    except ImportError:
        return None


def _fill_sentinel(desc) -> None:
    if desc is None:
        return
    ptr, dtype, _device, _index, shape, strides = desc
    span = 1
    for size, stride in zip(shape, strides):
        if size == 0:
            return
        span += (size - 1) * stride
    ctypes.memset(ptr, 0xFF, span * _ITEMSIZE[dtype])


def _describe_as_cuda(plain_describe, t):
    if t.device.type != "cpu":
        raise AssertionError("the emulation runs on host memory: pass CPU tensors")
    ptr, dtype, _device, index, shape, strides = plain_describe(t)
    return (ptr, dtype, 1, index, shape, strides)


class _SentinelModule:
    """The emulation module with outputs sentinel-filled before every kernel call."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        outputs = _OUTPUTS.get(name)
        if outputs is None:
            return fn

        def call(*args, **kwargs):
            for k in outputs:
                if k < len(args):
                    _fill_sentinel(args[k])
            return fn(*args, **kwargs)

        return call


@contextlib.contextmanager
def emulated_cuda(module):
    """Within the block, flowfast ops on CPU tensors run the emulated CUDA kernels."""
    saved = (arrays.describe, arrays.device_code, ops_assignment._C, ops_interpolant._C, ops_sinkhorn._C,
             ops_simplex._C, ops_dfm._C)
    plain_describe = arrays.describe
    wrapped = _SentinelModule(module)
    arrays.describe = lambda t: _describe_as_cuda(plain_describe, t)
    arrays.device_code = lambda device: 1
    ops_assignment._C = ops_interpolant._C = ops_sinkhorn._C = ops_simplex._C = ops_dfm._C = wrapped
    try:
        yield module
    finally:
        (arrays.describe, arrays.device_code, ops_assignment._C, ops_interpolant._C, ops_sinkhorn._C,
         ops_simplex._C, ops_dfm._C) = saved
