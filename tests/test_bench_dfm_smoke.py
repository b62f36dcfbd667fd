"""Smoke test of benchmarks/bench_dfm.py: ``--quick`` runs and writes its JSON and markdown with
every case and field, a correctness failure (of the step or of the pairing) is reported (the row
is not timed, exit status 1), a reference over --torch-max-elements is skipped and said so, and the
popcount peak is the formula the notes state.

No timing assertions: benchmarks are never part of the test path, only their plumbing is.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flowfast.ops import dfm as ops

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dfm.py"
QUICK_STEPS = {(2000, d, v, t) for d in (32, 784) for v in (2, 40) for t in (1.0, 0.5)}
COLUMNS = "| case | N | D | V | B | t | pack ms | flowfast ms | torch ms | torch / ff | Gcmp/s | Gwords/s |"
TINY = ["--quick", "--device", "cpu", "--sizes", "200", "--dims", "32", "--times", "1.0"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flowfast_bench_dfm", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _quick(tmp_path, device: str, *extra) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--device", device, "--out", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (js,) = tmp_path.glob(f"dfm-quick-*{device}-*.json")
    assert js.with_suffix(".md").exists()
    payload = json.loads(js.read_text())
    payload["markdown"] = js.with_suffix(".md").read_text()
    return payload


def _check_quick(payload: dict, device: str) -> None:
    env = payload["env"]
    assert env["torch"] and env["date_utc"] and env["device"].startswith(device)
    rows = payload["rows"]
    steps = [r for r in rows if r["case"] == "step"]
    assert {(r["N"], r["D"], r["V"], r["t"]) for r in steps} == QUICK_STEPS and len(steps) == len(QUICK_STEPS)
    for r in steps:
        assert r["status"] == "ok" and r["checked"] == "16/16", r
        assert r["B"] == 16 and r["W"] == ops.packed_words(r["V"], r["D"])
        assert r["best_mismatches"] == 0 and r["posterior_max_err"] <= 1e-5 and r["x_new_agreement"] >= 0.999
        assert r["pack_s"] > 0 and r["flowfast_s"] > 0 and r["torch_s"] > 0
        assert r["flowfast"]["repeats"] >= 1 and r["torch"]["repeats"] >= 1
        assert r["ratio"] == pytest.approx(r["torch_s"] / r["flowfast_s"])
        assert r["cmp_per_s"] == pytest.approx(r["B"] * r["N"] * r["D"] / r["flowfast_s"])
        assert r["words_per_s"] == pytest.approx(r["B"] * r["N"] * r["W"] / r["flowfast_s"])
        assert ("popc_peak_pct" in r) == (device == "cuda")
    (pair,) = [r for r in rows if r["case"] == "pairflow_pairs"]
    assert (pair["N"], pair["D"], pair["V"], pair["status"]) == (300, 32, 40, "ok")
    assert pair["x0_agreement"] >= 0.999 and pair["flowfast_s"] > 0 and pair["torch_s"] > 0 and pair["ratio"] > 0
    assert len(rows) == len(QUICK_STEPS) + 1
    text = payload["markdown"]
    assert COLUMNS in text and "| pairflow_pairs | 300 | 32 | 40 |" in text and "Correctness before timing" in text


def test_quick_run_writes_results(tmp_path):
    payload = _quick(tmp_path, "cpu", "--threads", "1")
    assert payload["family"] == "dfm-quick-threads1" and payload["env"]["torch_threads"] == 1
    _check_quick(payload, "cpu")
    assert "no peak given" in payload["markdown"]


@pytest.mark.cuda
def test_quick_run_cuda(tmp_path):
    payload = _quick(tmp_path, "cuda")
    _check_quick(payload, "cuda")
    for r in payload["rows"]:
        if r["case"] == "step" and payload["extra"]["popcount_peak_words_per_s"]:
            assert r["popc_peak_pct"] > 0


def test_step_correctness_failure_is_reported(bench, tmp_path, monkeypatch, capsys):
    real = bench.reference_step

    def wrong(*args):
        x_new, posterior, best = real(*args)
        return x_new, posterior + 1e-3, best

    monkeypatch.setattr(bench, "reference_step", wrong)
    rc = bench.main(TINY + ["--vocabs", "2", "40", "--pairflow", "none", "--out", str(tmp_path)])
    assert rc == 1
    assert "CORRECTNESS FAILURE" in capsys.readouterr().err
    (js,) = tmp_path.glob("dfm-quick-cpu-*.json")
    rows = json.loads(js.read_text())["rows"]
    assert [(r["case"], r["V"]) for r in rows] == [("step", 2), ("step", 40)]
    for r in rows:  # not timed
        assert r["status"].startswith("FAILED: posterior differs") and r["failed"] is True
        assert "flowfast_s" not in r and "torch_s" not in r and r["flowfast ms"] == "—"


def test_pairing_correctness_failure_is_reported(bench, tmp_path, monkeypatch, capsys):
    real = bench.reference_pairs
    monkeypatch.setattr(bench, "reference_pairs", lambda data, vocab, steps: (real(data, vocab, steps) + 1) % vocab)
    rc = bench.main(TINY + ["--vocabs", "4", "--pairflow", "60x16x4x3", "--out", str(tmp_path)])
    assert rc == 1
    assert "CORRECTNESS FAILURE pairflow_pairs" in capsys.readouterr().err
    (js,) = tmp_path.glob("dfm-quick-cpu-*.json")
    step, pair = json.loads(js.read_text())["rows"]
    assert step["status"] == "ok" and step["flowfast_s"] > 0
    assert pair["case"] == "pairflow_pairs" and pair["status"].startswith("FAILED: x0 equal on only")
    assert pair["x0_agreement"] < 0.999 and "flowfast_s" not in pair and "torch_s" not in pair


def test_slow_reference_is_skipped_not_faked(bench, tmp_path):
    rc = bench.main(TINY + ["--vocabs", "40", "--times", "1.0", "0.5", "--torch-max-elements", "1000",
                            "--pairflow", "none", "--out", str(tmp_path)])
    assert rc == 0
    (js,) = tmp_path.glob("dfm-quick-cpu-*.json")
    rows = json.loads(js.read_text())["rows"]
    assert [r["t"] for r in rows] == [1.0, 0.5]
    for r in rows:  # 16 * 200 * 32 comparisons > 1000: one query checked, the reference not timed
        assert r["torch ms"].startswith("skipped (too slow") and r["checked"] == "1/16"
        assert r["status"] == "ok (checked the first 1 of 16 queries)"
        assert r["flowfast_s"] > 0 and "torch_s" not in r and "ratio" not in r and r["torch / ff"] == "—"


def test_popcount_peak_formula(bench, monkeypatch):
    props = SimpleNamespace(major=9, minor=0, multi_processor_count=132, clock_rate=1_980_000)  # kHz
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    args = SimpleNamespace(popc_per_sm_clock=None, sm_clock_mhz=None)
    device = torch.device("cuda", 0)
    peak, text = bench.popcount_peak(device, args)
    assert peak == pytest.approx(132 * 16 * 1.98e9 / 2) and "132 SMs x 16 POPC/clock/SM" in text
    peak, text = bench.popcount_peak(device, SimpleNamespace(popc_per_sm_clock=32, sm_clock_mhz=1000.0))
    assert peak == pytest.approx(132 * 32 * 1e9 / 2) and "--sm-clock-mhz" in text
    props.major = 12
    peak, text = bench.popcount_peak(device, args)
    assert peak is None and "not in the table" in text
