r"""A flow map known in closed form, for tests and sanity checks of the objectives.

Source :math:`x_0 \sim N(0, I)`, data :math:`x_1 \sim N(m, \sigma_1^2 I)`, independent coupling and the
straight interpolant :math:`I_t = (1-t)x_0 + t x_1` without noise. The marginals are Gaussian,
:math:`I_t \sim N(\mu_t, \sigma_t^2 I)` with :math:`\mu_t = t m` and
:math:`\sigma_t^2 = (1-t)^2 + t^2\sigma_1^2`, and the probability-flow ODE is affine, so its flow map is

.. math:: X_{s,t}(x) = \mu_t + \frac{\sigma_t}{\sigma_s}(x - \mu_s),\qquad
          v_{s,t}(x) = m + \frac{\sigma_t - \sigma_s}{(t-s)\,\sigma_s}(x - \mu_s),

where :math:`(\sigma_t - \sigma_s)/(t-s) = ((t+s-2) + (t+s)\sigma_1^2)/(\sigma_t + \sigma_s)` has no
0/0 on the diagonal (there it is :math:`\dot\sigma_s`, the tangent condition).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GaussianFlowMapNet", "gaussian_fm_minimum"]


class GaussianFlowMapNet(nn.Module):
    r"""``net(x, s, t)`` = the exact :math:`v_{s,t}` above, plus an optional perturbation
    ``perturbation * x`` (a parameter, so the objectives' gradients can be inspected).

    Args:
        mean: m, a ``(dim,)`` tensor.
        scale: :math:`\sigma_1 > 0`.
        perturbation: initial value of the perturbation parameter (0 = the exact map).
    """

    def __init__(self, mean: torch.Tensor, scale: float, perturbation: float = 0.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.register_buffer("mean", torch.as_tensor(mean).clone())
        self.scale = float(scale)
        self.perturbation = nn.Parameter(torch.tensor(float(perturbation), dtype=self.mean.dtype))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((1 - t) ** 2 + t**2 * self.scale**2)

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = s[:, None], t[:, None]
        sigma_s, sigma_t = self.sigma(s), self.sigma(t)
        slope = ((t + s - 2) + (t + s) * self.scale**2) / ((sigma_t + sigma_s) * sigma_s)
        return self.mean + slope * (x - s * self.mean) + self.perturbation * x

    def source(self, n: int, generator=None) -> torch.Tensor:
        return torch.randn(n, self.mean.shape[0], generator=generator, dtype=self.mean.dtype)

    def target(self, n: int, generator=None) -> torch.Tensor:
        return self.mean + self.scale * torch.randn(n, self.mean.shape[0], generator=generator, dtype=self.mean.dtype)


def gaussian_fm_minimum(scale: float, t: torch.Tensor) -> torch.Tensor:
    r"""The minimum of the diagonal flow-matching loss per entry at time t for the setup above,
    :math:`\mathrm{Var}(\dot I_t \mid I_t) = 1 + \sigma_1^2 - (t\sigma_1^2 - (1-t))^2 / \sigma_t^2`."""
    var_t = (1 - t) ** 2 + t**2 * scale**2
    return 1 + scale**2 - (t * scale**2 - (1 - t)) ** 2 / var_t
