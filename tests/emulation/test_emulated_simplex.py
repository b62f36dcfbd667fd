"""CUDA `simplex` kernels (csrc/cuda/simplex_cuda.cu) run in the SIMT emulation on the cases of
tests/test_simplex.py: the three row layouts (4 lanes for V <= 64, a warp for V <= 4096, the
block above), values and fused gradients against the reference, 16-bit storage, adversarial
logits and argmax ties; and against the CPU kernels on ragged row counts (partly filled blocks)."""

from __future__ import annotations

import contextlib

import pytest
import torch

import test_simplex as cpu_cases
from _emulated import emulated_cuda
from flowfast.ops import simplex as ops

# One vocabulary per row layout plus its edges.
VOCABS = [1, 2, 64, 65, 4096, 4097]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("V", VOCABS)
def test_step_matches_reference(emulated, dtype, V):
    with emulated_cuda(emulated):
        cpu_cases.test_step_matches_reference("cpu", dtype, V, (3, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", ["ecld", "csd"])
def test_distill_matches_reference(emulated, dtype, V, kind):
    with emulated_cuda(emulated):
        cpu_cases.test_distill_matches_reference("cpu", dtype, V, kind)


@pytest.mark.parametrize("name", ["test_step_endpoints", "test_step_argmax_ties_take_the_lowest_index",
                                  "test_one_row_and_loss_scaling",
                                  "test_step_gamma_shapes", "test_distill_without_grad_is_the_same_loss",
                                  "test_ecld_weights_and_zero_jump", "test_empty_batches"])
def test_cpu_case(emulated, name):
    fn = getattr(cpu_cases, name)
    with emulated_cuda(emulated):
        if name == "test_step_endpoints":
            fn("cpu", torch.float32)
        else:
            fn("cpu")


@pytest.mark.parametrize("case", ["offset", "huge", "ties"])
def test_distill_adversarial_logits(emulated, case):
    with emulated_cuda(emulated):
        cpu_cases.test_distill_adversarial_logits("cpu", case, "ecld")


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)], ids=str)
def test_distill_low_precision(emulated, dtype, eps):
    with emulated_cuda(emulated):
        cpu_cases.test_distill_low_precision("cpu", dtype, eps, "csd")
        cpu_cases.test_step_low_precision("cpu", dtype, eps, 65)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,V", [(1, 3), (67, 40), (9, 300), (3, 4100)])
def test_same_as_cpu_kernels(emulated, dtype, rows, V):
    """Both backends on the same rows: equal up to the reduction order (rows count not a multiple
    of a block's rows, so the last block is partly idle)."""
    z, zdot, target, x, s, t = cpu_cases._rows((rows,), V, dtype, seed=rows)
    results = []
    for emulate in (False, True):
        with emulated_cuda(emulated) if emulate else contextlib.nullcontext():
            step = ops.flow_map_step(z, x, (t - s) / (1 - s), return_argmax=True, return_log_probs=True)
            distill = [cpu_cases._loss_and_grads(kind, z, zdot, target, x, s, t, "auto") for kind in ("ecld", "csd")]
        results.append([*step, *distill[0], *distill[1]])
    tol = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
           torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}[dtype]
    for want, got in zip(*results):
        if got.dtype == torch.int64:
            assert torch.equal(got, want)
            continue
        assert not torch.isnan(got).any(), "an output element was never written"
        torch.testing.assert_close(got.float(), want.float(), **tol)


@pytest.mark.parametrize("V", [16, 300, 5000])
def test_nan_logits_give_nan_rows(emulated, V):
    with emulated_cuda(emulated):
        cpu_cases.test_nan_logits_give_nan_rows_without_validation("cpu", V)
