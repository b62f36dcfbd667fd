r"""TarFlow: a transformer autoregressive normalizing flow (Zhai et al. 2024), small and written for
flowfast, the teacher of NFM couplings (:mod:`flowfast.nfm.coupling`).

Data direction x -> z (density evaluation, NFM pairing) is one parallel masked-transformer pass per
block; z -> x (sampling) is sequential over tokens with a key/value cache.

Layout. A sample of ``sample_shape`` becomes ``T`` tokens of ``D`` numbers: an image ``(C, H, W)``
is cut into ``p x p`` patches (``T = HW / p^2``, ``D = C p^2``); a vector ``(d,)`` into
``d / token_dim`` tokens of ``token_dim`` (a 2D toy: 2 tokens of 1). ``K`` affine blocks follow,
the token order alternating identity / reversed. In block k, with tokens in its order,

.. math:: z_i = (x_i - b_i)\,e^{-a_i},\qquad (a_i, b_i) = g_k(x_{<i}),\quad (a_0, b_0) = 0,

``g_k`` a causal pre-LN transformer whose outputs are shifted right by one token, its output
projection zero-initialised (every block starts as the identity). log|det dz/dx| = -sum a.
The prior is N(0, I): ``log p(x) = -|z|^2 / 2 - (n/2) log 2 pi + sum_k logdet_k``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flowfast._validate import check_finite
from flowfast.train._checks import check_int

__all__ = ["TarFlow"]


class _Tokenizer:
    """``(B, *sample_shape)`` <-> ``(B, T, D)`` (module docstring)."""

    def __init__(self, sample_shape: Sequence[int], patch: Optional[int], token_dim: Optional[int]) -> None:
        shape = tuple(sample_shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"sample_shape must be (d,) or (C, H, W) positive ints, got {sample_shape!r}")
        self.shape = shape
        if len(shape) == 1:
            if patch is not None:
                raise ValueError("patch is for image samples (C, H, W); vectors are cut by token_dim")
            width = 1 if token_dim is None else check_int("token_dim", token_dim, 1)
            if shape[0] % width:
                raise ValueError(f"token_dim {width} does not divide the sample size {shape[0]}")
            self.patch, self.tokens, self.dim = None, shape[0] // width, width
        elif len(shape) == 3:
            if token_dim is not None:
                raise ValueError("token_dim is for vector samples (d,); images are cut into patch x patch patches")
            p = 4 if patch is None else check_int("patch", patch, 1)
            channels, height, width = shape
            if height % p or width % p:
                raise ValueError(f"image size {height}x{width} is not divisible by the patch size {p}")
            self.patch, self.tokens, self.dim = p, (height // p) * (width // p), channels * p * p
        else:
            raise ValueError(f"sample_shape must be (d,) for vectors or (C, H, W) for images, got {shape}")
        if self.tokens < 2:
            raise ValueError(f"a {shape} sample makes {self.tokens} token; TarFlow needs >= 2 tokens (token 0 is "
                             "passed through by every block): use a smaller token_dim or patch")

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            return x.reshape(x.shape[0], self.tokens, self.dim)
        p = self.patch
        return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            return tokens.reshape(tokens.shape[0], *self.shape)
        p = self.patch
        return F.fold(tokens.transpose(1, 2), output_size=self.shape[1:], kernel_size=p, stride=p)


class _CausalLayer(nn.Module):
    """A pre-LN transformer layer with causal self-attention; ``cache`` (a dict) makes it consume one
    new token at a time, keeping the keys and values of the tokens before it."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
        batch, tokens, width = h.shape
        q, k, v = (part.reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
                   for part in self.qkv(self.norm_attention(h)).chunk(3, -1))
        if cache is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one new token (tokens == 1) attends to every cached one and itself
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
            attended = F.scaled_dot_product_attention(q, k, v)
        h = h + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return h + self.mlp(self.norm_mlp(h))


class _AffineBlock(nn.Module):
    """One autoregressive affine step over the tokens (in reversed order when ``reverse``)."""

    def __init__(self, tokens: int, dim: int, width: int, layers: int, heads: int, mlp_ratio: int,
                 reverse: bool) -> None:
        super().__init__()
        self.reverse = reverse
        self.proj_in = nn.Linear(dim, width)
        self.position = nn.Parameter(1e-2 * torch.randn(tokens, width))
        self.layers = nn.ModuleList(_CausalLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, 2 * dim)
        nn.init.zeros_(self.proj_out.weight)  # the block starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def _order(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1) if self.reverse else x

    def _shift_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) for every token from the hidden states of the tokens before it (token 0: zeros)."""
        out = self.proj_out(self.norm_out(h))
        out = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], 1)
        return out.chunk(2, -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logdet)``: tokens ``(B, T, D)`` -> ``(B, T, D)``, ``(B,)``."""
        x = self._order(x)
        h = self.proj_in(x) + self.position
        for layer in self.layers:
            h = layer(h)
        a, b = self._shift_params(h)
        z = (x - b) * torch.exp(-a)
        return self._order(z), -a.sum((1, 2))

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x from z, one token at a time with a key/value cache (T - 1 sequential steps)."""
        z = self._order(z)
        caches = [dict() for _ in self.layers]
        x = [z[:, 0]]
        head = self.proj_out.out_features // 2
        for i in range(z.shape[1] - 1):
            h = self.proj_in(x[i][:, None]) + self.position[i]
            for layer, cache in zip(self.layers, caches):
                h = layer(h, cache)
            a, b = self.proj_out(self.norm_out(h))[:, 0].split(head, -1)
            x.append(z[:, i + 1] * torch.exp(a) + b)
        return self._order(torch.stack(x, 1))


class TarFlow(nn.Module):
    """A TarFlow for samples of ``sample_shape`` (module docstring).

    Args:
        sample_shape: ``(d,)`` vectors or ``(C, H, W)`` images.
        patch: patch size for images (default 4; must divide H and W).
        token_dim: numbers per token for vectors (default 1; must divide d).
        width, blocks, layers, heads, mlp_ratio: transformer width, number of affine blocks (K, >= 2 so
            that every token is transformed), causal layers per block, attention heads, MLP expansion.

    ``model(x)`` returns ``(z, logdet)`` (``z`` shaped like ``x``, ``logdet`` ``(B,)``), so the module
    trains through the :class:`~flowfast.train.Trainer` (wrapped by DDP) with
    :class:`~flowfast.nfm.TarFlowObjective`.
    """

    def __init__(self, sample_shape: Sequence[int], *, patch: Optional[int] = None, token_dim: Optional[int] = None,
                 width: int = 64, blocks: int = 4, layers: int = 2, heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.tokenizer = _Tokenizer(sample_shape, patch, token_dim)
        for name, value in (("width", width), ("layers", layers), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            check_int(name, value, 1)
        if check_int("blocks", blocks, 1) < 2:
            raise ValueError(f"blocks must be >= 2 (token 0 passes through a block unchanged), got {blocks}")
        if width % heads:
            raise ValueError(f"heads {heads} does not divide width {width}")
        self.sample_shape = self.tokenizer.shape
        self.config = {"sample_shape": list(self.sample_shape), "patch": patch, "token_dim": token_dim,
                       "width": width, "blocks": blocks, "layers": layers, "heads": heads, "mlp_ratio": mlp_ratio}
        tokens, dim = self.tokenizer.tokens, self.tokenizer.dim
        self.blocks = nn.ModuleList(_AffineBlock(tokens, dim, width, layers, heads, mlp_ratio, reverse=k % 2 == 1)
                                    for k in range(blocks))

    @property
    def dim(self) -> int:
        """Numbers per sample (n in the log-density)."""
        return math.prod(self.sample_shape)

    def _check(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != len(self.sample_shape) + 1 or tuple(x.shape[1:]) != self.sample_shape:
            what = "(B, C, H, W) images" if len(self.sample_shape) == 3 else "(B, d) vectors"
            raise ValueError(f"{name} must be {what} of shape (B, {', '.join(map(str, self.sample_shape))}), "
                             f"got {tuple(x.shape)}")
        dtype = self.blocks[0].position.dtype
        if x.dtype != dtype:
            raise TypeError(f"{name} is {x.dtype} but the flow's weights are {dtype}: cast one to the other")
        if x.device != self.blocks[0].position.device:
            raise ValueError(f"{name} is on {x.device} but the flow is on {self.blocks[0].position.device}")
        if x.shape[0]:
            check_finite(name, x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logdet)`` of the data-to-noise map: ``(B, *sample_shape)`` -> same, ``(B,)``."""
        return self.forward_checked(self._check(x, "x"))

    def forward_checked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for a batch its caller has already validated (shape, dtype, device,
        finite): the NFM coupling's per-step pass, which checks its batch once itself."""
        tokens = self.tokenizer.to_tokens(x)
        logdet = tokens.new_zeros(tokens.shape[0])
        for block in self.blocks:
            tokens, block_logdet = block(tokens)
            logdet = logdet + block_logdet
        return self.tokenizer.from_tokens(tokens), logdet

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """The noise-to-data map (sampling): ``(B, *sample_shape)`` -> same."""
        tokens = self.tokenizer.to_tokens(self._check(z, "z"))
        for block in reversed(self.blocks):
            tokens = block.inverse(tokens)
        return self.tokenizer.from_tokens(tokens)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-density in nats under the N(0, I) prior."""
        z, logdet = self(x)
        return -0.5 * z.flatten(1).pow(2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    def denoise(self, x: torch.Tensor, eta: float) -> torch.Tensor:
        """One Tweedie step ``x + eta^2 grad log p(x)``: the flow models data blurred by N(0, eta^2 I),
        so this estimates the clean E[x | x + eta eps] (TarFlow's post-hoc denoising)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(self.log_prob(x).sum(), x)
        return (x + eta**2 * score).detach()
