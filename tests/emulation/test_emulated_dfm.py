"""CUDA `dfm` kernels (csrc/cuda/dfm_cuda.cu) run in the SIMT emulation on the cases of
tests/test_dfm.py (packing, the inversion step against the reference, the binary fast path, the
step's law, pairs independent of the batch size), plus multi-block launches against the CPU
kernels: several query tiles with a ragged last one, several token chunks (D > 1024), key counts
that are not a multiple of the 64-key tile."""

from __future__ import annotations

import contextlib

import pytest
import torch

import test_dfm as cpu_cases
from _emulated import emulated_cuda
from flowfast.ops import dfm as ops


@pytest.mark.parametrize("vocab", [2, 3, 256, 65536])
@pytest.mark.parametrize("length", [1, 65, 130])
def test_pack(emulated, vocab, length):
    with emulated_cuda(emulated):
        cpu_cases.test_pack_matches_reference_and_round_trips(vocab, length)


@pytest.mark.parametrize("vocab,length", [(2, 70), (5, 24), (256, 20)])
@pytest.mark.parametrize("t", [1.0, 0.5, 0.05])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_step_equals_reference(emulated, vocab, length, t, tau):
    with emulated_cuda(emulated):
        cpu_cases.test_step_equals_reference(vocab, length, t, tau)


@pytest.mark.parametrize("name", ["test_t_one_self_match_is_a_point_mass_on_duplicates",
                                  "test_binary_path_equals_general_path",
                                  "test_pairs_do_not_depend_on_batch_size_and_are_reproducible",
                                  "test_step_bad_input"])
def test_cpu_case(emulated, name):
    with emulated_cuda(emulated):
        getattr(cpu_cases, name)()


def test_backward_step_probability(emulated):
    with emulated_cuda(emulated):
        cpu_cases.test_backward_step_probability(6)


@pytest.mark.parametrize("queries,length,keys,vocab", [
    (130, 32, 200, 4),      # 64 queries per block: 3 blocks, the last with 2
    (9, 1500, 70, 3),       # two token chunks of 1024 and 476, 4 queries per block
    (11, 800, 129, 2),      # binary path, 5 queries per block, 3 key tiles (1 key in the last)
])
@pytest.mark.parametrize("t", [1.0, 0.8, 0.2])
def test_multi_block_same_as_cpu_kernels(emulated, queries, length, keys, vocab, t):
    data = cpu_cases._clustered(keys, length, vocab, seed=queries, flips=0.1)
    x = torch.cat([data[:queries // 2], cpu_cases._clustered(queries - queries // 2, length, vocab, seed=1)])
    results = []
    for emulate in (False, True):
        with emulated_cuda(emulated) if emulate else contextlib.nullcontext():
            packed = ops.pack_tokens(data, vocab)
            results.append((packed, *ops.inversion_step(packed, x, vocab, t, 0.1, seed=5, offset=9, row_offset=3)))
    (packed_cpu, new_cpu, v_cpu, best_cpu), (packed_emu, new_emu, v_emu, best_emu) = results
    assert torch.equal(packed_emu, packed_cpu)
    assert not torch.isnan(v_emu).any(), "a posterior element was never written"
    assert torch.equal(best_emu, best_cpu)
    torch.testing.assert_close(v_emu, v_cpu, atol=1e-7, rtol=1e-6)
    assert torch.equal(new_emu, new_cpu)
