"""torchcfm's own test suite, run with ``torchcfm.conditional_flow_matching`` and
``torchcfm.optimal_transport`` replaced by :mod:`flowfast.compat.torchcfm` (issue 22 §2).

The suite is not vendored. It is looked for at ``$FLOWFAST_TORCHCFM_TESTS`` (a ``tests/``
directory of torchcfm's repository or sdist), else under ``build/torchcfm-tests/*/tests`` (where
``tests/peers/get_torchcfm_tests.sh`` unpacks the sdist); the test
skips when there is none or torchcfm is not installed. It runs in a subprocess (its own pytest
config: torchcfm's warning filters, not flowfast's), with ``tests/peers/torchcfm_shim_plugin.py``
doing the substitution.

Known difference (asserted, so a change either way is noticed): ``test_wasserstein`` compares
``wasserstein(..., "sinkhorn", reg=0.01)`` with POT's ``sinkhorn2`` on a float32 cost, whose Gibbs
kernel ``exp(-M / 0.01)`` underflows in float32: POT stops at iteration 0 and returns about 1e-31;
the shim returns the entropic transport cost (about 2.11, flowfast's log-domain Sinkhorn in float64).
Its exact W1/W2 asserts (equality to the last digit with POT's emd2) pass.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = Path(__file__).resolve().parent / "peers"
KNOWN_DIFFERENCES = {"tests/test_optimal_transport.py::test_wasserstein"}
# torchcfm's pyproject.toml filters (its suite runs with these), without its --doctest-modules
INI = """[pytest]
filterwarnings =
    ignore::DeprecationWarning
    ignore::UserWarning
"""


def _find_suite() -> Path | None:
    given = os.environ.get("FLOWFAST_TORCHCFM_TESTS")
    if given:
        path = Path(given)
        return path if (path / "test_optimal_transport.py").is_file() else None
    patterns = [str(REPO / "build" / "torchcfm-tests" / "*" / "tests")]
    for pattern in patterns:
        for found in sorted(glob.glob(pattern), reverse=True):
            if (Path(found) / "test_optimal_transport.py").is_file():
                return Path(found)
    return None


def _run_suite(suite: Path, tmp_path: Path, *plugin: str) -> subprocess.CompletedProcess:
    ini = tmp_path / "pytest.ini"
    ini.write_text(INI)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-c", str(ini),
           "--rootdir", str(suite.parent), *plugin, "tests"]
    return subprocess.run(cmd, cwd=suite.parent, env=env, capture_output=True, text=True, timeout=900)


def _outcome(proc: subprocess.CompletedProcess) -> tuple[int, int, set[str]]:
    out = proc.stdout + proc.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors)\b", out)}
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M))
    return counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0), failed


@pytest.mark.slow
def test_torchcfm_suite_passes_on_the_shim(tmp_path):
    pytest.importorskip("torchcfm")
    pytest.importorskip("ot")
    suite = _find_suite()
    if suite is None:
        pytest.skip("torchcfm's tests/ not found: set FLOWFAST_TORCHCFM_TESTS or run tests/peers/get_torchcfm_tests.sh")
    proc = _run_suite(suite, tmp_path, "-p", "torchcfm_shim_plugin")
    passed, failed, names = _outcome(proc)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert "-> flowfast.compat.torchcfm (in place)" in proc.stdout, report  # the plugin substituted the shim
    assert passed > 0, report
    assert names <= KNOWN_DIFFERENCES, f"unexpected failures {sorted(names - KNOWN_DIFFERENCES)}\n{report}"
    assert failed == len(names), report
