"""Smoke test of benchmarks/nfm_coupling_cost.py: a --quick run at tiny batch sizes writes its JSON
and markdown with every (setting, B) row and every method timed; a call predicted over --max-call is
skipped (and said so), a missing torchcfm is reported as not installed.

No timing assertions: only the plumbing is tested (times positive and finite, ratios consistent).
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "nfm_coupling_cost.py"
METHODS = ("nfm", "exact", "sinkhorn", "torchcfm")
HEADER = ("| setting | B | NFM ms | ff exact ms | ff sinkhorn ms | torchcfm exact ms | ff exact / NFM | "
          "torchcfm exact / NFM | ff sinkhorn / NFM |")


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("flowfast_bench_nfm_coupling_cost", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        torch.set_num_threads(threads)  # main() sets it for the whole process
        sys.modules.pop(spec.name, None)


def _run(bench, tmp_path, *extra) -> dict:
    assert bench.main(["--quick", "--device", "cpu", "--sizes", "16", "32", "--out-dir", str(tmp_path), *extra]) == 0
    (js,) = tmp_path.glob("nfm-coupling-cost-quick-cpu-*.json")
    md = js.with_suffix(".md")
    assert md.exists()
    payload = json.loads(js.read_text())
    payload["markdown"] = md.read_text()
    return payload


def _timed(row: dict, method: str) -> None:
    assert row[f"{method}_status"] == "ok", row
    seconds = row[f"{method}_s"]
    assert math.isfinite(seconds) and seconds > 0
    assert row[method]["repeats"] >= 1 and row[method]["median_s"] == seconds


def test_quick_run_writes_results(bench, tmp_path):
    payload = _run(bench, tmp_path)
    assert payload["family"] == "nfm-coupling-cost-quick"
    env = payload["env"]
    assert env["torch"] and env["date_utc"] and env["device"] == "cpu" and env["torch_threads"] == 1
    rows = payload["rows"]
    assert [(r["setting"], r["B"]) for r in rows] == [("toy2d", 16), ("toy2d", 32), ("digits", 16), ("digits", 32)]
    for r in rows:
        for m in METHODS:
            _timed(r, m)
        for m in ("exact", "torchcfm", "sinkhorn"):
            assert r[f"{m}_over_nfm"] == pytest.approx(r[f"{m}_s"] / r["nfm_s"])
    assert set(payload["extra"]["crossover"]) == {"toy2d", "digits"}
    text = payload["markdown"]
    assert HEADER in text and "crossover toy2d" in text and "crossover digits" in text
    assert "| digits | 32 |" in text


def test_slow_calls_skipped_and_missing_peer_reported(bench, tmp_path, monkeypatch):
    def missing():
        raise ImportError("No module named 'torchcfm'")

    monkeypatch.setattr(bench._timing, "load_torchcfm_plan_sampler", missing)
    payload = _run(bench, tmp_path, "--settings", "digits", "--max-call", "1e-9")
    first, second = payload["rows"]
    assert (first["B"], second["B"]) == (16, 32)
    for m in ("nfm", "exact", "sinkhorn"):
        _timed(first, m)  # no earlier size to predict from: timed
        assert second[f"{m}_status"].startswith("skipped (predicted") and f"{m}_s" not in second
    for r in (first, second):
        assert r["torchcfm_status"].startswith("not installed") and "torchcfm_s" not in r
        assert r["torchcfm exact / NFM"] == "—"
    assert "torchcfm: not installed" in payload["markdown"]
