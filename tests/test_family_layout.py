"""The project's structure contracts (docs/architecture.md, "Adding a kernel family"): every family
has its files in the same places, production code never imports the tests' oracle, and a training
step reads device memory back at most once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from flowfast import paths
from flowfast.testing import HostReads

ROOT = Path(__file__).resolve().parents[1]


def families() -> list[str]:
    text = (ROOT / "csrc/bindings/module.cpp").read_text()
    match = re.search(r"#define FLOWFAST_FAMILIES\(X\)((?: X\(\w+\))+)", text)
    assert match, "csrc/bindings/module.cpp must define FLOWFAST_FAMILIES(X)"
    return re.findall(r"X\((\w+)\)", match.group(1))


def test_families_are_listed():
    assert families() == ["assignment", "sinkhorn", "interpolant", "simplex", "dfm"]


@pytest.mark.parametrize("family", families())
def test_family_has_every_file(family):
    expected = [
        f"csrc/include/flowfast/{family}.h",
        f"csrc/cpu/{family}_cpu.cpp",
        f"csrc/cuda/{family}_cuda.cu",
        f"csrc/dispatch/{family}.cpp",
        f"csrc/bindings/{family}.cpp",
        f"flowfast/ops/{family}.py",
        f"flowfast/reference/{family}.py",
        f"tests/test_{family}.py",
        f"tests/emulation/test_emulated_{family}.py",
        f"benchmarks/bench_{family}.py",
    ]
    missing = [p for p in expected if not (ROOT / p).is_file()]
    assert not missing, f"family {family} lacks {missing}"
    binding = (ROOT / f"csrc/bindings/{family}.cpp").read_text()
    assert f"void bind_{family}(py::module_& m)" in binding


def test_cmake_globs_family_directories():
    """New families' files are picked up without editing the source lists."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for folder in ("csrc/cpu/*.cpp", "csrc/dispatch/*.cpp", "csrc/bindings/*.cpp", "csrc/cuda/*.cu"):
        assert folder in cmake
    emulation = (ROOT / "cmake/emulation.cmake").read_text()
    for folder in ("csrc/cpu/*.cpp", "csrc/dispatch/*.cpp", "csrc/bindings/*.cpp", "csrc/cuda/*.cu"):
        assert folder in emulation


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_production_code_never_imports_the_reference():
    """Only flowfast/reference itself and the ops' backend switch reach the pure-torch oracle."""
    allowed = {ROOT / "flowfast/ops/_switch.py"}
    offenders = []
    for path in sorted((ROOT / "flowfast").rglob("*.py")):
        if "reference" in path.relative_to(ROOT / "flowfast").parts or path in allowed:
            continue
        if any(name == "flowfast.reference" or name.startswith("flowfast.reference.") for name in _imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


def test_backend_switch_imports_the_reference_lazily():
    text = (ROOT / "flowfast/ops/_switch.py").read_text()
    assert "importlib.import_module(f\"flowfast.reference.{family}\")" in text


# --- host reads of device values per training step (each a CUDA synchronization) ---------------

# The CPU generator's (seed, offset) draw reads host memory, never the device.
# Reads that happen only for CPU tensors: the CPU generator's seed, the paths' default check_finite.
HOST_ONLY_SITES = ("flowfast._rng:draw_seed", "flowfast.paths:check_step_inputs", "flowfast.paths:check_loss_finite")


def _model(dim: int):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim))
    return lambda x, t: net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("path, limit", [(paths.IndependentCFM(0.1), 0), (paths.OptimalTransportCFM(0.1), 1),
                                         (paths.SchrodingerBridgeCFM(0.5), 1), (paths.TargetCFM(0.1), 0),
                                         (paths.VariancePreservingCFM(0.1, coupling="exact"), 1)],
                         ids=["icfm", "otcfm", "sbcfm", "fm", "vp-exact"])
def test_training_step_reads_the_device_at_most_once(path, limit):
    """Coupling, validation, sampling, loss and backward: the cost's finiteness check is the one
    read (SB-CFM: the cost scale, before the iterations; their convergence flag is read inside the
    kernels every check_every iterations and is not counted here)."""
    model = _model(2)
    x0, x1 = torch.randn(128, 2), torch.randn(128, 2) + 2
    g = torch.Generator().manual_seed(0)
    path.loss(model, x0, x1, generator=g).backward()  # warm-up
    with HostReads() as reads:
        path.loss(model, x0, x1, generator=g).backward()
    ours = [s for s in reads.sites if s.startswith("flowfast.")]
    device_reads = [s for s in ours if not s.startswith(HOST_ONLY_SITES)]
    assert len(device_reads) <= limit, device_reads


def test_host_read_counter_sees_reads():
    t = torch.ones(3)
    with HostReads() as reads:
        bool(t.all())
        float(t.sum())
        t.tolist()
        torch.allclose(t, t)
    assert reads.count() == 4
    assert bool(t.all())  # restored after the block
