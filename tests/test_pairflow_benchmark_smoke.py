"""Smoke tests of benchmarks/pairflow_pairs.py and benchmarks/pairflow_tasks.py: ``--quick`` runs,
writes JSON and markdown with the expected rows, and the numbers are the kind they claim (paired
sources closer to the data than the independent coupling; every (method, sampler, K) row present).
No timing assertions."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, tmp_path, *extra):
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(tmp_path), *extra],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text())


def test_pairflow_pairs_quick(tmp_path):
    payload = _run("pairflow_pairs.py", tmp_path)
    rows = {(r["set"], r["tau"]): r for r in payload["rows"]}
    assert set(rows) == {("toy", 1.0), ("toy", 0.5), ("digits", 1.0), ("digits", 0.5)}
    for r in rows.values():
        assert r["hamming_paired"] < r["hamming_independent_expected"]
        assert r["seconds"] > 0
    assert rows[("toy", 0.5)]["hamming_paired"] < rows[("toy", 1.0)]["hamming_paired"]


def test_pairflow_tasks_quick(tmp_path):
    payload = _run("pairflow_tasks.py", tmp_path, "--methods", "dfm", "pairflow", "--sample-steps", "1", "4")
    keys = {(r["method"], r["sampler"], r["K"]) for r in payload["rows"]}
    assert keys == {(m, s, k) for m in ("dfm", "pairflow") for s in ("sample", "greedy") for k in (1, 4)}
    runs = payload["extra"]["runs"]
    assert [r["method"] for r in runs] == ["dfm", "pairflow"]
    assert runs[1]["pairing_s"] > 0 and runs[0]["pairing_s"] is None
