"""Smoke test of the benchmark harness (benchmarks/_timing.py): it runs, and writes its files.

No timing assertions: benchmarks are never part of the test path, only their plumbing is.
"""

import importlib.util
import json
from pathlib import Path

import pytest

TIMING = Path(__file__).resolve().parents[1] / "benchmarks" / "_timing.py"


@pytest.fixture(scope="module")
def timing():
    spec = importlib.util.spec_from_file_location("flowfast_bench_timing", TIMING)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_fn_returns_stats(timing):
    calls = []
    res = timing.time_fn(lambda: calls.append(1), device="cpu", warmup=2, min_time=0.01, max_time=0.05)
    assert set(res) >= {"median_s", "min_s", "repeats"}
    assert res["repeats"] >= 1
    assert 1 <= len(calls) - res["repeats"] <= 2  # warmup calls (the 2nd is skipped if the 1st was slow)
    assert 0.0 <= res["min_s"] <= res["median_s"]

    fixed = timing.time_fn(lambda: None, device="cpu", warmup=0, repeats=4)
    assert fixed["repeats"] == 4


def test_write_results_files(timing, tmp_path):
    env = timing.environment("cpu")
    rows = [{"case": "single", "n": 4, "ff CPU": timing.fmt_ms(1e-3), "notes": "a | b"}]
    out = timing.write_results("smoke", rows, env, tmp_path, notes=["a note"], extra={"raw": [1]})
    assert out["json"].exists() and out["md"].exists()
    assert out["json"].name.startswith("smoke-cpu-") and out["json"].suffix == ".json"
    data = json.loads(out["json"].read_text())
    for key in ("device", "device_name", "device_slug", "cpu_count", "torch", "versions", "flowfast_build",
                "python", "date_utc"):
        assert key in data["env"], key
    assert set(data["env"]["versions"]) >= {"numpy", "scipy", "pot", "lap", "torchcfm"}
    assert data["rows"] == rows
    md = out["md"].read_text()
    assert "| case |" in md and "a note" in md


def test_device_slug(timing):
    assert timing.device_slug("cuda", "NVIDIA H100 80GB HBM3") == "cuda-h100"
    assert timing.device_slug("cuda", "NVIDIA A100-SXM4-80GB") == "cuda-a100"
    assert timing.device_slug("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "cpu-intel-xeon-platinum-8375c"
