"""Shared pytest setup: exact float32 matmuls, CUDA auto-skip, device/dtype fixtures, seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import flowfast
from flowfast import testing

# Costs built with matmuls (pairwise_cost) must be exact float32, not TF32, for objective checks.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_SEED = 1234


def pytest_collection_modifyitems(config, items):
    if flowfast.cuda_available():
        return
    info = flowfast.build_info()
    if not info["cuda_compiled"]:
        why = "flowfast was built without CUDA kernels (build_info()['cuda_compiled'] is False)"
    elif not torch.cuda.is_available():
        why = "no CUDA device visible to torch (torch.cuda.is_available() is False)"
    else:
        why = "flowfast's CUDA runtime probe failed (flowfast._C.cuda_runtime_available() is False)"
    skip_cuda = pytest.mark.skip(
        reason=f"cuda test skipped: flowfast.cuda_available() is False: {why}"
    )
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip_cuda)


@pytest.fixture(params=testing.devices())
def device(request) -> str:
    """"cpu", and "cuda" (marked ``cuda``, so it skips without a usable GPU)."""
    return request.param


@pytest.fixture(params=testing.FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state, whatever ran before it."""
    random.seed(_SEED)
    np.random.seed(_SEED)
    torch.manual_seed(_SEED)
    yield
