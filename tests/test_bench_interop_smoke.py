"""Smoke test of benchmarks/bench_interop.py: ``--quick`` runs every case (torch, numpy and, when
installed, JAX routes, each checked equal to the torch call before timing) and writes its JSON and
markdown. No timing assertions: only the plumbing is tested."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_interop.py"


def test_quick_run_writes_every_case(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (json_file,) = tmp_path.glob("interop-quick-*.json")
    (md_file,) = tmp_path.glob("interop-quick-*.md")
    text = md_file.read_text()
    for case in ("linear_assignment (32, 128, 128)", "linear_assignment (1, 4, 4)", "sinkhorn(cost, eps=0.1).f",
                 "IndependentCFM(0.1).sample_paired"):
        assert case in text, case
    assert json.loads(json_file.read_text())
