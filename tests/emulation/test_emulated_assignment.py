"""CUDA `assignment` kernel (csrc/cuda/assignment_cuda.cu) run in the SIMT emulation on the
cases of tests/test_assignment.py: optimal totals against scipy, and the very columns of the CPU
kernel where the optimum is unique. Sizes reach every block width (128..1024 threads), the
auction warm start (square n >= 32) with its eviction path, rectangular and batched problems."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowfast
import test_assignment as cpu_cases
from _emulated import emulated_cuda

DTYPES = [torch.float32, torch.float64]


def _cpu_and_emulated(emu, cost, maximize=False):
    cpu = flowfast.linear_assignment(cost, maximize)
    with emulated_cuda(emu):
        emulated = flowfast.linear_assignment(cost, maximize)
    return cpu, emulated


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (7, 7), (33, 33), (64, 64), (3, 130, 130), (1, 300, 300)])
def test_unique_optimum_same_columns_as_cpu(emulated, dtype, shape):
    """Continuous random costs: the optimum is unique, so both backends return the same columns."""
    cost = torch.rand(shape, generator=cpu_cases._gen(sum(shape)), dtype=torch.float64).to(dtype)
    with emulated_cuda(emulated):
        got = cpu_cases._solve_and_check(cost)
    want = flowfast.linear_assignment(cost)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_largest_block_width(emulated):
    """m > 512 takes the 1024-thread block (32 warps in each block reduction)."""
    cost = torch.rand(3, 600, generator=cpu_cases._gen(600), dtype=torch.float64)
    cpu, got = _cpu_and_emulated(emulated, cost)
    torch.testing.assert_close(got, cpu, rtol=0, atol=0)


@pytest.mark.parametrize("n,m", [(1, 2), (2, 3), (5, 9), (37, 100), (99, 100), (10, 300)])
def test_random_rectangular(emulated, n, m):
    with emulated_cuda(emulated):
        cpu_cases.test_random_rectangular("cpu", torch.float64, n, m)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 7), (40, 40), (20, 45), (6, 4, 9)])
@pytest.mark.parametrize("maximize", [False, True])
def test_tied_integer_costs(emulated, dtype, shape, maximize):
    with emulated_cuda(emulated):
        cpu_cases.test_tied_integer_costs("cpu", dtype, shape, maximize)


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (40, 40), (3, 8, 8)])
@pytest.mark.parametrize("value", [0.0, -2.5, 1e6])
def test_all_equal_costs(emulated, shape, value):
    with emulated_cuda(emulated):
        cpu_cases.test_all_equal_costs("cpu", torch.float32, shape, value)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 7), (64, 64), (50, 80), (4, 20, 20)])
def test_huge_dynamic_range(emulated, dtype, shape):
    with emulated_cuda(emulated):
        cpu_cases.test_huge_dynamic_range("cpu", dtype, shape)


@pytest.mark.parametrize("shape", [(40, 40), (3, 33, 33)])
@pytest.mark.parametrize("outlier", [1e8, 1e20])
def test_few_huge_outliers(emulated, shape, outlier):
    with emulated_cuda(emulated):
        cpu_cases.test_few_huge_outliers("cpu", torch.float64, shape, outlier)


@pytest.mark.parametrize(
    "family",
    [cpu_cases._tiny_matching, cpu_cases._tiny_matching_in_few_rows, cpu_cases._clustered_duplicates,
     cpu_cases._bimodal],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("n", [17, 64, 128])
def test_optimum_far_below_the_cost_range(emulated, family, n):
    """Where the auction's float32 prices cannot resolve the costs that decide the optimum: the
    CUDA warm start must notice (resolution check) and still return the exact optimum."""
    with emulated_cuda(emulated):
        cpu_cases.test_optimum_far_below_the_cost_range("cpu", family, n)


@pytest.mark.parametrize("B,n,m", [(5, 7, 7), (17, 12, 20), (6, 40, 41), (8, 1, 6)])
def test_batched_matches_per_problem_scipy(emulated, B, n, m):
    with emulated_cuda(emulated):
        cpu_cases.test_batched_matches_per_problem_scipy("cpu", torch.float64, B, n, m, False)


def test_batched_mixed_problems(emulated):
    with emulated_cuda(emulated):
        cpu_cases.test_batched_mixed_problems("cpu", torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maximize_and_layouts(emulated, dtype):
    with emulated_cuda(emulated):
        cpu_cases.test_maximize("cpu", dtype, (33, 33))
        cpu_cases.test_transposed_view("cpu", dtype)
        cpu_cases.test_strided_slices("cpu", dtype)
        cpu_cases.test_batched_non_contiguous("cpu", dtype)


def test_duplicated_points(emulated):
    with emulated_cuda(emulated):
        cpu_cases.test_duplicated_points_self("cpu", torch.float64)


def test_launches_were_emulated(emu):
    """Guards the harness itself: the calls above really ran emulated kernels."""
    emu.emu_reset_stats()
    cost = torch.rand(40, 40, generator=cpu_cases._gen(5), dtype=torch.float64)
    with emulated_cuda(emu):
        flowfast.linear_assignment(cost)
    stats = emu.emu_stats()
    assert stats["launches"] == 1 and stats["blocks"] == 1 and stats["threads"] == 128
    assert stats["barriers"] > 0 and stats["warp_ops"] > 0
    if emu.emu_race_detector():
        assert stats["checked_bytes"] > 40 * 40 * 8
