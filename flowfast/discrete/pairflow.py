"""PairFlow (Park et al., 2025): source tokens paired with every training sequence by the
closed-form inversion of a uniform-source discrete flow model over the empirical data
distribution, so a DFM trained on the pairs learns straighter, few-step paths.

Conventions: t runs from 0 (uniform source) to 1 (data), kappa_t = t; the inversion walks each
training sequence from t = 1 back to t = 0 in ``steps`` steps of the exact time-reversed CTMC.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowfast._interop import accepts_arrays
from flowfast._rng import check_generator, draw_seed
from flowfast.categorical._tokens import check_int
from flowfast.ops import _switch
from flowfast.ops import dfm as dfm_ops

__all__ = ["hamming_distance", "pairflow_pairs", "uniform_source"]


# Queries per kernel call when batch_size is None: the CUDA kernel spreads queries (not keys) over
# blocks, 64 queries per block for short sequences, so a GPU needs tens of thousands in flight.
DEFAULT_BATCH = {"cpu": 1024, "cuda": 32768}


@accepts_arrays("data")
def pairflow_pairs(data, vocab_size: int, steps: int = 20, tau: float = 1.0, batch_size: Optional[int] = None,
                   generator: Optional[torch.Generator] = None, backend: str = "auto") -> torch.Tensor:
    """Source tokens x0 paired with each training sequence x1 (PairFlow's inversion).

    Args:
        data: (N, D) integer tokens in [0, vocab_size): the whole training set (a torch tensor or
            another library's array: numpy, cupy, JAX, DLPack; the pairs come back in it). Every sequence is
            inverted against all of them (itself included), so N is the posterior's support.
        vocab_size: V, the model's vocabulary (never inferred from the data: ids that never occur
            still belong to the uniform source).
        steps: K backward steps t = 1, (K-1)/K, ..., 1/K of size 1/K.
        tau: temperature of the jump odds; 1 is the exact time reversal (x0 marginals uniform),
            below 1 keeps more tokens, above 1 tends to the independent coupling.
        batch_size: queries per kernel call (memory O(batch_size * D + N * W)); None: 1024 on the
            CPU, 32768 on CUDA (enough blocks to fill a GPU). The result does not depend on it.
        generator: torch generator the Philox stream is drawn from (reproducible pairs).
        backend: "auto" | "cpu" | "cuda" | "torch" (the reference; materialises B x N).

    Returns:
        (N, D) source tokens of data's dtype and device.
    """
    dfm_ops.check_vocab(vocab_size)
    check_int("steps", steps, 1)
    check_generator(generator)
    data = dfm_ops.validate_tokens("data", data, vocab_size)
    impl, run_device = _switch.resolve(backend, data.device, what="data")
    tokens = data if impl == "torch" else data.to(run_device)  # keys and queries stay where the kernels run
    if batch_size is None:
        batch_size = DEFAULT_BATCH.get(tokens.device.type, 1024)
    check_int("batch_size", batch_size, 1)
    keys = dfm_ops.pack_tokens(tokens, vocab_size, backend=backend, validate=False)
    seed, offset = draw_seed(generator, count=steps)
    h = 1.0 / steps
    sources = []
    for start in range(0, tokens.shape[0], batch_size):
        x = tokens[start:start + batch_size]
        for k in range(steps, 0, -1):
            x = dfm_ops.inversion_step(keys, x, vocab_size, k / steps, h, tau=tau, seed=seed, offset=offset + steps - k,
                                       row_offset=start, backend=backend, validate=False)[0]
        sources.append(x)
    return torch.cat(sources).to(device=data.device, dtype=data.dtype)


def uniform_source(shape, vocab_size: int, generator: Optional[torch.Generator] = None,
                   device=None, dtype=torch.int64) -> torch.Tensor:
    """Independent uniform source tokens (the independent coupling's x0)."""
    dfm_ops.check_vocab(vocab_size)
    return torch.randint(0, vocab_size, tuple(shape), generator=generator, device=device, dtype=dtype)


def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) number of positions where the (N, D) token tensors differ."""
    if a.shape != b.shape:
        raise ValueError(f"hamming_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a != b).sum(-1)
