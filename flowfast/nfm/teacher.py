"""A trained TarFlow from its checkpoint (``python -m flowfast train-nf``), and the NFM coupling
built on it for a training set."""

from __future__ import annotations

from typing import Optional

import torch

from flowfast.nfm.coupling import NFMCoupling
from flowfast.nfm.tarflow import TarFlow

__all__ = ["load_flow", "nfm_coupling", "SCALE_SAMPLES"]

#: rows drawn from a sampler target to estimate sigma_f (a dataset uses all its rows)
SCALE_SAMPLES = 20000


def load_flow(path: str, device="cpu") -> tuple[TarFlow, float]:
    """``(flow, eta)``: the frozen flow of a ``train-nf`` checkpoint (its EMA weights when kept) and
    the noise augmentation it was trained with."""
    from flowfast.train.checkpoint import require_checkpoint
    from flowfast.train.trainer import Trainer

    cfg = require_checkpoint(path).get("config") or {}
    if cfg.get("method") != "tarflow":
        raise ValueError(f"{path} is not a TarFlow checkpoint (its method is {cfg.get('method')!r}); train the "
                         "teacher with `python -m flowfast train-nf`")
    trainer = Trainer.from_checkpoint(path, device=device)
    flow = trainer.ema_model if trainer.ema_model is not None else trainer.model
    return flow.requires_grad_(False).eval(), float(cfg.get("eta", 0.05))


def nfm_coupling(teacher: str, data: torch.Tensor, *, device="cpu", eta: Optional[float] = None,
                 draws: Optional[int] = None, seed: int = 0) -> NFMCoupling:
    """An :class:`NFMCoupling` on the flow of checkpoint ``teacher``: ``eta`` (default: the teacher's),
    ``sigma_f`` fitted on ``data`` ``(N, *shape)`` (the training set as the trainer sees it) with a
    generator seeded by ``seed``; ``draws``: cache that many encodings per row of ``data``."""
    flow, trained_eta = load_flow(teacher, device)
    data = data.to(device)
    if data.dtype != flow.blocks[0].position.dtype:
        flow = flow.to(data.dtype)
    coupling = NFMCoupling(flow, trained_eta if eta is None else eta)
    coupling.fit_scale(data, torch.Generator(device=data.device).manual_seed(seed))
    if draws is not None:
        coupling.cache(data, draws)
    return coupling
