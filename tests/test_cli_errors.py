"""Regression tests of issue 24's CLI findings: one-line errors and a non-zero exit instead of
tracebacks, no silent configuration drift on resume, no stale checkpoint temporaries."""

from __future__ import annotations

import json
import os

import pytest

from flowfast.__main__ import main
from flowfast.testing import assert_one_line_error

TRAIN = ["train", "--steps", "3", "--batch-size", "32", "--hidden", "16", "--depth", "2", "--no-progress",
         "--log-every", "1"]


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("device, needle", [("tpu", "--device must be cpu, cuda"),
                                            ("cuda", "cannot use CUDA here")])
def test_bad_device_is_one_line(capsys, tmp_path, device, needle):
    if device == "cuda":
        import flowfast

        if flowfast.cuda_available():
            pytest.skip("CUDA is usable here")
    code, err = _run(capsys, TRAIN + ["--out", str(tmp_path / "run"), "--device", device])
    assert_one_line_error(code, err, needle)


def test_out_under_a_file_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(capsys, TRAIN + ["--out", str(blocker / "run")])
    assert_one_line_error(code, err)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04truncated"])
def test_broken_checkpoint_is_one_line(capsys, tmp_path, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(content)
    for argv in (TRAIN + ["--out", str(run), "--resume"], ["sample", "--checkpoint", str(run / "checkpoint.pt"),
                                                          "--out", str(tmp_path / "x.pt")],
                 ["eval", "--checkpoint", str(run / "checkpoint.pt")]):
        code, err = _run(capsys, argv)
        assert_one_line_error(code, err, "checkpoint.pt")


def test_checkpoint_that_is_a_directory_is_one_line(capsys, tmp_path):
    code, err = _run(capsys, ["eval", "--checkpoint", str(tmp_path)])
    assert_one_line_error(code, err, "directory")


def test_huge_seed_is_an_argument_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(TRAIN + ["--out", str(tmp_path / "run"), "--seed", str(2**70)])
    assert info.value.code == 2
    assert "must be in [0, 2**63)" in capsys.readouterr().err


def test_resume_with_another_configuration_is_refused(capsys, tmp_path):
    run = str(tmp_path / "run")
    assert main(TRAIN + ["--out", run]) == 0
    capsys.readouterr()
    code, err = _run(capsys, TRAIN + ["--out", run, "--resume", "--lr", "0.5", "--path", "icfm"])
    assert_one_line_error(code, err, "differs from the checkpoint", "lr: checkpoint", "path: checkpoint")
    assert main(TRAIN[:2] + ["6"] + TRAIN[3:] + ["--out", run, "--resume"]) == 0  # same config resumes


def test_torn_last_metrics_line_does_not_block_resume(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.')  # a kill mid-write
    assert main(TRAIN[:2] + ["5"] + TRAIN[3:] + ["--out", str(run), "--resume"]) == 0
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert [r["step"] for r in records if "loss" in r][-1] == 5


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    from flowfast.train import remove_stale_temporaries

    folder = tmp_path
    dead = folder / ".checkpoint.pt.tmp.999999999"
    mine = folder / f".checkpoint.pt.tmp.{os.getpid()}"
    other = folder / ".checkpoint.pt.tmp.notapid"
    for f in (dead, mine, other):
        f.write_bytes(b"x")
    assert remove_stale_temporaries(str(folder), "checkpoint.pt") == [dead.name]
    assert not dead.exists() and mine.exists() and other.exists()


def test_override_config_applies_the_new_values_for_real(capsys, tmp_path):
    import torch

    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    argv = TRAIN[:2] + ["6"] + TRAIN[3:] + ["--out", str(run), "--resume", "--lr", "0.0123", "--path", "icfm",
                                            "--override-config"]
    assert main(argv) == 0
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 6
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.0123]
    assert state["config"]["lr"] == 0.0123 and state["config"]["path"] == "icfm"
    assert json.loads((run / "config.json").read_text())["lr"] == 0.0123
    capsys.readouterr()
    code, err = _run(capsys, TRAIN + ["--out", str(run), "--resume", "--hidden", "8", "--override-config"])
    assert_one_line_error(code, err, "cannot change model")


def test_a_diverged_run_is_one_line(capsys, tmp_path):
    code, err = _run(capsys, TRAIN + ["--out", str(tmp_path / "run"), "--lr", "1e30"])
    assert_one_line_error(code, err, "training diverged", "non-finite")
