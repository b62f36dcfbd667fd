"""Kernel family `dfm` (PairFlow's inversion): kernels vs the pure-torch reference, the backward
step's law, uniform source marginals and shorter paths than the independent coupling, the binary
fast path vs the general one, and clear errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowfast.discrete import hamming_distance, pairflow_pairs, uniform_source
from flowfast.ops import dfm as ops
from flowfast.reference import dfm as ref


def _tokens(n, d, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, d), generator=g)


def _clustered(n, d, vocab, seed=0, flips=0.15):
    """Sequences near a few prototypes (a posterior that is neither flat nor a point mass)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, vocab, (4, d), generator=g)
    rows = protos[torch.randint(0, 4, (n,), generator=g)]
    noise = torch.randint(0, vocab, (n, d), generator=g)
    return torch.where(torch.rand((n, d), generator=g) < flips, noise, rows)


@pytest.mark.parametrize("vocab", [2, 3, 4, 40, 256, 257, 65536])
@pytest.mark.parametrize("length", [1, 7, 64, 65, 130])
def test_pack_matches_reference_and_round_trips(vocab, length):
    tokens = _tokens(9, length, vocab, seed=vocab + length)
    tokens[0] = vocab - 1  # the top bit of every field set (the sign bit for 1- and 16-bit fields)
    packed = ops.pack_tokens(tokens, vocab)
    assert packed.shape == (9, ops.packed_words(vocab, length))
    assert torch.equal(packed, ref.pack_tokens(tokens, vocab))
    assert torch.equal(ref.unpack_tokens(packed, vocab, length), tokens)


@pytest.mark.parametrize("vocab,length", [(2, 70), (3, 9), (5, 24), (40, 32), (256, 20)])
@pytest.mark.parametrize("t", [1.0, 0.95, 0.5, 0.05])
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_step_equals_reference(vocab, length, t, tau):
    data = _clustered(150, length, vocab, seed=vocab)
    keys = ops.pack_tokens(data, vocab)
    x = torch.cat([data[:20], _clustered(20, length, vocab, seed=vocab + 1)])
    got = ops.inversion_step(keys, x, vocab, t, 0.05, tau=tau, seed=11, offset=3, row_offset=5)
    want = ref.inversion_step(keys, x, vocab, t, 0.05, tau=tau, seed=11, offset=3, row_offset=5)
    assert torch.equal(got[2], want[2])                      # best match counts, exactly
    torch.testing.assert_close(got[1], want[1], atol=2e-7, rtol=1e-6)
    assert torch.equal(got[0], want[0])                      # the same Philox draws
    assert got[0].dtype == torch.int32 and got[1].dtype == torch.float32


def test_torch_backend_is_the_reference():
    data = _clustered(60, 12, 5)
    keys = ops.pack_tokens(data, 5, backend="torch")
    got = ops.inversion_step(keys, data[:10], 5, 0.7, 0.1, seed=1, offset=2, backend="torch")
    want = ref.inversion_step(keys, data[:10], 5, 0.7, 0.1, seed=1, offset=2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_t_one_self_match_is_a_point_mass_on_duplicates():
    data = _tokens(40, 16, 4, seed=3)
    data[5] = data[7]  # one duplicate pair
    keys = ops.pack_tokens(data, 4)
    _, v, best = ops.inversion_step(keys, data, 4, 1.0, 0.05, seed=0)
    assert torch.all(best == 16)
    assert torch.all(v == 1.0)  # every exact match agrees with the query on every token
    # A query two tokens away from one key and farther from all others: v = [x^d == key^d].
    q = data[:1].clone()
    q[0, :2] = (q[0, :2] + 1) % 4
    _, v, best = ops.inversion_step(keys, q, 4, 1.0, 0.05)
    nearest = ref.posterior(data, q, 4, 1.0)[0]
    torch.testing.assert_close(v.double(), nearest, atol=1e-7, rtol=0)
    assert int(best) == int((data == q).sum(1).max())


def test_binary_path_equals_general_path():
    """Counts and weights of the V = 2 popcount path equal the general field test's on the same
    0/1 data: V = 3 at t' with the same gamma (1 + 2t/(1-t) = 1 + 3t'/(1-t')) has the same posterior."""
    data = _clustered(120, 100, 2, seed=4)
    x = _clustered(30, 100, 2, seed=5)
    for t in (1.0, 0.9, 0.4, 0.05):
        t3 = 1.0 if t == 1.0 else (2 * t / (1 - t)) / (3 + 2 * t / (1 - t))
        _, v2, best2 = ops.inversion_step(ops.pack_tokens(data, 2), x, 2, t, 0.01)
        _, v3, best3 = ops.inversion_step(ops.pack_tokens(data, 3), x, 3, t3, 0.01)
        assert torch.equal(best2, best3)
        torch.testing.assert_close(v2, v3, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("vocab", [2, 6])
def test_backward_step_probability(vocab):
    """With one training sequence v = 1 on its own tokens: each token leaves with probability
    (V - 1) h / (1 - t + t V) at tau = 1, uniformly to the other V - 1 tokens."""
    t, h, rows, length = 0.6, 0.2, 4000, 8
    seq = _tokens(1, length, vocab, seed=vocab)
    keys = ops.pack_tokens(seq, vocab)
    x = seq.expand(rows, length)
    x_new, v, _ = ops.inversion_step(keys, x, vocab, t, h, seed=123, offset=7)
    assert torch.all(v == 1.0)
    p = (vocab - 1) * h / (1 - t + t * vocab)
    moved = (x_new != x).double()
    n = moved.numel()
    assert abs(moved.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    if vocab > 2:
        targets = ((x_new.long() - x) % vocab)[x_new != x]  # 1 .. V-1, uniform
        counts = torch.bincount(targets, minlength=vocab)[1:].double()
        expected = counts.sum() / (vocab - 1)
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 25.0  # chi-square with 4 dof: P(> 25) ~ 5e-5
    # The formula itself, and the tempered odds.
    assert ref.keep_probability(torch.tensor(1.0, dtype=torch.float64), t, h, vocab).item() == pytest.approx(1 - p)
    rho = h / (1 - t + t * vocab - h * (vocab - 1))
    assert ref.keep_probability(torch.tensor(1.0, dtype=torch.float64), t, h, vocab, tau=0.5).item() == pytest.approx(
        1 / (1 + (vocab - 1) * rho ** 2))


def test_pairs_have_uniform_marginals_and_shorter_paths():
    """The toy of the research notes: V = 4, D = 6, N = 40, 20 steps. Exact reversal at tau = 1:
    x0 marginals are uniform (checked on 50 independent inversions of the set) and the mean
    Hamming distance to the data is below the independent coupling's D (V - 1) / V = 4.5."""
    vocab, length = 4, 6
    data = _clustered(40, length, vocab, seed=7, flips=0.3)
    sources = torch.cat([pairflow_pairs(data, vocab, generator=torch.Generator().manual_seed(s)) for s in range(50)])
    counts = torch.bincount(sources.flatten(), minlength=vocab).double()
    expected = sources.numel() / vocab
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 20.0  # 3 dof: P(> 20) ~ 2e-4
    per_position = torch.stack([torch.bincount(sources[:, d], minlength=vocab) for d in range(length)]).double()
    assert (per_position / sources.shape[0] - 0.25).abs().max() < 0.05
    paired = hamming_distance(sources, data.repeat(50, 1)).double().mean().item()
    independent = length * (vocab - 1) / vocab
    assert paired < 0.85 * independent
    # tau < 1 keeps more tokens (shorter paths, no longer a uniform source).
    cold = pairflow_pairs(data, vocab, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert hamming_distance(cold, data).double().mean().item() < paired


def test_pairs_do_not_depend_on_batch_size_and_are_reproducible():
    data = _clustered(70, 20, 3, seed=8)
    a = pairflow_pairs(data, 3, steps=5, batch_size=7, generator=torch.Generator().manual_seed(1))
    b = pairflow_pairs(data, 3, steps=5, batch_size=64, generator=torch.Generator().manual_seed(1))
    c = pairflow_pairs(data, 3, steps=5, batch_size=64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == data.dtype and a.shape == data.shape
    ref_pairs = pairflow_pairs(data, 3, steps=5, batch_size=64, generator=torch.Generator().manual_seed(1),
                               backend="torch")
    assert torch.equal(a, ref_pairs)


def test_unused_token_ids_still_belong_to_the_source():
    """V is an argument: data using only ids 0, 1 of V = 8 gets sources over all 8 ids."""
    data = _clustered(50, 10, 2, seed=9)
    sources = pairflow_pairs(data, 8, generator=torch.Generator().manual_seed(0))
    assert int(sources.max()) >= 2


def test_numpy_and_small_integer_dtypes():
    data = _clustered(30, 9, 5, seed=10).to(torch.uint8)
    a = pairflow_pairs(data, 5, steps=4, generator=torch.Generator().manual_seed(3))
    b = pairflow_pairs(data.numpy(), 5, steps=4, generator=torch.Generator().manual_seed(3))
    assert isinstance(b, np.ndarray)  # numpy in, numpy out (flowfast._interop)
    assert a.dtype == torch.uint8 and torch.equal(a, torch.from_numpy(b))
    assert isinstance(uniform_source((3, 4), 5), torch.Tensor)


@pytest.mark.parametrize("call,error,match", [
    (lambda d: pairflow_pairs(d, 4), ValueError, r"token id 4, outside \[0, 4\)"),
    (lambda d: pairflow_pairs(d - 1, 5), ValueError, r"token id -1"),
    (lambda d: pairflow_pairs(d, 70000), ValueError, r"vocab_size must lie in \[2, 65536\]"),
    (lambda d: pairflow_pairs(d, 1), ValueError, r"vocab_size must lie"),
    (lambda d: pairflow_pairs(d, 5.0), TypeError, r"vocab_size must be an int"),
    (lambda d: pairflow_pairs(d[:0], 5), ValueError, r"empty"),
    (lambda d: pairflow_pairs(d[0], 5), ValueError, r"must be \(N, D\)"),
    (lambda d: pairflow_pairs(d.float(), 5), TypeError, r"integer token ids"),
    (lambda d: pairflow_pairs(d, 5, steps=0), ValueError, r"steps must be >= 1"),
    (lambda d: pairflow_pairs(d, 5, tau=0.0), ValueError, r"tau must be > 0"),
    (lambda d: pairflow_pairs(d, 5, tau=float("nan")), ValueError, r"tau must be finite"),
    (lambda d: pairflow_pairs(d, 5, batch_size=0), ValueError, r"batch_size must be >= 1"),
    (lambda d: pairflow_pairs(d, 5, generator=3), TypeError, r"generator must be"),
    (lambda d: pairflow_pairs([[1, 2]], 5), TypeError, r"torch.Tensor, numpy.ndarray, cupy.ndarray, jax.Array"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    data = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    with pytest.raises(error, match=match):
        call(data)


def test_step_bad_input():
    data = _tokens(10, 8, 4)
    keys = ops.pack_tokens(data, 4)
    with pytest.raises(ValueError, match=r"0 < h <= t <= 1"):
        ops.inversion_step(keys, data, 4, 0.1, 0.2)
    with pytest.raises(ValueError, match=r"0 < h <= t <= 1"):
        ops.inversion_step(keys, data, 4, 1.5, 0.2)
    with pytest.raises(ValueError, match=r"tokens of vocab_size=4 pack into"):
        ops.inversion_step(keys, data[:, :5].repeat(1, 10), 4, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"keys .* is empty"):
        ops.inversion_step(keys[:0], data, 4, 1.0, 0.1)
    with pytest.raises(TypeError, match=r"keys must be the \(N, W\) int64"):
        ops.inversion_step(keys.int(), data, 4, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"seed must be an int"):
        ops.inversion_step(keys, data, 4, 1.0, 0.1, seed=-1)
    with pytest.raises(ValueError, match=r"row_offset must be an int"):
        ops.inversion_step(keys, data, 4, 1.0, 0.1, row_offset=2**62)
    with pytest.raises(ValueError, match=r"hamming_distance needs equal shapes"):
        hamming_distance(data, data[:3])


def test_kernel_library_checks_are_the_last_line_of_defence():
    """flowfast._C called directly with inconsistent descriptors raises, never crashes."""
    from flowfast import _arrays
    from flowfast._backend import _C

    x = _tokens(4, 8, 4).int()
    keys = ops.pack_tokens(x, 4)
    out = torch.empty_like(x)
    d = _arrays.describe
    with pytest.raises(ValueError, match="x_new must not alias x"):
        _C.dfm_inversion_step(d(keys), d(x), d(keys[:4]), d(x), None, None, (4, 1.0, 0.1, 1.0, 0, 0, 0), 0)
    with pytest.raises(ValueError, match="vocab must lie"):
        _C.dfm_inversion_step(d(keys), d(x), d(keys[:4]), d(out), None, None, (1, 1.0, 0.1, 1.0, 0, 0, 0), 0)
    with pytest.raises(ValueError, match="0 < h <= t <= 1"):
        _C.dfm_inversion_step(d(keys), d(x), d(keys[:4]), d(out), None, None, (4, 0.1, 0.5, 1.0, 0, 0, 0), 0)
    with pytest.raises(ValueError, match="keys: dim 1"):
        _C.dfm_inversion_step(d(keys.repeat(1, 2)), d(x), d(keys[:4]), d(out), None, None,
                              (4, 1.0, 0.1, 1.0, 0, 0, 0), 0)


@pytest.mark.cuda
@pytest.mark.parametrize("queries,length,keys,vocab", [(130, 32, 200, 4), (9, 1500, 70, 3), (1100, 784, 3000, 2)])
def test_cuda_equals_cpu(queries, length, keys, vocab):
    data = _clustered(keys, length, vocab, seed=queries)
    packed = ops.pack_tokens(data, vocab)
    assert torch.equal(ops.pack_tokens(data.cuda(), vocab).cpu(), packed)
    for t in (1.0, 0.6, 0.1):
        want = ops.inversion_step(packed, data[:queries], vocab, t, 0.1, seed=2, offset=4)
        got = ops.inversion_step(packed.cuda(), data[:queries].cuda(), vocab, t, 0.1, seed=2, offset=4)
        assert torch.equal(got[2].cpu(), want[2])
        torch.testing.assert_close(got[1].cpu(), want[1], atol=1e-7, rtol=1e-6)
        assert (got[0].cpu() != want[0]).double().mean().item() < 1e-4
    a = pairflow_pairs(data.cuda(), vocab, steps=4, generator=torch.Generator().manual_seed(0))
    b = pairflow_pairs(data, vocab, steps=4, generator=torch.Generator().manual_seed(0))
    assert (a.cpu() != b).double().mean().item() < 1e-3


def test_foreign_padding_bits_never_reach_the_counts():
    """Keys whose last word has bits in the query's padding fields (e.g. packed from D = 64 and
    used with D = 60: the same word count) count only the real tokens, on every backend."""
    data = _tokens(30, 64, 2, seed=12)
    keys = ops.pack_tokens(data, 2)
    x = data[:5, :60]
    got = ops.inversion_step(keys, x, 2, 0.01, 0.01, seed=1)
    want = ops.inversion_step(keys, x, 2, 0.01, 0.01, seed=1, backend="torch")
    assert int(got[2].min()) >= 0 and int(got[2].max()) <= 60
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-6)


def test_uint64_seeds_and_generator_streams():
    data = _clustered(20, 8, 3, seed=13)
    keys = ops.pack_tokens(data, 3)
    top = 2**64 - 5
    got = ops.inversion_step(keys, data, 3, 0.5, 0.1, seed=top, offset=top)
    want = ops.inversion_step(keys, data, 3, 0.5, 0.1, seed=top, offset=top, backend="torch")
    assert torch.equal(got[0], want[0])
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^64\)"):
        ops.inversion_step(keys, data, 3, 0.5, 0.1, seed=2**64)


def test_draw_seed_advances_a_cuda_generator_past_every_step():
    """A CUDA generator lends (seed, offset); one pairing uses `steps` consecutive offsets, so the
    generator must move past all of them (the next pairing's streams never repeat these)."""
    from flowfast._rng import draw_seed

    class FakeCudaGenerator:
        device = torch.device("cuda")

        def __init__(self):
            self.offset = 8

        def get_offset(self):
            return self.offset

        def set_offset(self, value):
            self.offset = value

        def initial_seed(self):
            return 2**64 - 1

    g = FakeCudaGenerator()
    assert draw_seed(g, count=20) == (2**64 - 1, 8) and g.offset == 28
    assert draw_seed(g, count=21) == (2**64 - 1, 28) and g.offset == 52
    assert draw_seed(g) == (2**64 - 1, 52) and g.offset == 56
