"""Where the trainer's x0 (source, t=0) and x1 (data, t=1) batches come from.

Every kind of argument is wrapped in a small source object with one interface:

    draw(n_or_batch, generator) -> (B, *shape)   the next training batch (on the data's device;
                                                 the trainer moves it to its device and dtype)
    sample(n, generator)        -> (m, *shape)   m <= n rows for evaluation; leaves the training
                                                 position alone
    item_shape()                -> shape         of one sample (what noise for ``source=None`` needs)
    state_dict() / load_state_dict(state)        the position in the data, for exact resume

``n_or_batch`` is the number of rows, or (for a source) the x1 batch the draw must match. Kinds:

- :class:`SamplerSource`: a callable ``sample(n, generator) -> (n, *shape)``; stateless (its
  randomness is the trainer's generator, which the checkpoint keeps).
- :class:`NoiseSource` (``source=None``): standard normal noise shaped like the x1 batch.
- :class:`TensorSource`: a ``(N, *shape)`` tensor or numpy array; shuffled epochs, the incomplete
  last batch of each epoch dropped (never wrapped), so every row is used at most once per epoch and
  exactly once when the global batch divides N. Under DDP one permutation per epoch is shared by
  the ranks and each takes its slice of every global batch, so the ranks split the epoch. The
  permutation of epoch ``e`` comes from a generator seeded by (seed, e): the position (epoch, rows
  used) is the whole state.
- :class:`IterableSource`: a re-iterable of batches (a list, a ``torch.utils.data.DataLoader``, any
  object whose ``__iter__`` starts a new pass); ``(x, label)`` tuples or lists give ``x``. Each
  pass is an epoch; a sampler with ``set_epoch`` (``DistributedSampler``) is told the epoch before
  each pass. The state is (epoch, batches used in it) plus the states, at the epoch's start, of the
  loader's ``torch.Generator`` s (``loader.generator``, ``loader.sampler.generator``); resuming
  restores those, starts the pass again and skips the used batches. That is exact when the pass is
  deterministic given them: a DataLoader with ``shuffle=True`` needs ``generator=`` (else it shuffles
  from torch's global RNG), a plain iterable must yield the same batches each time it is re-run.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
from typing import Callable, Optional

import numpy as np
import torch

from flowfast.train.distributed import World, derive_seed

__all__ = ["SamplerSource", "NoiseSource", "TensorSource", "IterableSource", "as_source", "as_target",
           "draw_pair", "load_array"]

_END = object()


def _rows(n_or_batch) -> int:
    return n_or_batch.shape[0] if isinstance(n_or_batch, torch.Tensor) else int(n_or_batch)


#: int64/int32 torch data are token ids (flowfast.categorical): kept as integers, never cast to the
#: model's dtype (numpy integer arrays and files are still read as float, as before)
TOKEN_DTYPES = (torch.int64, torch.int32)


def _check_data(x: torch.Tensor, what: str) -> torch.Tensor:
    """Data must be (N, *shape) floating point (or int64/int32 token ids) with N >= 1 (1-D data is almost always a missing
    feature axis, so it is refused rather than guessed)."""
    if x.dim() < 2:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected (N, *shape) with at least 2 dims "
                         "(reshape 1-D data to (N, 1))")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")
    if not x.is_floating_point() and x.dtype not in TOKEN_DTYPES:
        raise ValueError(f"{what} holds {x.dtype} values; expected floating point (convert with .float()) "
                         "or int64/int32 token ids (for a categorical objective)")
    return x


def _as_batch(batch, name: str) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]  # (x, label): the trainer needs x
    if isinstance(batch, np.ndarray):
        batch = torch.as_tensor(batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{name} yielded a {type(batch).__name__}; expected (B, *shape) tensors "
                        "or (x, label) tuples/lists of them")
    return _check_data(batch, f"a batch of {name}")


class SamplerSource:
    """A callable ``sample(n, generator) -> (n, *shape)`` (e.g. :mod:`flowfast.data` samplers)."""

    kind = "sampler"

    def __init__(self, fn: Callable, name: str) -> None:
        self.fn, self.name = fn, name

    def draw(self, n_or_batch, generator: torch.Generator) -> torch.Tensor:
        n = _rows(n_or_batch)
        x = self.fn(n, generator)
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != n:
            raise ValueError(f"a sampler returned {type(x).__name__} "
                             f"{tuple(getattr(x, 'shape', ()))}; expected a ({n}, ...) tensor")
        return x

    sample = draw

    def item_shape(self) -> tuple:
        return tuple(self.draw(1, torch.Generator().manual_seed(0)).shape[1:])

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)


class NoiseSource:
    """Standard normal x0 shaped like the x1 batch (``source=None``), drawn from the given generator
    in float64 for float64 models, else float32."""

    kind, name = "noise", "source"

    def __init__(self, item_shape: Callable[[], tuple], dtype: torch.dtype,
                 source_shape: Optional[Callable[[tuple], tuple]] = None) -> None:
        self._item_shape, self._shape = item_shape, None
        self._source_shape = source_shape if source_shape is not None else tuple
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def item_shape(self) -> tuple:
        if self._shape is None:
            self._shape = tuple(self._source_shape(tuple(self._item_shape())))
        return self._shape

    def draw(self, n_or_batch, generator: torch.Generator) -> torch.Tensor:
        if isinstance(n_or_batch, torch.Tensor):
            shape = (n_or_batch.shape[0], *self._source_shape(tuple(n_or_batch.shape[1:])))
        else:
            shape = (int(n_or_batch), *self.item_shape())
        return torch.randn(shape, generator=generator, dtype=self.dtype)

    sample = draw

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)


class TensorSource:
    """A ``(N, *shape)`` dataset in memory (CPU or GPU), read in shuffled epochs (module docstring)."""

    kind = "tensor"

    def __init__(self, data, name: str, batch_size: int, seed: int, world: World = World()) -> None:
        if isinstance(data, np.ndarray):
            if data.dtype.kind not in "fiub":
                raise ValueError(f"{name} is a numpy array of {data.dtype}; expected numbers")
            data = torch.tensor(data)  # a copy: from_numpy would share (and warn about) read-only arrays
            if not data.is_floating_point():
                data = data.float()  # as load_array does for integer files
        self.data = _check_data(data, name)
        if self.data.is_floating_point() and not bool(torch.isfinite(self.data).all()):  # once, here: a NaN row would poison every epoch
            bad = int((~torch.isfinite(self.data)).flatten(1).any(1).sum())
            raise ValueError(f"{name} has {bad} row(s) with NaN/Inf values; clean the dataset first")
        self.name, self.seed, self.world = name, seed, world
        self.rows = data.shape[0]
        if self.rows < batch_size * world.size:
            per = f"batch_size {batch_size}" + (f" x {world.size} ranks" if world.size > 1 else "")
            raise ValueError(f"{name} has {self.rows} rows, fewer than one batch ({per})")
        self.epoch, self.index = 0, 0  # index: rows of this epoch's permutation already used (all ranks)
        self._perm: Optional[tuple[int, torch.Tensor]] = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, f"data/epoch{self.epoch}"))
            self._perm = (self.epoch, torch.randperm(self.rows, generator=g))
        return self._perm[1]

    def draw(self, n_or_batch, generator: torch.Generator) -> torch.Tensor:
        n = _rows(n_or_batch)
        step_rows = n * self.world.size
        if self.index + step_rows > self.rows:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index + self.world.rank * n
        rows = self._permutation()[start:start + n]
        self.index += step_rows
        return self.data[rows.to(self.data.device)]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """min(n, N) distinct rows chosen by ``generator``."""
        rows = torch.randperm(self.rows, generator=generator)[:n]
        return self.data[rows.to(self.data.device)]

    def item_shape(self) -> tuple:
        return tuple(self.data.shape[1:])

    def state_dict(self) -> dict:
        return {"kind": self.kind, "rows": self.rows, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)
        if int(state["rows"]) != self.rows:
            raise ValueError(f"the checkpoint's data position is for {int(state['rows'])} rows, {self.name} "
                             f"has {self.rows}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def _loader_generators(loader) -> list[torch.Generator]:
    """The distinct torch.Generators that decide a DataLoader pass (its own and its sampler's)."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for holder in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _epoch_samplers(loader) -> list:
    """Samplers with ``set_epoch`` (DistributedSampler and the like), each once."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    found: list = []
    for s in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if callable(getattr(s, "set_epoch", None)) and all(s is not h for h in found):
            found.append(s)
    return found


class IterableSource:
    """Batches from a re-iterable (a DataLoader, a list of tensors, ...); see the module docstring."""

    kind = "iterable"

    def __init__(self, iterable, name: str) -> None:
        if isinstance(iterable, collections.abc.Iterator):
            raise TypeError(f"{name} is a one-shot iterator ({type(iterable).__name__}); pass a re-iterable "
                            "(a list of batches, a DataLoader, or an object whose __iter__ starts a new pass)")
        self.iterable, self.name = iterable, name
        self._generators = _loader_generators(iterable)
        self.epoch, self.consumed = 0, 0
        self._epoch_states: Optional[list[torch.Tensor]] = None  # the generators at this epoch's start
        self._restore = False
        self._it = None
        self._shape: Optional[tuple] = None

    def _start_epoch(self) -> None:
        if self._restore and self._epoch_states is not None:
            for g, s in zip(self._generators, self._epoch_states):
                g.set_state(s)
        else:
            self._epoch_states = [g.get_state() for g in self._generators]
        self._restore = False
        for sampler in _epoch_samplers(self.iterable):
            sampler.set_epoch(self.epoch)
        self._it = iter(self.iterable)

    def draw(self, n_or_batch, generator: torch.Generator) -> torch.Tensor:
        if self._it is None:
            self._start_epoch()
            for used in range(self.consumed):  # resuming: skip what the run already trained on
                if next(self._it, _END) is _END:
                    raise ValueError(f"resuming needs batch {self.consumed + 1} of epoch {self.epoch} of {self.name}, "
                                     f"but the pass ends after {used}: the data changed since the checkpoint")
        batch = next(self._it, _END)
        if batch is _END:
            if self.consumed == 0:
                raise ValueError(f"{self.name} yielded no batches")
            self.epoch, self.consumed = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._it, _END)
            if batch is _END:
                raise ValueError(f"{self.name} yielded no batches in epoch {self.epoch}")
        self.consumed += 1
        return _as_batch(batch, self.name)

    @contextlib.contextmanager
    def _side_pass(self):
        """A separate pass (evaluation, a peek at the shape) that leaves the training position alone."""
        states = [g.get_state() for g in self._generators]
        try:
            yield iter(self.iterable)
        finally:
            for g, s in zip(self._generators, states):
                g.set_state(s)
            if getattr(self.iterable, "persistent_workers", False) and self._it is not None:
                # a persistent-worker DataLoader hands out one iterator and resets it: re-create ours
                self._it, self._restore = None, True

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The first batches of a fresh pass, concatenated, cut to n rows (fewer if the pass is shorter)."""
        parts, rows = [], 0
        with self._side_pass() as it:
            for batch in it:
                parts.append(_as_batch(batch, self.name))
                rows += parts[-1].shape[0]
                if rows >= n:
                    break
        if not parts:
            raise ValueError(f"{self.name} yielded no batches")
        return torch.cat(parts)[:n]

    def item_shape(self) -> tuple:
        if self._shape is None:
            self._shape = tuple(self.sample(1, torch.Generator()).shape[1:])
        return self._shape

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epoch": self.epoch, "consumed": self.consumed,
                "generators": None if self._epoch_states is None else list(self._epoch_states)}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)
        states = state.get("generators")
        if states is not None and len(states) != len(self._generators):
            raise ValueError(f"the checkpoint's data position holds {len(states)} generator state(s), "
                             f"{self.name} has {len(self._generators)} generator(s)")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._epoch_states, self._restore, self._it = states, True, None


def _check_kind(source, state: dict) -> None:
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind != source.kind:
        raise ValueError(f"the checkpoint's data position is for a {kind} target, {source.name} is a {source.kind}")


def draw_pair(source, target, n: int, generator: torch.Generator, evaluation: bool = False):
    """One (x0, x1) batch: the target's ``draw`` (training) or ``sample`` (``evaluation``), and x0 to
    match. Two samplers draw x0 first, the trainer's order before data sources existed, so such runs
    keep their random streams; otherwise x1 comes first and x0 takes its size (a loader's batch, a
    dataset's rows, the noise's shape)."""
    draw_x1 = target.sample if evaluation else target.draw
    if isinstance(source, SamplerSource) and isinstance(target, SamplerSource):
        x0 = source.draw(n, generator)
        return x0, draw_x1(n, generator)
    x1 = draw_x1(n, generator)
    return source.draw(x1, generator), x1


_TARGET_KINDS = ("a callable sample(n, generator) -> (n, *shape), a (N, *shape) tensor or numpy array, "
                 "or a re-iterable / DataLoader of (B, *shape) batches")


def as_target(target, *, batch_size: int, seed: int, world: World = World(), name: str = "target"):
    """Wrap ``target`` (x1, data) in its source class; a TypeError for anything else."""
    if isinstance(target, (torch.Tensor, np.ndarray)):
        return TensorSource(target, name, batch_size, seed, world)
    if isinstance(target, (str, bytes)) or target is None:
        raise TypeError(f"{name} must be {_TARGET_KINDS}; got {type(target).__name__}")
    if callable(target):
        return SamplerSource(target, name)
    if isinstance(target, collections.abc.Iterable):
        return IterableSource(target, name)
    raise TypeError(f"{name} must be {_TARGET_KINDS}; got {type(target).__name__}")


def as_source(source, *, item_shape: Callable[[], tuple], dtype: torch.dtype, name: str = "source",
              source_shape: Optional[Callable[[tuple], tuple]] = None):
    """Wrap ``source`` (x0): a sampler callable, or None for standard normal noise like x1 (of shape
    ``source_shape(x1's item shape)`` when given: token ids (L,) -> noise (L, V))."""
    if source is None:
        return NoiseSource(item_shape, dtype, source_shape)
    if callable(source) and not isinstance(source, (str, bytes)):
        return SamplerSource(source, name)
    raise TypeError(f"{name} must be a callable sample(n, generator) -> (n, *shape), or None for standard "
                    f"normal noise shaped like the data; got {type(source).__name__}")


def load_array(path) -> torch.Tensor:
    """A dataset from a file: ``.npy`` (``numpy.save``) or ``.pt`` (``torch.save(tensor, path)``).

    Integer and boolean values become float32; floating dtypes are kept (the trainer casts to the
    model's dtype). Errors: FileNotFoundError for a missing file, ValueError for another extension,
    an unreadable file, something other than one array, non-numeric or complex values, no rows.

    Returns:
        a CPU tensor ``(N, *shape)``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no data file at {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".pt", ".pth"):
        raise ValueError(f"{path}: a data file must be .npy (numpy.save) or .pt (torch.save of a tensor)")
    try:
        if ext == ".npy":
            loaded = np.load(path, allow_pickle=False)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, pickled objects: one clear message
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{path} is not a readable {ext} file ({type(exc).__name__}: {first})") from None
    if isinstance(loaded, np.ndarray):
        if loaded.dtype.kind not in "fiub":
            raise ValueError(f"{path} holds {loaded.dtype} values; expected numbers")
        loaded = torch.from_numpy(loaded)
    if not isinstance(loaded, torch.Tensor):
        raise ValueError(f"{path} holds a {type(loaded).__name__}; expected one array or tensor")
    if loaded.is_complex():
        raise ValueError(f"{path} holds complex values ({loaded.dtype}); expected real numbers")
    x = loaded if loaded.is_floating_point() else loaded.float()
    if x.dim() == 0 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{path} holds no rows (shape {tuple(x.shape)})")
    return x
