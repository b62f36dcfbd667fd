"""Any array library in and out of flowfast's entry points: numpy, cupy, JAX, and any array that
exports DLPack (``__dlpack__``) or the CUDA array interface.

An entry point decorated with :func:`accepts_arrays` takes the caller's arrays for the parameters
it names, runs the torch code on zero-copy torch views of them and hands every array of the result
back in the caller's library, on the caller's device (zero-copy too where that library can take
the buffer: numpy, cupy, JAX). Torch tensors pass straight through (the fast path costs one type
check per named argument). Copies happen only where torch cannot view the caller's memory:
negative or non-element strides and non-native byte order (copied in the caller's library), and
JAX without ``jax_enable_x64`` (JAX itself turns int64 / float64 results into int32 / float32).

Streams: a cupy call runs on cupy's current stream (torch's current stream is set to it for the
call), so no synchronization is added; a JAX-on-GPU array is handed over by DLPack with torch's
current stream, which JAX waits for. Derivatives stay torch's: foreign arrays carry no autograd,
and results are detached values.

cupy and JAX are never imported here: an array is recognised by its type's module, and its
library is reached through ``sys.modules`` (it must be imported already to have made the array).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import sys
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

ACCEPTED = ("a torch.Tensor, numpy.ndarray, cupy.ndarray, jax.Array, or any array exporting __dlpack__ "
            "(DLPack) or __cuda_array_interface__")


def is_foreign(value: Any) -> bool:
    """An array of another library than torch (numpy, cupy, JAX, any DLPack / CUDA-array-interface
    producer)."""
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, torch.Tensor):
        return False
    kind = type(value)
    return hasattr(kind, "__dlpack__") or hasattr(kind, "__cuda_array_interface__")


def describe_type(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# --- reading a DLPack capsule's strides (what torch.from_dlpack would abort on) --------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):  # DLManagedTensor starts with it (DLPack < 1.0, capsule "dltensor")
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _capsule_has_negative_stride(capsule) -> bool:
    tensor = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    if not tensor.strides:
        return False  # NULL strides: compact row-major
    return any(tensor.strides[i] < 0 for i in range(tensor.ndim))


# --- one library's way in and out ---------------------------------------------------------------
class Library:
    """Where the caller's arrays come from: how to view one as a torch tensor, how to hand a torch
    tensor back, and the stream scope a call runs in (None: no stream to set, e.g. on the CPU)."""

    def __init__(self, name: str, device: str, to_torch: Callable, from_torch: Callable,
                 scope: Optional[Callable[[], Any]] = None) -> None:
        self.name, self.device = name, device
        self._to_torch, self._from_torch, self.scope = to_torch, from_torch, scope

    def to_torch(self, name: str, value: Any) -> torch.Tensor:
        return self._to_torch(name, value)

    def __reduce__(self):
        if self is _NUMPY:
            return "_NUMPY"  # pickled by reference to the module's one numpy Library
        raise TypeError(f"results handed back as {self.name} arrays cannot be pickled; pickle the torch "
                        "result (.torch) or convert the arrays first")

    def __deepcopy__(self, memo):
        return self  # stateless apart from the library it names

    def run(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` inside this library's stream scope."""
        if self.scope is None:
            return fn(*args, **kwargs)
        with self.scope():
            return fn(*args, **kwargs)

    def export(self, result: Any) -> Any:
        """``result`` with every tensor in it (tuples, named tuples, lists, dicts, result objects)
        as an array of this library."""
        if isinstance(result, torch.Tensor):
            return self._from_torch(result.detach() if result.requires_grad else result)
        if isinstance(result, tuple):
            items = [self.export(item) for item in result]
            return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
        if isinstance(result, list):
            return [self.export(item) for item in result]
        if isinstance(result, dict):
            return {key: self.export(item) for key, item in result.items()}
        if dataclasses.is_dataclass(result) and not isinstance(result, type):
            return ArrayResult(result, self)
        return result


def _numpy_to_torch(name: str, x: np.ndarray) -> torch.Tensor:
    dtype = x.dtype
    if dtype.kind not in "fiucb":
        raise TypeError(f"{name} must be a numeric array, got numpy dtype {dtype}")
    if not dtype.isnative:
        x = x.astype(dtype.newbyteorder("="))
    if any(stride < 0 or stride % x.itemsize for stride in x.strides):
        # torch views neither negative nor sub-element strides; numpy calls an array C-contiguous
        # whatever its size-1 axes' strides are, so the copy is forced rather than ascontiguousarray
        x = x.copy(order="C")
    if x.flags.writeable:
        return torch.from_numpy(x)
    try:
        return torch.from_dlpack(x)  # from_numpy would warn; flowfast never writes to an input
    except (BufferError, RuntimeError, TypeError):  # numpy < 1.22 / torch builds without read-only DLPack
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x)


def _numpy_from_torch(t: torch.Tensor) -> np.ndarray:
    return (t.cpu() if t.is_cuda else t).numpy()


def _dlpack_to_torch(name: str, x: Any, library: str) -> torch.Tensor:
    try:
        return torch.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as error:
        raise TypeError(f"{name}: this {library} array cannot be read by DLPack ({error}); expected {ACCEPTED}, "
                        "on one CPU or CUDA device") from None


def _strided_copy_needed(x: Any) -> bool:
    strides = getattr(x, "strides", None) or ()
    itemsize = getattr(x, "itemsize", 1) or 1
    return any(stride < 0 or stride % itemsize for stride in strides)


def _jax_library(x: Any) -> Library:
    jax = sys.modules["jax"]
    device = next(iter(x.devices())) if hasattr(x, "devices") and len(x.devices()) == 1 else None
    where = f"{device.platform}:{device.id}" if device is not None else "sharded"

    def to_torch(name, value):
        if hasattr(value, "devices") and len(value.devices()) != 1:
            raise ValueError(f"{name} is a JAX array sharded over {len(value.devices())} devices; pass one "
                             "device's array (e.g. jax.device_put(x, jax.devices()[0]))")
        return _dlpack_to_torch(name, value, "JAX")

    def from_torch(t):
        if not jax.config.jax_enable_x64 and t.dtype in (torch.int64, torch.float64):
            t = t.to(torch.int32 if t.dtype == torch.int64 else torch.float32)  # JAX's own rule, done here once
        return jax.dlpack.from_dlpack(t.contiguous())

    return Library("jax", where, to_torch, from_torch)


def _cupy_library(x: Any) -> Library:
    cupy = sys.modules["cupy"]
    index = int(x.device.id)

    def to_torch(name, value):
        if _strided_copy_needed(value):
            value = cupy.ascontiguousarray(value)
        return _dlpack_to_torch(name, value, "cupy")

    def scope():
        stack = contextlib.ExitStack()
        device = torch.device("cuda", index)
        stack.enter_context(torch.cuda.device(device))
        with cupy.cuda.Device(index):  # cupy's current stream is per device: the arrays' device, not the current one
            handle = cupy.cuda.get_current_stream().ptr
        stream = torch.cuda.ExternalStream(handle, device=device) if handle else torch.cuda.default_stream(device)
        stack.enter_context(torch.cuda.stream(stream))
        return stack

    return Library("cupy", f"cuda:{index}", to_torch, lambda t: cupy.from_dlpack(t), scope)


def _array_namespace(x: Any):
    """The array-API namespace of ``x`` (``x.__array_namespace__()``), or None without one."""
    method = getattr(x, "__array_namespace__", None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # a producer's own failure: treated as no namespace (its TypeError follows)
        return None


def _namespace_from_torch(namespace, library: str) -> Callable:
    """The array-API way back (``namespace.from_dlpack``); refused before any work is done when
    the type has none."""
    if namespace is None or not hasattr(namespace, "from_dlpack"):
        raise TypeError(f"flowfast cannot hand results back as {library} arrays: the type has no "
                        f"__array_namespace__().from_dlpack and is no library flowfast knows; expected {ACCEPTED}")
    return namespace.from_dlpack


def _dlpack_library(x: Any) -> Library:
    """Any other DLPack producer: its strides are read from the capsule first (torch aborts the
    process on negative ones), and results go back through its array-API namespace."""
    kind = describe_type(x)
    namespace = _array_namespace(x)
    device_type, device_id = x.__dlpack_device__()

    def to_torch(name, value):
        try:
            capsule = value.__dlpack__()
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            raise TypeError(f"{name}: this {kind} array cannot be exported by DLPack ({error})") from None
        if _capsule_has_negative_stride(capsule):
            if namespace is None:
                raise ValueError(f"{name} has negative strides, which torch cannot view; pass a contiguous copy")
            return to_torch(name, namespace.asarray(value, copy=True))
        return _dlpack_to_torch(name, capsule, kind)

    return Library(kind, f"dlpack:{int(device_type)}:{int(device_id)}", to_torch, _namespace_from_torch(namespace, kind))


def _cuda_interface_library(x: Any) -> Library:
    """A CUDA-array-interface producer without DLPack (numba device arrays)."""
    kind = describe_type(x)

    def to_torch(name, value):
        info = value.__cuda_array_interface__
        if any(stride < 0 for stride in info.get("strides") or ()):
            raise ValueError(f"{name} has negative strides, which torch cannot view; pass a contiguous copy")
        try:
            # no device argument: torch places the view on the pointer's own device (device="cuda"
            # would copy it to the current one)
            return torch.as_tensor(value)
        except (RuntimeError, TypeError, ValueError) as error:
            raise TypeError(f"{name}: this {kind} array cannot be read through __cuda_array_interface__ "
                            f"({error}); expected {ACCEPTED}") from None

    try:
        device = str(torch.as_tensor(x).device)  # the key that tells two devices' arrays apart
    except (RuntimeError, TypeError, ValueError):
        device = "cuda"  # unreadable here: the conversion's own error follows, naming the argument
    numba = sys.modules.get("numba.cuda") if kind.startswith("numba") else None
    if numba is None:
        namespace = _array_namespace(x)
        return Library(kind, device, to_torch, _namespace_from_torch(namespace, kind))
    return Library(kind, device, to_torch, lambda t: numba.as_cuda_array(t))


_NUMPY = Library("numpy", "cpu", _numpy_to_torch, _numpy_from_torch)


def library_of(value: Any) -> Library:
    """The :class:`Library` of a foreign array (:func:`is_foreign`)."""
    if isinstance(value, np.ndarray):
        return _NUMPY
    root = type(value).__module__.split(".")[0]
    if root in ("jax", "jaxlib") and "jax" in sys.modules:
        return _jax_library(value)
    if root == "cupy" and "cupy" in sys.modules:
        return _cupy_library(value)
    if hasattr(type(value), "__dlpack__"):
        return _dlpack_library(value)
    return _cuda_interface_library(value)


# --- the decorator ------------------------------------------------------------------------------
def _slots(fn: Callable, names: tuple) -> tuple:
    code = fn.__code__
    params = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    missing = [name for name in names if name not in params]
    if missing:
        raise AssertionError(f"{fn.__qualname__} has no parameter {missing}")
    return tuple((name, params.index(name) if params.index(name) < code.co_argcount else None) for name in names)


def _value(slot: tuple, args: tuple, kwargs: dict):
    name, position = slot
    if position is not None and position < len(args):
        return args[position]
    return kwargs.get(name)


def _is_foreign_argument(value, sequence: bool, numpy: bool) -> bool:
    if sequence and isinstance(value, (tuple, list)):
        return any(is_foreign(item) for item in value)
    return is_foreign(value) and (numpy or not isinstance(value, np.ndarray))


def accepts_arrays(*names: str, sequences: tuple = (), numpy: bool = True) -> Callable:
    """Let the decorated function take any array library's arrays for the parameters ``names``
    (and tuples / lists of arrays for ``sequences``): see the module docstring. All arrays of one
    call must come from one library and device; the result comes back in that library.
    ``numpy=False`` leaves numpy arrays to the function (one with its own numpy rules)."""
    def wrap(fn: Callable) -> Callable:
        slots = _slots(fn, names + sequences)
        is_sequence = tuple(name in sequences for name in names + sequences)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            for slot, sequence in zip(slots, is_sequence):
                value = _value(slot, args, kwargs)
                if value is not None and _is_foreign_argument(value, sequence, numpy):
                    return _call_with_arrays(fn, slots, is_sequence, args, kwargs)
            return fn(*args, **kwargs)

        return call

    return wrap


def _library_for_call(slots, is_sequence, args, kwargs) -> Library:
    """The one library (and device) of the call's arrays; a mix is a TypeError naming both."""
    seen: dict = {}  # (library, device) -> (argument, Library or None for torch)
    for slot, sequence in zip(slots, is_sequence):
        value = _value(slot, args, kwargs)
        if value is None:
            continue
        items = enumerate(value) if sequence and isinstance(value, (tuple, list)) else ((None, value),)
        for index, item in items:
            if isinstance(item, torch.Tensor):
                key, library = ("torch", str(item.device)), None
            elif is_foreign(item):
                library = library_of(item)
                key = (library.name, library.device)
            else:
                continue
            if key not in seen:
                seen[key] = (slot[0] if index is None else f"{slot[0]}[{index}]", library)
    if len(seen) > 1:
        parts = [f"{label} is {name} on {device}" for (name, device), (label, _) in seen.items()]
        raise TypeError("pass the arrays of one call from one library and device: " + ", ".join(parts))
    return next(iter(seen.values()))[1]


def _convert(library: Library, name: str, value, sequence: bool):
    if sequence and isinstance(value, (tuple, list)):
        return type(value)(library.to_torch(f"{name}[{i}]", item) if is_foreign(item) else item
                           for i, item in enumerate(value))
    return library.to_torch(name, value) if is_foreign(value) else value


def _call_with_arrays(fn, slots, is_sequence, args, kwargs):
    library = _library_for_call(slots, is_sequence, args, kwargs)
    # cupy: its current stream is set before DLPack hands the arrays over
    return library.run(_convert_and_call, library, fn, slots, is_sequence, args, kwargs)


def _convert_and_call(library: Library, fn, slots, is_sequence, args, kwargs):
    args = list(args)
    for (name, position), sequence in zip(slots, is_sequence):
        if position is not None and position < len(args):
            args[position] = _convert(library, name, args[position], sequence)
        elif name in kwargs:
            kwargs[name] = _convert(library, name, kwargs[name], sequence)  # (kwargs: this call's own dict)
    return library.export(fn(*args, **kwargs))


class ArrayResult:
    """A result object (e.g. :class:`flowfast.SinkhornResult`) seen from another array library:
    its array attributes and the results of its methods come back as that library's arrays, and
    its methods take that library's arrays. ``.torch`` is the underlying torch object."""

    __slots__ = ("torch", "_library")

    def __init__(self, result: Any, library: Library) -> None:
        object.__setattr__(self, "torch", result)
        object.__setattr__(self, "_library", library)

    def __getattr__(self, name: str):
        if name in ArrayResult.__slots__ or (name.startswith("__") and name.endswith("__")):
            # an unset slot (copy / unpickle build the object before __init__) or a protocol look-up:
            # never forwarded, which would recurse through self.torch
            raise AttributeError(name)
        value = getattr(self.torch, name)
        if callable(value) and not isinstance(value, torch.Tensor):
            return self._method(value)
        return self._library.export(value)

    def _method(self, method: Callable) -> Callable:
        library = self._library

        def convert_and_call(*args, **kwargs):
            args = [library.to_torch(f"argument {i}", a) if is_foreign(a) else a for i, a in enumerate(args)]
            kwargs = {k: library.to_torch(k, a) if is_foreign(a) else a for k, a in kwargs.items()}
            return library.export(method(*args, **kwargs))

        @functools.wraps(method)
        def call(*args, **kwargs):
            return library.run(convert_and_call, *args, **kwargs)

        return call

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"{type(self.torch).__name__} results are read-only")

    def __dir__(self):
        return sorted(set(dir(self.torch)) | {"torch"})

    def __repr__(self) -> str:
        return f"ArrayResult({self._library.name}, {self.torch!r})"

    def __reduce__(self):
        # copy.copy / copy.deepcopy / pickle: rebuilt from the torch result and the library
        return ArrayResult, (self.torch, self._library)


def unsupported(name: str, value: Any) -> TypeError:
    """The TypeError for a value that is no array flowfast takes."""
    return TypeError(f"{name} must be {ACCEPTED}; got {describe_type(value)}")

