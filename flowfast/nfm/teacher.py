"""A trained TarFlow from its checkpoint (``python -m flowfast train-nf``), and the NFM coupling
built on it for a training set."""

from __future__ import annotations

from typing import Optional

import torch

from flowfast.nfm.coupling import NFMCoupling
from flowfast.nfm.tarflow import TarFlow

__all__ = ["LazyNFMCoupling", "load_flow", "nfm_coupling", "SCALE_SAMPLES"]

#: rows drawn from a sampler target to estimate sigma_f (a dataset uses all its rows)
SCALE_SAMPLES = 20000


def load_flow(path: str, device="cpu") -> tuple[TarFlow, float]:
    """``(flow, eta)``: the frozen flow of a ``train-nf`` checkpoint (its EMA weights when kept) and
    the noise augmentation it was trained with."""
    from flowfast.train.checkpoint import require_checkpoint

    state = require_checkpoint(path)
    cfg = state.get("config") or {}
    if cfg.get("method") != "tarflow":
        raise ValueError(f"{path} is not a TarFlow checkpoint (its method is {cfg.get('method')!r}); train the "
                         "teacher with `python -m flowfast train-nf`")
    try:  # the flow from its own config and weights: the teacher's training data is not needed
        flow = TarFlow(**cfg["model"])
        flow.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: the TarFlow in this checkpoint cannot be rebuilt ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return flow.to(device).requires_grad_(False).eval(), float(cfg.get("eta", 0.05))


def nfm_coupling(teacher: str, data: torch.Tensor, *, device="cpu", eta: Optional[float] = None,
                 draws: Optional[int] = None, seed: int = 0) -> NFMCoupling:
    """An :class:`NFMCoupling` on the flow of checkpoint ``teacher``: ``eta`` (default: the teacher's),
    ``sigma_f`` fitted on ``data`` ``(N, *shape)`` (the training set as the trainer sees it) with a
    generator seeded by ``seed``; ``draws``: cache that many encodings per row of ``data``."""
    return _build(teacher, data, device=device, eta=eta, draws=draws, seed=seed)


def _build(teacher: str, data: torch.Tensor, *, device, eta: Optional[float], draws: Optional[int], seed: int,
           sigma_f: Optional[float] = None) -> NFMCoupling:
    flow, trained_eta = load_flow(teacher, device)
    data = data.to(device)
    if data.dtype != flow.blocks[0].position.dtype:
        flow = flow.to(data.dtype)
    coupling = NFMCoupling(flow, trained_eta if eta is None else eta, sigma_f=sigma_f)
    if coupling.sigma_f is None:
        coupling.fit_scale(data, torch.Generator(device=data.device).manual_seed(seed))
    if draws is not None:
        coupling.cache(data, draws, seed=seed)
    return coupling


class LazyNFMCoupling:
    """The NFM coupling of a run rebuilt from its config, loaded at its first pairing: evaluating or
    sampling a trained student never needs its teacher (which may have moved), and a restored state
    (``load_state_dict`` before the first call) gives sigma_f without refitting it.

    ``rows()`` returns the training set as the trainer sees it (``sigma_f`` is fitted on it when the
    state has none; with ``draws``, the cache covers it)."""

    def __init__(self, teacher: str, rows, *, device="cpu", draws: Optional[int] = None, seed: int = 0) -> None:
        self.teacher, self.rows, self.device, self.draws, self.seed = teacher, rows, device, draws, seed
        self._coupling: Optional[NFMCoupling] = None
        self._pending: dict = {}

    @property
    def coupling(self) -> NFMCoupling:
        if self._coupling is None:
            coupling = _build(self.teacher, self.rows(), device=self.device, eta=None, draws=self.draws,
                              seed=self.seed, sigma_f=self._pending.get("sigma_f"))
            if self._pending:
                coupling.load_state_dict(self._pending)
            self._coupling = coupling
        return self._coupling

    def __call__(self, x0, x1, generator=None):
        return self.coupling(x0, x1, generator)

    def state_dict(self) -> dict:
        return self._pending if self._coupling is None else self._coupling.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._coupling is None:
            if not isinstance(state, dict) or "sigma_f" not in state:
                raise ValueError("not an NFMCoupling state (no 'sigma_f')")
            self._pending = dict(state)
        else:
            self._coupling.load_state_dict(state)

    def __repr__(self) -> str:
        return f"LazyNFMCoupling(teacher={self.teacher!r}, loaded={self._coupling is not None})"
