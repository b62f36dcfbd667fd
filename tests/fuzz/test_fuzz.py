"""The project's fuzz suite, bounded for `make test` (FLOWFAST_FUZZ_EXAMPLES, default 150 cases
per family); `make fuzz` runs a larger budget and prints the counts per op and outcome. Every case
runs in a supervised child process (harness.py): a crash or a hang is a failing outcome.

The command-line family (cli_cases.py) starts a process per case (seconds each), so its budget is
its own: FLOWFAST_FUZZ_CLI_EXAMPLES, by default 10 cases, or FLOWFAST_FUZZ_EXAMPLES / 20 when that
is set larger (`make fuzz`: 100)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli_cases  # noqa: E402
import specs  # noqa: E402
from harness import run_all  # noqa: E402

EXAMPLES = int(os.environ.get("FLOWFAST_FUZZ_EXAMPLES", "150"))
CLI_EXAMPLES = int(os.environ.get("FLOWFAST_FUZZ_CLI_EXAMPLES", str(max(10, EXAMPLES // 20))))


def _draw(strategy, count: int, seed: int) -> list[dict]:
    drawn = []

    @settings(max_examples=count, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        drawn.append(data.draw(strategy))

    collect()
    return drawn


@pytest.mark.parametrize("family", ["assignment", "sinkhorn", "pairing", "odeint", "paths"])
def test_fuzz_family_has_no_wrong_nonfinite_crash_or_hang(family):
    cases = _draw(getattr(specs, family), EXAMPLES, seed=0)
    counts, bad = run_all(cases)
    print(f"\nfuzz {family} ({len(cases)} cases): {counts}")
    assert not bad, f"{len(bad)} of {len(cases)} cases: " + "; ".join(f"{o}: {s}" for o, s in bad[:5])


def test_fuzz_cli_has_no_wrong_nonfinite_crash_or_hang(tmp_path):
    cases = _draw(specs.cli, CLI_EXAMPLES, seed=0)
    counts, bad = cli_cases.run_all(cases, str(tmp_path))
    print(f"\nfuzz cli ({len(cases)} cases): {counts}")
    assert not bad, f"{len(bad)} of {len(cases)} cases: " + "; ".join(
        f"{o}: {cmd} [stderr: {tail}]" for o, cmd, tail in bad[:5])
