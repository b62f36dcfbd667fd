"""Framework adapter: turns torch tensors into the plain descriptors flowfast._C accepts.

Every kernel runs on the caller's current CUDA stream (passed as an integer handle), so torch's
caching allocator can reuse memory stream-ordered without record_stream. C++ never allocates
device memory: outputs and workspaces are torch tensors allocated here.
"""

from __future__ import annotations

import torch

_DTYPE_CODES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.int64: 2,
    torch.int32: 3,
    torch.float16: 4,
    torch.bfloat16: 5,
}
_DEVICE_CODES = {"cpu": 0, "cuda": 1}


def device_code(device: torch.device) -> int:
    try:
        return _DEVICE_CODES[device.type]
    except KeyError:
        raise ValueError(f"flowfast kernels run on CPU or CUDA, got device {device}") from None


def plain(t):
    """The storage-backed tensor under functorch's wrappers (torch.func.jvp / grad / vmap wrap
    the tensors an autograd.Function's rules see); kernels need the raw memory. None passes.
    Use inside :func:`kernel_scope`, where torch ops on it do not re-wrap their results."""
    if t is None:
        return None
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def kernel_scope():
    """Context for a kernel call's tensor preparation and outputs: functorch transforms are
    suspended, so outputs are plain tensors (the autograd.Function rules that call kernels
    compute values, never derivatives, inside it)."""
    return torch._C._DisableFuncTorch()


def describe(t: torch.Tensor) -> tuple:
    """(data_ptr, dtype_code, device_type, device_index, shape, strides) for flowfast._C."""
    if t.is_cuda:  # (properties, not t.device: this runs several times per kernel call)
        where, index = 1, t.get_device()
    elif t.is_cpu:
        where, index = 0, 0
    else:
        where, index = device_code(t.device), 0  # raises: flowfast kernels run on CPU or CUDA
    return (t.data_ptr(), _DTYPE_CODES[t.dtype], where, index, t.shape, t.stride())  # torch.Size: a tuple


def stream_handle(device: torch.device) -> int:
    """The cudaStream_t of torch's current stream on `device` (0 on CPU)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.current_stream(device).cuda_stream


def workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    """Scratch memory from torch's allocator (freed when the tensor goes); a failed allocation is
    a MemoryError that says how much the kernel needed."""
    try:
        return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        raise MemoryError(f"flowfast needs {int(nbytes) / 2**20:.1f} MiB of kernel workspace on {device} and the "
                          f"allocation failed ({error}); use smaller batches") from None
