"""Smoke test of benchmarks/bench_dfm.py: a tiny grid runs, writes JSON and markdown with one row
per case, and a correctness failure is reported (the case is not timed, exit status 1). No timing
assertions."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dfm.py"
TINY = ["--device", "cpu", "--sizes", "300", "--dims", "32", "70", "--vocabs", "2", "40", "--batch", "8",
        "--min-time", "0.01", "--max-time", "0.05"]


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("flowfast_bench_dfm", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_tiny_grid_writes_results(bench, tmp_path):
    assert bench.main([*TINY, "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("dfm-*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    rows = json.loads(files[0].read_text())["rows"]
    assert {(r["D"], r["V"], r["t"]) for r in rows} == {(d, v, t) for d in (32, 70) for v in (2, 40) for t in (1.0, 0.5)}
    assert all(r["status"] == "ok" and "torch / ff" in r for r in rows)


def test_correctness_failure_is_reported(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "check", lambda got, want: "injected")
    assert bench.main([*TINY, "--out", str(tmp_path)]) == 1
    rows = json.loads(next(tmp_path.glob("dfm-*.json")).read_text())["rows"]
    assert all(r["status"] == "FAILED: injected" and "flowfast_ms" not in r for r in rows)
