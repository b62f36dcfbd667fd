r"""NFM couplings (Berthelot et al. 2026, "The Coupling Within"): a trained normalizing flow pairs
each data sample with its own noise.

For data x (flowfast's x1, t = 1) the paired source (x0, t = 0) is

.. math:: z = f_{NF}(x + \eta\,\varepsilon') / \sigma_f,\qquad \varepsilon' \sim N(0, I),
          \qquad \sigma_f^2 = E\,[f_{NF}(x + \eta\varepsilon')^2]

with ``f_NF`` the flow's data-to-noise map (one parallel pass) and ``sigma_f`` one global scalar
estimated once from the training data (:meth:`NFMCoupling.fit_scale`) and stored. Time convention:
the paper puts data at t = 0 and writes x_t = (1 - t) x + t z; flowfast keeps data at t = 1, so
flowfast's path at t is the paper's at 1 - t and the learned velocity is the paper's negated. The
student samples from N(0, I) at t = 0 to data at t = 1 like any flowfast velocity model.

The coupling ignores the trainer's independent noise x0 and returns ``(z, x1)``; it is a
:class:`flowfast.couplings.Coupling`, so every path of :mod:`flowfast.paths` and the trainer use it
unchanged: ``IndependentCFM(sigma=0.0, coupling=NFMCoupling(flow, eta))``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from flowfast._rng import check_generator, generator_device
from flowfast.train.distributed import derive_seed
from flowfast._validate import check_finite
from flowfast.nfm.objective import check_eta
from flowfast.nfm.tarflow import TarFlow
from flowfast.train._checks import check_int

__all__ = ["NFMCoupling"]

_WORDS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class _RowIndex:
    """Finds batch rows in a fixed dataset by their bits (a 64-bit mixing hash, then an exact
    comparison): row i of the dataset -> i, any other row -> -1. Lets the coupling cache per data
    sample whatever batches the trainer draws (shuffled epochs, a loader over the same data)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data.flatten(1).contiguous()
        g = torch.Generator().manual_seed(0x5EED)
        self.multipliers = (torch.randint(-2**62, 2**62, (self.data.shape[1],), generator=g) | 1).to(data.device)
        self.sorted_keys, self.order = self._keys(self.data).sort()

    def _keys(self, rows: torch.Tensor) -> torch.Tensor:
        words = rows.view(_WORDS[rows.element_size()]).to(torch.int64)
        return (words * self.multipliers).sum(1)  # int64 arithmetic wraps: a hash, exactness comes next

    def lookup(self, batch: torch.Tensor) -> torch.Tensor:
        rows = batch.flatten(1).contiguous()
        keys = self._keys(rows)
        at = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        candidate = self.order[at]
        found = (self.sorted_keys[at] == keys) & (self.data[candidate] == rows).all(1)
        return torch.where(found, candidate, torch.full_like(candidate, -1))


class NFMCoupling:
    """Pairs data with the flow's own noise (module docstring).

    Args:
        flow: a trained :class:`~flowfast.nfm.TarFlow` (frozen here: eval mode, no gradients).
        eta: the noise added before encoding (the flow's training ``eta``, the paper's choice).
        sigma_f: the global scale; None: call :meth:`fit_scale` on the training data before use.

    ``coupling(x0, x1, generator) -> (z, x1)``, z shaped and typed like x1 (x0 only gives the
    batch size). :meth:`cache` encodes each training sample ``draws`` times up front, keyed by
    (row, draw): the teacher then runs once per (sample, eps' draw) instead of every step.
    """

    def __init__(self, flow: TarFlow, eta: float = 0.05, sigma_f: Optional[float] = None) -> None:
        if not isinstance(flow, TarFlow):
            raise TypeError(f"flow must be a flowfast.nfm.TarFlow, got {type(flow).__name__}")
        self.flow = flow.requires_grad_(False).eval()
        self._teacher_digest = self._digest(flow)  # frozen here: computed once, not at every checkpoint
        self.eta = check_eta(eta)
        self.sigma_f = None if sigma_f is None else self._check_scale(sigma_f)
        self.draws, self.cache_seed = 0, None
        self._index: Optional[_RowIndex] = None
        self._data: Optional[torch.Tensor] = None
        self._table: Optional[torch.Tensor] = None

    @staticmethod
    def _check_scale(sigma_f) -> float:
        if isinstance(sigma_f, bool) or not isinstance(sigma_f, (int, float)) or not (math.isfinite(sigma_f) and sigma_f > 0):
            raise ValueError(f"sigma_f must be a finite number > 0, got {sigma_f!r}")
        return float(sigma_f)

    # --- the flow -----------------------------------------------------------------------------------
    @property
    def _weights(self) -> torch.Tensor:
        return self.flow.blocks[0].position

    def _check_batch(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if tuple(x.shape[1:]) != self.flow.sample_shape or x.dim() != len(self.flow.sample_shape) + 1:
            raise ValueError(f"{name} must be (B, {', '.join(map(str, self.flow.sample_shape))}) (the teacher's sample "
                             f"shape), got {tuple(x.shape)}")
        if x.shape[0]:
            check_finite(name, x)
        return x

    @torch.no_grad()
    def _raw(self, x1: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f_NF(x1 + eta * noise), unscaled, in x1's dtype and on its device."""
        if self._weights.device != x1.device:
            self.flow.to(x1.device)
        dtype = self._weights.dtype
        z, _ = self.flow.forward_checked((x1 + self.eta * noise).to(dtype))  # x1 was checked by the caller
        return z.to(x1.dtype)

    def _noise(self, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return torch.randn(like.shape, generator=check_generator(generator), dtype=like.dtype, device=like.device)

    # --- the scale --------------------------------------------------------------------------------
    def fit_scale(self, data: torch.Tensor, generator: Optional[torch.Generator] = None,
                  batch_size: int = 4096) -> float:
        """Sets and returns ``sigma_f = sqrt(mean(f_NF(x + eta eps')^2))`` over ``data`` ``(N, *shape)``."""
        data = self._check_batch(data, "data")
        check_int("batch_size", batch_size, 1)
        if data.shape[0] == 0:
            raise ValueError("fit_scale needs at least one data row")
        total, count = 0.0, 0
        for start in range(0, data.shape[0], batch_size):
            rows = data[start:start + batch_size]
            z = self._raw(rows, self._noise(rows, generator)).double()
            total, count = total + float(z.pow(2).sum()), count + z.numel()
        self.sigma_f = self._check_scale(math.sqrt(total / count))
        return self.sigma_f

    def _scale(self) -> float:
        if self.sigma_f is None:
            raise ValueError("NFMCoupling has no sigma_f yet: call coupling.fit_scale(training_data) once "
                             "(or pass sigma_f=)")
        return self.sigma_f

    # --- the cache --------------------------------------------------------------------------------
    def cache(self, data: torch.Tensor, draws: int = 4, seed: int = 0, batch_size: int = 4096) -> "NFMCoupling":
        """Encode every row of ``data`` (the training set as the trainer sees it: same dtype and device)
        ``draws`` times now, eps' of (row, draw) drawn from a generator seeded by (seed, draw): the
        teacher runs once per (sample, draw), and the table is the same on every rank and after a
        resume (so checkpoints store only its fingerprint). A batch row found in ``data`` then uses
        one of its encodings, the draw chosen by the generator; other rows are encoded afresh."""
        check_int("draws", draws, 1)
        check_int("batch_size", batch_size, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        data = self._check_batch(data, "data")
        if data.shape[0] == 0:
            raise ValueError("cache needs at least one data row")
        table = torch.empty((draws, *data.shape), dtype=data.dtype, device=data.device)
        for draw in range(draws):
            g = torch.Generator().manual_seed(derive_seed(seed, f"nfm/draw{draw}"))
            for start in range(0, data.shape[0], batch_size):
                rows = data[start:start + batch_size]
                noise = torch.randn(rows.shape, generator=g, dtype=rows.dtype).to(rows.device)
                table[draw, start:start + batch_size] = self._raw(rows, noise)
        self.draws, self.cache_seed, self._data, self._index, self._table = draws, seed, data, _RowIndex(data), table
        return self

    def _cached_encode(self, x1: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if x1.dtype != self._data.dtype or x1.device != self._data.device:
            raise ValueError(f"the cache holds {self._data.dtype} rows on {self._data.device}, the batch is {x1.dtype} "
                             f"on {x1.device}: call cache() with the data as the trainer sees it")
        rows = self._index.lookup(x1)
        draw = torch.randint(self.draws, (x1.shape[0],), generator=check_generator(generator),
                             device=generator_device(generator)).to(x1.device)
        known = rows >= 0
        z = self._table[draw, rows.clamp(min=0)]
        fresh = ~known
        if bool(fresh.any()):
            z[fresh] = self._raw(x1[fresh], self._noise(x1[fresh], generator))
        return z

    def fingerprint(self) -> dict:
        """What the coupling's pairs depend on: the teacher's weights and (with a cache) the cached
        data and its draws, as digests stored in checkpoints and compared on restore."""
        found = {"teacher": self._teacher_digest}
        if self._index is not None:
            keys = self._index.sorted_keys.cpu()
            found.update(rows=int(keys.numel()), data=int((keys * (torch.arange(keys.numel()) | 1)).sum()),
                         draws=self.draws, cache_seed=self.cache_seed)
        return found

    @staticmethod
    def _digest(flow: TarFlow) -> float:
        weights = torch.cat([p.detach().double().flatten().cpu() for p in flow.state_dict().values()
                             if p.is_floating_point()])
        return float((weights * torch.linspace(1.0, 2.0, weights.numel(), dtype=torch.float64)).sum())

    # --- the coupling -------------------------------------------------------------------------------
    def encode(self, x1: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``z = f_NF(x1 + eta eps') / sigma_f`` for a data batch ``(B, *shape)`` (the cache's when set)."""
        x1 = self._check_batch(x1, "x1")
        scale = self._scale()
        if x1.shape[0] == 0:
            return x1.clone()
        z = self._cached_encode(x1, generator) if self._index is not None else self._raw(x1, self._noise(x1, generator))
        return z / scale

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(x0, torch.Tensor) and x0.shape[:1] != x1.shape[:1]:
            raise ValueError(f"x0 and x1 must have the same batch size, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        return self.encode(x1, generator), x1

    # --- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``sigma_f``, ``eta`` and the :meth:`fingerprint` (the cache is rebuilt by :meth:`cache`, the
        teacher's weights live in its own checkpoint)."""
        return {"sigma_f": self.sigma_f, "eta": self.eta, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "sigma_f" not in state:
            raise ValueError("not an NFMCoupling state (no 'sigma_f')")
        if state.get("eta") is not None and float(state["eta"]) != self.eta:
            raise ValueError(f"the state was saved with eta={state['eta']}, this coupling has eta={self.eta}")
        saved, now = state.get("fingerprint") or {}, self.fingerprint()
        changed = [key for key in saved if saved[key] != now.get(key)]
        if changed:
            what = {"teacher": "the teacher's weights", "rows": "the cached data", "data": "the cached data",
                    "draws": "the cache's draws", "cache_seed": "the cache's seed"}
            raise ValueError("the saved NFM coupling was made with other " + " and ".join(dict.fromkeys(
                what[k] for k in changed)) + ": its sigma_f and pairs do not belong to this run (train into a new "
                "folder, or restore the teacher / data it was made with)")
        self.sigma_f = None if state["sigma_f"] is None else self._check_scale(float(state["sigma_f"]))

    def __repr__(self) -> str:
        return f"NFMCoupling(eta={self.eta}, sigma_f={self.sigma_f}, draws={self.draws})"
