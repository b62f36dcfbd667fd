"""Custom ops ``flowfast::dfm_pack`` / ``flowfast::dfm_inversion_step`` over the `dfm` kernel family.

Twin of csrc/include/flowfast/dfm.h. The family's validation point is :func:`validate_tokens`
(dtype, shape, the id range in one ``aminmax``: one host read) plus the scalar checks of
:func:`inversion_step`. Neither op is differentiable (integer tokens in and out).

Conventions: t runs from 0 (source) to 1 (data); one backward step goes from t to t - h.
"""

from __future__ import annotations

import math

import torch

from flowfast import _arrays
from flowfast._backend import _C
from flowfast._validate import INT_DTYPES, check_device_supported, to_tensor
from flowfast.ops import _switch

__all__ = ["MAX_VOCAB", "TOKEN_DTYPES", "check_vocab", "inversion_step", "pack_tokens", "packed_words",
           "validate_tokens"]

MAX_VOCAB = 1 << 16
TOKEN_DTYPES = INT_DTYPES
# Rows converted to int32 and packed at a time: a uint8 dataset of 10^6 x 4096 tokens never
# exists as int32 all at once.
_PACK_ROWS = 1 << 16


def check_vocab(vocab) -> int:
    if isinstance(vocab, bool) or not isinstance(vocab, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab).__name__} {vocab!r}")
    if not 2 <= vocab <= MAX_VOCAB:
        raise ValueError(f"vocab_size must lie in [2, {MAX_VOCAB}] (tokens are packed in at most 16 bits), got {vocab}")
    return vocab


def packed_words(vocab: int, length: int) -> int:
    """64-bit words per packed sequence of `length` tokens (the kernels' ff::pack_layout)."""
    return _C.dfm_pack_words(vocab, length)


def validate_tokens(name: str, tokens, vocab: int, length: int | None = None) -> torch.Tensor:
    """``tokens`` (N, D) of ids in ``[0, vocab)`` as a torch tensor (numpy arrays are wrapped).

    Raises:
        TypeError: not a tensor / array, or not an integer dtype.
        ValueError: not 2-D, empty, a length other than ``length``, or an id outside [0, vocab).
    """
    t, _ = to_tensor(name, tokens)
    check_device_supported(name, t)
    if t.dtype not in TOKEN_DTYPES:
        raise TypeError(f"{name} must hold integer token ids (uint8, int8, int16, int32 or int64), got "
                        f"{str(t.dtype).replace('torch.', '')}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be (N, D): N sequences of D tokens, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least one sequence of one token")
    if length is not None and t.shape[1] != length:
        raise ValueError(f"{name} has sequences of {t.shape[1]} tokens, expected {length} (the training set's length)")
    lo, hi = (int(v) for v in torch.stack(list(torch.aminmax(t.detach()))).tolist())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} has token id {bad}, outside [0, {vocab}) for vocab_size={vocab}")
    return t


_UINT64 = (1 << 64) - 1


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _check_time(t, h, tau) -> tuple[float, float, float]:
    values = []
    for label, value in (("t", t), ("h", h), ("tau", tau)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{label} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value}")
        values.append(float(value))
    t, h, tau = values
    if not 0 < h <= t <= 1:
        raise ValueError(f"a backward step needs 0 < h <= t <= 1, got t={t}, h={h}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return t, h, tau


def pack_tokens(tokens, vocab: int, *, backend: str = "auto", validate: bool = True) -> torch.Tensor:
    """tokens (N, D) ids in [0, vocab) -> (N, W) int64 bit-packed words on the tokens' device
    (``ceil(log2 V)`` bits per token, ``64 // bits`` tokens per word)."""
    check_vocab(vocab)
    if validate:
        tokens = validate_tokens("tokens", tokens, vocab)
    impl, run_device = _switch.resolve(backend, tokens.device, what="tokens")
    if impl == "torch":
        return _switch.reference("dfm").pack_tokens(tokens, vocab)
    N, D = tokens.shape
    out = torch.empty((N, packed_words(vocab, D)), dtype=torch.int64, device=run_device)
    for start in range(0, N, _PACK_ROWS):
        chunk = tokens[start:start + _PACK_ROWS].to(device=run_device, dtype=torch.int32).contiguous()
        out[start:start + chunk.shape[0]] = dfm_pack(chunk, vocab)
    return out.to(tokens.device)


@torch.library.custom_op("flowfast::dfm_pack", mutates_args=())
def dfm_pack(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """tokens (N, D) int32 -> (N, W) int64 packed words (no range check: see pack_tokens)."""
    out = torch.empty((tokens.shape[0], packed_words(vocab, tokens.shape[1])), dtype=torch.int64, device=tokens.device)
    _C.dfm_pack(_arrays.describe(tokens), _arrays.describe(out), vocab, _arrays.stream_handle(tokens.device))
    return out


@dfm_pack.register_fake
def _(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return tokens.new_empty((tokens.shape[0], packed_words(vocab, tokens.shape[1])), dtype=torch.int64)


def inversion_step(keys: torch.Tensor, x, vocab: int, t: float, h: float, *, tau: float = 1.0, seed: int = 0,
                   offset: int = 0, row_offset: int = 0, backend: str = "auto", validate: bool = True):
    """One backward step t -> t - h of PairFlow's inversion for the queries x (B, D) against the
    packed training set ``keys`` (N, W) (:func:`pack_tokens`).

    Returns ``(x_new, posterior, best)``: x_new (B, D) int32 tokens after the keep/jump draws,
    posterior (B, D) float32 = P(x1^d = x^d | x_t = x), best (B,) int32 the largest match count.
    The draw of element (b, d) is Philox (seed, offset) at (row_offset + b) * D + d.
    """
    check_vocab(vocab)
    t, h, tau = _check_time(t, h, tau)
    for label, value, top in (("seed", seed, 64), ("offset", offset, 64), ("row_offset", row_offset, 62)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**top:
            raise ValueError(f"{label} must be an int in [0, 2^{top}), got {value!r}")
    if validate:
        x = validate_tokens("x", x, vocab)
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or keys.dim() != 2:
            raise TypeError("keys must be the (N, W) int64 tensor of pack_tokens(training set, vocab)")
        if keys.shape[0] == 0:
            raise ValueError("keys (the packed training set) is empty")
        if keys.shape[1] != packed_words(vocab, x.shape[1]):
            raise ValueError(f"keys has {keys.shape[1]} words per sequence but {x.shape[1]} tokens of vocab_size="
                             f"{vocab} pack into {packed_words(vocab, x.shape[1])}: pack the training set with the "
                             "same vocab_size and length")
        if keys.device != x.device:
            raise ValueError(f"keys are on {keys.device} but x is on {x.device}")
    impl, run_device = _switch.resolve(backend, x.device, what="x")
    if impl == "torch":
        return _switch.reference("dfm").inversion_step(keys, x, vocab, t, h, tau=tau, seed=seed, offset=offset,
                                                       row_offset=row_offset)
    x_run = x.to(device=run_device, dtype=torch.int32).contiguous()
    # The op schema's ints are int64: uint64 seeds / offsets travel as their two's complement.
    out = dfm_inversion_step(keys.to(run_device).contiguous(), x_run, vocab, t, h, 1.0 / tau, _as_int64(seed),
                             _as_int64(offset), row_offset)
    return tuple(o.to(x.device) for o in out)


@torch.library.custom_op("flowfast::dfm_inversion_step", mutates_args=())
def dfm_inversion_step(keys: torch.Tensor, x: torch.Tensor, vocab: int, t: float, h: float, inv_tau: float, seed: int,
                       offset: int, row_offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """keys (N, W) int64, x (B, D) int32 -> (x_new (B, D) int32, posterior (B, D) float32, best (B,) int32)."""
    seed, offset = seed & _UINT64, offset & _UINT64
    x_packed = dfm_pack(x, vocab)
    x_new = torch.empty_like(x)
    posterior = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    best = torch.empty(x.shape[:1], dtype=torch.int32, device=x.device)
    _C.dfm_inversion_step(_arrays.describe(keys), _arrays.describe(x), _arrays.describe(x_packed),
                          _arrays.describe(x_new), _arrays.describe(posterior), _arrays.describe(best),
                          (vocab, t, h, inv_tau, seed, offset, row_offset), _arrays.stream_handle(x.device))
    return x_new, posterior, best


@dfm_inversion_step.register_fake
def _(keys, x, vocab, t, h, inv_tau, seed, offset, row_offset):
    return torch.empty_like(x), x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape[:1])
