"""The compiled core loads and describes itself honestly; the custom op is registered correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import flowfast
from flowfast import testing


def _run_cpu_only(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that sees no GPU (CUDA_VISIBLE_DEVICES=""), so a crash
    (segfault, abort) shows up as a failed test instead of taking pytest down."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cpu_only_report() -> dict:
    """One fresh interpreter with no visible GPU: import, probe, and solve a tiny problem."""
    proc = _run_cpu_only(
        """
        import json
        import torch
        import flowfast
        from flowfast import _C
        report = {
            "torch_cuda": torch.cuda.is_available(),
            "build_info": flowfast.build_info(),
            "probe": _C.cuda_runtime_available(),
            "cuda_available": flowfast.cuda_available(),
            "cols": flowfast.linear_assignment(torch.tensor([[2.0, 1.0], [1.0, 2.0]])).tolist(),
        }
        print(json.dumps(report))
        """
    )
    assert proc.returncode == 0, (
        f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_and_solve_without_gpu(cpu_only_report):
    assert cpu_only_report["torch_cuda"] is False
    assert cpu_only_report["cuda_available"] is False
    assert cpu_only_report["cols"] == [1, 0]


def test_cuda_runtime_probe_is_false_without_gpu(cpu_only_report):
    """With no usable GPU the probe answers False instead of crashing, whether or not the build has
    CUDA kernels (a CUDA build on a CPU-only box must still import and run on CPU)."""
    assert cpu_only_report["probe"] is False, cpu_only_report["build_info"]


def test_build_info_keys_and_types():
    info = flowfast.build_info()
    assert isinstance(info, dict)
    assert set(info) >= {"cuda_compiled", "cuda_version", "archs", "openmp"}
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["archs"], str)
    if info["cuda_compiled"]:
        assert isinstance(info["cuda_version"], int) and not isinstance(info["cuda_version"], bool)
        assert info["cuda_version"] >= 10000, info["cuda_version"]  # CUDART_VERSION, e.g. 12080
    else:
        assert info["cuda_version"] is None
        assert info["archs"] == ""


def test_cuda_available_is_bool_and_consistent():
    value = flowfast.cuda_available()
    assert isinstance(value, bool)
    if not torch.cuda.is_available():
        assert value is False
    if not flowfast.build_info()["cuda_compiled"]:
        assert value is False
    if value:
        assert flowfast._C.cuda_runtime_available() is True


def test_cuda_runtime_available_is_bool():
    value = flowfast._C.cuda_runtime_available()
    assert isinstance(value, bool)
    if not flowfast.build_info()["cuda_compiled"]:
        assert value is False


def test_available_devices_matches_probe():
    devs = testing.available_devices()
    assert devs[0] == "cpu"
    assert ("cuda" in devs) == flowfast.cuda_available()


@pytest.mark.parametrize("maximize", [False, True])
def test_opcheck_linear_assignment(device, dtype, maximize):
    op = torch.ops.flowfast.linear_assignment.default
    square = torch.rand(3, 5, 5, dtype=dtype, device=device)
    wide = torch.rand(4, 3, 7, dtype=dtype, device=device)
    single = torch.rand(1, 1, 1, dtype=dtype, device=device)
    for cost in (square, wide, single):
        torch.library.opcheck(op, (cost, maximize))


def test_op_output_metadata():
    cost = torch.rand(2, 3, 4, dtype=torch.float64)
    out = torch.ops.flowfast.linear_assignment(cost, False)
    assert out.dtype == torch.int64
    assert out.shape == (2, 3)
    assert out.is_contiguous()
