"""Maximum-likelihood training of a :class:`~flowfast.nfm.TarFlow` on noise-augmented data, as a
:class:`~flowfast.train.Trainer` objective (protocol in docs/architecture.md, "Trainer objectives").

The trainer's x1 batch is the data; its x0 (noise) is unused by the loss and is where sampling
starts: :meth:`TarFlowObjective.sample` maps x0 through the inverse flow (``method="inverse"``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flowfast.samplers import ODEResult

__all__ = ["TarFlowObjective", "check_eta"]


def check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta (the noise augmentation's standard deviation) must be a finite number >= 0, got {eta!r}")
    return float(eta)


def _bare(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # under DDP the flow's own methods live on .module


class TarFlowObjective:
    """Per-dimension negative log-likelihood (nats, without the constant 0.5 log 2 pi) of
    ``x1 + eta * eps'``, ``eps' ~ N(0, I)`` fresh every step.

    Args:
        eta: the noise augmentation (TarFlow's ``noise_std``; 0.05 on ImageNet-64). Also the noise
            level the NFM coupling adds before encoding (:class:`~flowfast.nfm.NFMCoupling`).
        denoise: samples get TarFlow's one-step Tweedie denoising ``x + eta^2 grad log p(x)``.
    """

    default_sampler = ("inverse", 1)

    def __init__(self, eta: float = 0.05, denoise: bool = True) -> None:
        self.eta = check_eta(eta)
        if not isinstance(denoise, bool):
            raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
        self.denoise = denoise

    def couple(self, x0: torch.Tensor, x1: torch.Tensor, generator=None):
        return x0, x1

    def loss(self, model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, generator=None) -> torch.Tensor:
        noisy = x1 + self.eta * torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
        z, logdet = model(noisy)
        return 0.5 * z.pow(2).mean() - logdet.mean() / z[0].numel()

    def sample(self, model: nn.Module, x0: torch.Tensor, *, steps=None, method="inverse", atol=None, rtol=None,
               return_path: bool = False) -> ODEResult:
        """Data from noise x0 by the inverse flow (then denoised); ``nfe`` counts the sequential
        transformer passes (blocks x (tokens - 1))."""
        if method != "inverse":
            raise ValueError(f"a TarFlow samples by its inverse: method must be 'inverse', got {method!r}")
        if return_path:
            raise ValueError("a TarFlow has no ODE path to return (return_path=True)")
        flow = _bare(model)
        x = flow.inverse(x0)
        if self.denoise and self.eta > 0:
            x = flow.denoise(x, self.eta)
        return ODEResult(x=x, nfe=len(flow.blocks) * (flow.tokenizer.tokens - 1))

    def nll(self, model: nn.Module, x: torch.Tensor) -> float:
        """Mean negative log-likelihood in nats per dimension of ``x`` (the density of the noisy data)."""
        flow = _bare(model)
        with torch.no_grad():
            return float(-flow.log_prob(x).mean() / flow.dim)
