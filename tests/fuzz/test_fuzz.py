"""The project's fuzz suite, bounded for `make test` (FLOWFAST_FUZZ_EXAMPLES, default 150 cases
per family); `make fuzz` runs a larger budget and prints the counts per op and outcome. Every case
runs in a supervised child process (harness.py): a crash or a hang is a failing outcome."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specs  # noqa: E402
from harness import run_all  # noqa: E402

EXAMPLES = int(os.environ.get("FLOWFAST_FUZZ_EXAMPLES", "150"))


def _draw(strategy, count: int, seed: int) -> list[dict]:
    drawn = []

    @settings(max_examples=count, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        drawn.append(data.draw(strategy))

    collect()
    return drawn


@pytest.mark.parametrize("family", ["assignment", "sinkhorn", "pairing", "odeint"])
def test_fuzz_family_has_no_wrong_nonfinite_crash_or_hang(family):
    cases = _draw(getattr(specs, family), EXAMPLES, seed=0)
    counts, bad = run_all(cases)
    print(f"\nfuzz {family} ({len(cases)} cases): {counts}")
    assert not bad, f"{len(bad)} of {len(cases)} cases: " + "; ".join(f"{o}: {s}" for o, s in bad[:5])
