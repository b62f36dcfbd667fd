"""The CLI's NFM commands: `train-nf` (a TarFlow teacher: checkpoint, JSON with W2, eval/sample of
it), `train --coupling nfm --teacher` (a student paired by the teacher; eval, the per-row cache
with --data and --nfm-draws, exact --resume) and their one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from flowfast import data
from flowfast.__main__ import main
from flowfast.nfm import NFMCoupling, TarFlow, load_flow
from flowfast.train import Trainer
from flowfast.testing import assert_one_line_error

TRAIN_NF = ["train-nf", "--steps", "30", "--width", "16", "--blocks", "2", "--layers", "1", "--no-progress"]
STUDENT = ["train", "--coupling", "nfm", "--steps", "30", "--hidden", "16", "--depth", "2", "--batch-size", "64",
           "--no-progress"]


def _quiet_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One teacher (train-nf on moons), one student on it, one plain cfm run: built once."""
    root = tmp_path_factory.mktemp("nfm_cli")
    teacher = root / "teacher"
    code, out, err = _quiet_main(TRAIN_NF + ["--target", "moons", "--out", str(teacher), "--eval-n", "200"])
    assert code == 0, err
    student = root / "student"
    code, student_out, err = _quiet_main(STUDENT + ["--path", "icfm", "--teacher", str(teacher / "checkpoint.pt"),
                                                    "--target", "moons", "--out", str(student)])
    assert code == 0, err
    cfm = root / "cfm"
    code, _, err = _quiet_main(["train", "--steps", "2", "--batch-size", "16", "--hidden", "8", "--depth", "1",
                                "--no-progress", "--out", str(cfm)])
    assert code == 0, err
    return {"root": root, "teacher": teacher / "checkpoint.pt", "teacher_reply": json.loads(out),
            "student": student / "checkpoint.pt", "student_reply": json.loads(student_out),
            "cfm": cfm / "checkpoint.pt"}


def _error(capsys, argv, *needles):
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_train_nf_writes_a_checkpoint_and_reports_w2(runs):
    reply = runs["teacher_reply"]
    assert reply["step"] == 30 and reply["steps_run"] == 30 and math.isfinite(reply["last_loss"])
    assert reply["checkpoint"] == str(runs["teacher"]) and runs["teacher"].exists()
    report = reply["eval"]
    assert report["method"] == "inverse" and report["n"] == 200 and report["nfe"] == 2 * (2 - 1)
    assert math.isfinite(report["w2"]) and report["w2"] > 0
    config = json.loads((runs["teacher"].parent / "config.json").read_text())
    assert config["method"] == "tarflow" and config["model"]["width"] == 16 and config["model"]["blocks"] == 2
    assert config["eta"] == 0.05 and config["grad_clip"] == 1.0 and config["warmup_steps"] == 200
    state = torch.load(runs["teacher"], weights_only=True)
    assert state["step"] == 30 and state["ema"] is not None
    trainer = Trainer.from_checkpoint(str(runs["teacher"]))
    assert isinstance(trainer.model, TarFlow) and trainer.grad_clip == 1.0 and trainer.warmup_steps == 200
    betas = trainer.optimizer.param_groups[0]["betas"]
    assert tuple(betas) == (0.9, 0.95)
    flow, eta = load_flow(str(runs["teacher"]))
    assert isinstance(flow, TarFlow) and eta == 0.05 and not flow.training
    assert not any(p.requires_grad for p in flow.parameters())
    # the EMA weights are the ones loaded
    ema = state["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in flow.state_dict().items())


def test_eval_and_sample_of_the_teacher(runs, capsys, tmp_path):
    assert main(["eval", "--checkpoint", str(runs["teacher"]), "--n", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "inverse" and report["nfe"] == 2 and math.isfinite(report["w2"])
    out = tmp_path / "x.pt"
    assert main(["sample", "--checkpoint", str(runs["teacher"]), "--n", "50", "--out", str(out)]) == 0
    reply = json.loads(capsys.readouterr().out)
    x = torch.load(out)
    assert reply["shape"] == [50, 2] and reply["method"] == "inverse"
    assert x.shape == (50, 2) and bool(torch.isfinite(x).all())
    # an ODE method is refused in one line
    _error(capsys, ["eval", "--checkpoint", str(runs["teacher"]), "--n", "20", "--method", "euler"],
           "method must be 'inverse'")


def test_student_trains_and_evaluates(runs, capsys):
    reply = runs["student_reply"]
    assert reply["step"] == 30 and math.isfinite(reply["last_loss"])
    state = torch.load(runs["student"], weights_only=True)
    config = state["config"]
    assert config["coupling"] == "nfm" and config["teacher"] == str(runs["teacher"].resolve())
    assert config["path"] == "icfm" and config["sigma"] == 0.0  # the rectified-flow loss by default
    sigma_f = state["coupling_state"]["sigma_f"]
    assert sigma_f > 0 and state["coupling_state"]["eta"] == 0.05
    assert main(["eval", "--checkpoint", str(runs["student"]), "--steps", "2", "--n", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "euler" and report["nfe"] == 2 and report["steps"] == 2
    assert math.isfinite(report["w2"]) and report["w2"] > 0
    trainer = Trainer.from_checkpoint(str(runs["student"]))
    lazy = trainer.path.coupling  # the teacher loads at the first pairing, with the restored sigma_f (no refit)
    assert isinstance(lazy.coupling, NFMCoupling) and lazy.coupling.sigma_f == sigma_f


def test_student_path_defaults_to_icfm_sigma_0(runs, capsys, tmp_path):
    argv = STUDENT[:2] + ["nfm", "--steps", "2", "--hidden", "8", "--depth", "1", "--batch-size", "16",
                          "--no-progress", "--teacher", str(runs["teacher"]), "--target", "moons",
                          "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["path"] == "icfm" and config["sigma"] == 0.0 and config["nfm_draws"] is None


def test_student_on_a_dataset_with_cached_draws_resumes_exactly(runs, capsys, tmp_path):
    rows = tmp_path / "moons.npy"
    np.save(rows, data.moons(256, torch.Generator().manual_seed(0)).numpy())
    common = STUDENT[:2] + ["nfm", "--hidden", "16", "--depth", "2", "--batch-size", "32", "--no-progress",
                            "--log-every", "1", "--teacher", str(runs["teacher"]), "--data", str(rows),
                            "--nfm-draws", "2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(common + ["--steps", "8", "--out", str(full)]) == 0
    assert main(common + ["--steps", "4", "--out", str(cut)]) == 0
    assert main(common + ["--steps", "8", "--out", str(cut), "--resume"]) == 0
    capsys.readouterr()
    state = torch.load(full / "checkpoint.pt", weights_only=True)
    cache = state["coupling_state"]
    assert cache["fingerprint"]["draws"] == 2 and cache["fingerprint"]["rows"] == 256 and "table" not in cache

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, filter(str.strip, lines)) if "loss" in r]

    assert losses(cut) == losses(full) and len(losses(full)) == 8  # bit-identical after the resume
    resumed = torch.load(cut / "checkpoint.pt", weights_only=True)["coupling_state"]
    assert resumed == cache
    assert main(["eval", "--checkpoint", str(full / "checkpoint.pt"), "--n", "100", "--steps", "1"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["w2"])


def test_nfm_errors_are_one_line(runs, capsys, tmp_path):
    out = ["--out", str(tmp_path / "run")]
    _error(capsys, STUDENT + ["--target", "moons"] + out, "--coupling nfm needs --teacher")
    _error(capsys, STUDENT + ["--teacher", str(runs["cfm"])] + out, "needs a TarFlow teacher", "'cfm' run")
    _error(capsys, STUDENT + ["--teacher", str(runs["teacher"]), "--source", "moons"] + out,
           "use --source gaussian")
    _error(capsys, STUDENT + ["--teacher", str(tmp_path / "missing.pt")] + out, "no teacher checkpoint")
    _error(capsys, STUDENT + ["--teacher", str(runs["teacher"]), "--nfm-draws", "2"] + out, "needs --data")
    _error(capsys, STUDENT + ["--teacher", str(runs["teacher"]), "--method", "lsd"] + out, "--method cfm")
    _error(capsys, ["train", "--teacher", str(runs["teacher"]), "--nfm-draws", "2", "--no-progress"] + out,
           "--coupling nfm")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_student_of_a_teacher_for_other_data_is_one_line(runs, capsys, tmp_path):
    rows = tmp_path / "rows4.npy"
    np.save(rows, np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    teacher = tmp_path / "teacher4"
    assert main(TRAIN_NF[:2] + ["2"] + TRAIN_NF[3:] + ["--data", str(rows), "--batch-size", "16",
                                                       "--out", str(teacher)]) == 0
    capsys.readouterr()
    _error(capsys, STUDENT + ["--teacher", str(teacher / "checkpoint.pt"), "--target", "moons",
                              "--out", str(tmp_path / "run")], "teacher's sample shape")


def test_train_nf_errors_are_one_line(capsys, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((8, 1, 6, 6), dtype=np.float32))
    _error(capsys, TRAIN_NF + ["--data", str(images), "--patch", "4", "--out", str(tmp_path / "a")],
           "image size 6x6 is not divisible by the patch size 4")
    _error(capsys, TRAIN_NF + ["--eta", "-0.1", "--out", str(tmp_path / "b")], "eta", "-0.1")
    _error(capsys, TRAIN_NF + ["--eta", "nan", "--out", str(tmp_path / "c")], "eta")
    _error(capsys, TRAIN_NF[:6] + ["1", "--layers", "1", "--no-progress", "--out", str(tmp_path / "d")],
           "blocks must be >= 2")
    _error(capsys, TRAIN_NF + ["--heads", "3", "--out", str(tmp_path / "e")], "heads 3 does not divide width 16")
    _error(capsys, TRAIN_NF + ["--token-dim", "2", "--out", str(tmp_path / "f")], "makes 1 token")
    for name in "abcdef":
        assert not (tmp_path / name / "checkpoint.pt").exists()


def test_train_nf_resume_continues_the_warmup_exactly(capsys, tmp_path):
    argv = TRAIN_NF[:2] + ["10"] + TRAIN_NF[3:] + ["--target", "moons", "--batch-size", "32", "--warmup", "6",
                                                   "--log-every", "1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(argv + ["--out", str(full)]) == 0
    assert main(TRAIN_NF[:2] + ["4"] + argv[3:] + ["--out", str(cut)]) == 0
    assert main(argv + ["--out", str(cut), "--resume"]) == 0
    capsys.readouterr()

    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, filter(str.strip, lines)) if "loss" in r]

    assert rows(cut) == rows(full) and [r[0] for r in rows(full)] == list(range(1, 11))
    assert [r[2] for r in rows(full)] == pytest.approx([1e-3 * min(1.0, k / 6) for k in range(1, 11)], rel=1e-12)
    # the warm-up cannot change under a resumed run
    _error(capsys, argv[:-4] + ["--warmup", "3", "--log-every", "1", "--out", str(cut), "--resume"],
           "cannot change", "warmup_steps")


def test_garbage_teacher_is_one_line(capsys, tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"garbage" * 10)
    _error(capsys, STUDENT + ["--teacher", str(bad), "--out", str(tmp_path / "run")], "teacher.pt",
           "not a readable flowfast checkpoint")


def test_student_eval_does_not_need_the_teacher(runs, capsys, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"].parent, teacher)
    argv = STUDENT[:2] + ["nfm", "--steps", "2", "--hidden", "8", "--depth", "1", "--batch-size", "16",
                          "--no-progress", "--teacher", str(teacher / "checkpoint.pt"), "--target", "moons"]
    assert main(argv + ["--out", str(tmp_path / "student")]) == 0
    shutil.rmtree(teacher)
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(tmp_path / "student" / "checkpoint.pt"), "--n", "50", "--steps", "1"])
    assert code == 0, capsys.readouterr().err


def test_ot_paths_refuse_the_nfm_coupling(runs, capsys, tmp_path):
    for path in ("otcfm", "sbcfm"):
        _error(capsys, STUDENT + ["--path", path, "--teacher", str(runs["teacher"]), "--out", str(tmp_path / path)],
               f"--path {path} couples by OT itself", "--path icfm")


def test_train_nf_refuses_negative_clip_and_warmup(capsys, tmp_path):
    for flag in ("--grad-clip", "--warmup"):
        _error(capsys, ["train-nf", "--target", "moons", "--steps", "1", flag, "-1", "--out", str(tmp_path / flag)],
               "--grad-clip and --warmup must be >= 0")


def test_nfm_student_on_images(capsys, tmp_path):
    """An NFM student on (N, 1, 8, 8) images: the MLP on flattened pixels, samples shaped like the data."""
    from flowfast import data

    images = tmp_path / "digits.npy"
    np.save(images, data.digits()[:128].numpy())
    teacher = tmp_path / "teacher"
    assert main(["train-nf", "--data", str(images), "--patch", "4", "--width", "16", "--blocks", "2", "--layers", "1",
                 "--steps", "3", "--batch-size", "32", "--out", str(teacher), "--no-progress"]) == 0
    student = tmp_path / "student"
    assert main(["train", "--coupling", "nfm", "--teacher", str(teacher / "checkpoint.pt"), "--data", str(images),
                 "--nfm-draws", "2", "--steps", "3", "--hidden", "16", "--depth", "1", "--batch-size", "32",
                 "--out", str(student), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "samples.pt"
    assert main(["sample", "--checkpoint", str(student / "checkpoint.pt"), "--n", "5", "--steps", "2",
                 "--out", str(out)]) == 0
    samples = torch.load(out, weights_only=True)
    assert samples.shape == (5, 1, 8, 8) and bool(torch.isfinite(samples).all())
    # without --coupling nfm an image dataset is still refused for the vector MLP
    _error(capsys, ["train", "--data", str(images), "--steps", "1", "--out", str(tmp_path / "plain")], "vector MLP")
