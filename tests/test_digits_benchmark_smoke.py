"""Smoke test of benchmarks/digits_flowmaps.py: ``--quick`` runs and writes its JSON, markdown and PNG.

No quality assertions (100 training steps make blurry digits); only the plumbing and the row set.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_flowmaps.py"
SAMPLERS = {"map-1", "map-2", "map-4", "map-8", "dopri5", "euler-100"}
ANCHORS = {"real held-out", "noise U[-1,1]", "source x0 ~ N(0,I)"}
SCORES = {"confidence", "confident_fraction", "class_entropy", "nn_distance", "nn_ratio", "close_fraction",
          "far_fraction", "clamped_fraction"}


def test_quick_run_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = tmp_path.glob("digits-flowmaps-quick-cpu-*.json")
    md, png = js.with_suffix(".md"), js.with_suffix(".png")
    assert md.exists() and png.exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    payload = json.loads(js.read_text())
    assert payload["family"] == "digits-flowmaps-quick"
    assert payload["env"]["torch"] and payload["env"]["torch_threads"] == 1
    rows = {r["sampler"]: r for r in payload["rows"]}
    assert set(rows) == SAMPLERS | ANCHORS
    for name in SAMPLERS | ANCHORS:
        assert SCORES <= set(rows[name]), name
    for k in (1, 2, 4, 8):
        assert rows[f"map-{k}"]["NFE"] == k and rows[f"map-{k}"]["n"] == 200
    assert rows["euler-100"]["NFE"] == 100 and rows["dopri5"]["NFE"] > 0
    # the anchors bracket the scale: real digits are clear and novel, noise is neither
    real, noise = rows["real held-out"], rows["noise U[-1,1]"]
    assert real["n"] == 360 and real["confidence"] > 0.9 and 0.8 < real["nn_ratio"] < 1.2
    assert noise["confidence"] < 0.3 and noise["nn_ratio"] > 2
    extra = payload["extra"]
    assert extra["n_train"] + extra["n_heldout"] == 1797
    assert extra["settings"]["steps"] == 100 and extra["train_ms_per_step"] > 0
    text = md.read_text()
    assert "| map-1 |" in text and "flowfast/digit_quality.py" in text
