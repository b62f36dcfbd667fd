"""Fixtures of the SIMT-emulation tests (the CUDA kernels run on the CPU, see csrc/emu)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the CPU suites' case generators

from _emulated import build_name, load_module  # noqa: E402

_MODULE = load_module()

# One shuffled schedule per build (different ones); the selftests add index order (seed 0) and
# more seeds, the multi-block cases seed 7. Sizes and seeds are what fits about 5 minutes of CI.
SEEDS = [1] if build_name() == "race" else [3]


def pytest_collection_modifyitems(config, items):
    if _MODULE is not None:
        return
    if os.environ.get("FLOWFAST_EMU_REQUIRED"):
        raise pytest.UsageError(f"the emulation module _C_emu_{build_name()} is not built (run make emu)")
    skip = pytest.mark.skip(reason=f"emulation module _C_emu_{build_name()} not built (make emu)")
    for item in items:
        if "emulation" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def emu():
    return _MODULE


@pytest.fixture(params=SEEDS, ids=lambda s: f"sched{s}")
def emulated(request, emu):
    """The emulation module with one schedule seed set (wrap calls in emulated_cuda(emulated))."""
    emu.emu_set_schedule_seed(request.param)
    yield emu
    emu.emu_set_schedule_seed(0)
