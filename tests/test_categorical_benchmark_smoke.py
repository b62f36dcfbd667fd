"""Smoke test of benchmarks/categorical_tasks.py: ``--quick`` (markov + brackets, one seed, 20 steps of a
tiny network) runs and writes its JSON and markdown with the expected rows and finite numbers; ``--merge``
of the same file re-summarises it.

No quality assertions (20 training steps learn next to nothing); only the plumbing and the row set.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "categorical_tasks.py"
METRICS = {"markov": {"nll_ratio", "nll_per_token", "unigram_entropy", "unique_fraction"},
           "brackets": {"valid_fraction", "unique_valid_fraction", "unigram_entropy"}}
SAMPLERS = {("vfm", "euler", k) for k in (1, 2, 4, 8, 100)} | {
    (m, "map", k) for m in ("csd", "ecld") for k in (1, 2, 4, 8)} | {(m, "euler", 100) for m in ("csd", "ecld")}
PEER = {("peer", "peer", k) for k in (1, 2, 4, 8, 32)}


def _run(args, timeout):
    with subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err[-3000:]
    return out


def _peer_installed() -> bool:
    """flow_matching is an optional peer (scripts/setup_env.sh installs it where the index is reachable)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("flow_matching", "tqdm", "torchdiffeq"))


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_run_writes_results(tmp_path):
    out = _run(["--quick", "--out", str(tmp_path)], timeout=170)
    assert "goals of the issue" in out
    (js,) = tmp_path.glob("categorical-markov-brackets-quick-cpu-*.json")
    md = js.with_suffix(".md")
    assert md.exists()
    payload = json.loads(js.read_text())
    assert payload["family"] == "categorical-markov-brackets-quick"
    env = payload["env"]
    assert env["torch"] == __import__("torch").__version__ and env["device"] == "cpu" and env["date_utc"]
    extra = payload["extra"]
    assert extra["settings"]["steps"] == 20 and extra["settings"]["seeds"] == [0]

    rows = extra["per_seed"]
    for task, metrics in METRICS.items():
        got = {(r["method"], r["sampler"], r["K"]) for r in rows if r["task"] == task}
        want = SAMPLERS | (PEER if task == "markov" and _peer_installed() else set())
        assert want <= got, (task, want - got)
        for r in rows:
            if r["task"] != task:
                continue
            assert metrics <= set(r), (task, r)
            for key in metrics:
                if key == "unique_valid_fraction" or r["method"] in ("data", "noise"):
                    assert r[key] is None or _finite(r[key]), (task, r)
                else:
                    assert _finite(r[key]), (task, key, r)
            if r["method"] not in ("data", "noise"):
                assert r["NFE"] == r["K"], r
                reference = r["method"] in ("csd", "ecld") and r["sampler"] == "euler"
                assert r["n"] == (32 if reference else 64), r
    summary = {(r["task"], r["method"], r["sampler"], r["K"]): r for r in payload["rows"]}
    mean, std = summary[("markov", "ecld", "map", 1)]["nll_ratio"]
    assert _finite(mean) and mean > 0 and std == 0.0

    runs = extra["runs"]
    assert {(r["task"], r["method"]) for r in runs} == {
        ("markov", m) for m in ("vfm", "csd", "ecld", *(("peer",) if _peer_installed() else ()))} | {
        ("brackets", m) for m in ("vfm", "csd", "ecld")}
    assert all(_finite(r["steps_per_s"]) and r["steps_per_s"] > 0 and _finite(r["final_loss"]) for r in runs)
    goals = extra["goals"]
    assert {g["task"] for g in goals} == {"markov", "brackets"} and all(g["met"] in ("yes", "no", "n/a") for g in goals)

    text = md.read_text()
    assert "#### markov" in text and "#### brackets" in text and "| ecld | map | 1 | 1 |" in text
    assert "arXiv 2602.16813" in text

    merged = tmp_path / "merged"
    _run(["--merge", str(js), "--out", str(merged)], timeout=60)
    (mjs,) = merged.glob("categorical-markov-brackets-quick-cpu-*.json")
    again = json.loads(mjs.read_text())
    assert len(again["extra"]["per_seed"]) == len(rows) and again["extra"]["merged_from"] == [js.name]
