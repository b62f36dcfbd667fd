"""Smoke test of benchmarks/bench_simplex.py: ``--quick`` runs and writes its JSON and markdown, the
eager formulas it times are flowfast.reference.simplex's, and a correctness failure is reported
(the case is not timed, exit status 1).

No timing assertions: benchmarks are never part of the test path, only their plumbing is.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowfast.reference import simplex as ref

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_simplex.py"
QUICK_CASES = {(8, 16, 32), (2, 8, 3000)}
OPS = {"step", "step-argmax", "ecld", "csd"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flowfast_bench_simplex", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("kind", ["ecld", "csd"])
def test_eager_loss_is_the_reference(bench, kind):
    """The benchmark's eager (B, L, V) loss and gradients equal the reference on the (R, V) rows."""
    case = bench.Case(3, 5, 11, "fp64")
    inp = bench.make_inputs(case, torch.device("cpu"))
    loss, gz, gzd = bench.with_backward(bench.make_loss_forward("eager", kind, inp), inp)()

    V, L = case.V, case.L
    z = inp.logits.reshape(-1, V).clone().requires_grad_(True)
    zdot = inp.logits_dot.reshape(-1, V).clone().requires_grad_(True)
    want = ref.distill_loss(ref.ECLD if kind == "ecld" else ref.CSD, z, zdot, inp.target.reshape(-1, V),
                            inp.x.reshape(-1, V), inp.s.repeat_interleave(L), inp.t.repeat_interleave(L),
                            bench.CE_WEIGHT, bench.TD_WEIGHT, bench.MIN_ONE_MINUS_S)
    rz, rzd = torch.autograd.grad(want.mean(), (z, zdot))
    torch.testing.assert_close(loss.reshape(-1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gz.reshape(-1, V), rz, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gzd.reshape(-1, V), rzd, rtol=1e-12, atol=1e-14)


def test_eager_step_is_the_reference(bench):
    case = bench.Case(3, 5, 11, "fp32")
    inp = bench.make_inputs(case, torch.device("cpu"))
    x_new, argmax = bench.make_step("eager", inp, True)()
    V, L = case.V, case.L
    rx, ra, _ = ref.simplex_step(inp.logits.reshape(-1, V), inp.x.reshape(-1, V),
                                               inp.gamma.repeat_interleave(L), True, False)
    torch.testing.assert_close(x_new.reshape(-1, V), rx, rtol=1e-6, atol=1e-7)
    assert torch.equal(argmax.reshape(-1), ra)


def test_must_move_bytes(bench):
    case = bench.Case(2, 3, 5, "bf16")
    assert bench.must_move_bytes(case, "step") == 3 * 30 * 2
    assert bench.must_move_bytes(case, "step-argmax") == 3 * 30 * 2 + 8 * 6
    assert bench.must_move_bytes(case, "ecld") == 5 * 30 * 2
    assert bench.must_move_bytes(case, "csd") == 6 * 30 * 2


def test_quick_run_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--device", "cpu", "--threads", "1",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = tmp_path.glob("simplex-quick-threads1-cpu-*.json")
    md = js.with_suffix(".md")
    assert md.exists()
    payload = json.loads(js.read_text())
    assert payload["family"] == "simplex-quick-threads1"
    env = payload["env"]
    assert env["torch"] and env["torch_threads"] == 1 and env["device"] == "cpu" and env["date_utc"]
    raws = payload["extra"]["raw"]
    assert {(r["B"], r["L"], r["V"]) for r in raws} == QUICK_CASES
    assert {r["dtype"] for r in raws} == {"fp32", "bf16"}
    assert len(raws) == len(payload["rows"]) == len(QUICK_CASES) * 2 * len(OPS)
    for r in raws:
        assert r["status"] == "ok", r
        assert set(r["times"]) == {"ff", "eager", "kernel", "compile"}
        assert r["times"]["compile"] == "off"  # --quick: no torch.compile
        for k in ("ff", "eager"):
            assert r["times"][k]["median_s"] > 0 and r["times"][k]["repeats"] >= 1
        assert (r["times"]["kernel"] is None) == r["op"].startswith("step")
        assert r["ratio_eager_over_ff"] > 0 and r["gbs_ff"] > 0
        assert r["check"]["max_rel_err"] <= (1e-4 if r["dtype"] == "fp32" else 2e-2)
        mem = r["memory"]
        # the fused op materializes its outputs; the eager version at least as many B·L·V tensors
        expected_outputs = 1 if r["op"].startswith("step") else 2
        assert expected_outputs <= mem["ff"]["blv_tensors"] <= mem["eager"]["blv_tensors"]
        assert 0 < mem["ff"]["peak_bytes"] and 0 < mem["eager"]["peak_bytes"]
    text = md.read_text()
    assert "| op | B×L×V | dtype | ff fused | eager |" in text
    assert "| ECLD fwd+bwd | 2×8×3000 | bf16 |" in text and "Correctness first" in text


def test_correctness_failure_skips_the_case(bench, tmp_path, monkeypatch, capsys):
    real = bench.eager_loss
    monkeypatch.setattr(bench, "eager_loss", lambda *a: 1.01 * real(*a))
    rc = bench.main(["--quick", "--device", "cpu", "--shapes", "2x4x8", "--dtypes", "fp32", "--ops", "step", "ecld",
                     "--out", str(tmp_path)])
    assert rc == 1
    assert "CORRECTNESS FAILURE" in capsys.readouterr().err
    (js,) = tmp_path.glob("simplex-quick-cpu-*.json")
    raws = json.loads(js.read_text())["extra"]["raw"]
    assert [r["op"] for r in raws] == ["step", "ecld"]
    for r in raws:  # the whole case is skipped, untimed
        assert r["status"].startswith("correctness FAILED") and "ecld" in r["status"] and r["times"] == {}
