"""Flow maps through the trainer and the CLI: a short run lands near its teacher, resume is
bit-identical (progressive distillation's state included), the CLI trains, samples and evaluates
flow maps on toys and on user data, and refuses bad combinations with one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowfast import data, flowmaps, metrics, paths
from flowfast.__main__ import main as cli_main
from flowfast.models import MLP, FlowMapMLP
from flowfast.train import Trainer


def _map_trainer(objective, out_dir=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = flowmaps.FlowMap(FlowMapMLP(2, hidden=64, depth=3, time_features=16))
    return Trainer(model, objective, data.gaussian, data.eight_gaussians, batch_size=128, seed=seed,
                   out_dir=out_dir, progress=False, optimizer=torch.optim.Adam(model.parameters(), lr=2e-3), **kwargs)


def test_a_short_distillation_lands_near_the_teacher():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher_net = MLP(2, hidden=64, depth=3)
    teacher = Trainer(teacher_net, paths.OptimalTransportCFM(0.1), data.gaussian, data.eight_gaussians,
                      batch_size=256, seed=0, progress=False)
    teacher.train(1500)
    g = torch.Generator().manual_seed(7)
    x0, real = data.gaussian(1000, g), data.eight_gaussians(1000, g)
    teacher_w2 = metrics.wasserstein2(teacher.sample(0, method="dopri5", x0=x0).x, real)

    student = _map_trainer(flowmaps.LMD(teacher.ema_model.requires_grad_(False)))
    untrained = metrics.wasserstein2(student.sample(0, steps=4, method="map", x0=x0).x, real)
    student.train(1500)
    four = metrics.wasserstein2(student.sample(0, steps=4, method="map", x0=x0).x, real)
    one = metrics.wasserstein2(student.sample(0, steps=1, method="map", x0=x0).x, real)
    assert four < 0.3 * untrained, (untrained, four)
    assert four < 1.5 * teacher_w2 and one < 2.0 * teacher_w2, (teacher_w2, one, four)


@pytest.mark.parametrize("make", [lambda: flowmaps.LSD(), lambda: flowmaps.PSD(gamma="uniform"),
                                  lambda: flowmaps.ProgressiveMapDistillation(
                                      lambda x, t: torch.zeros_like(x) + 1.0, stage_steps=4, first_gap=0.125)])
def test_flow_map_resume_is_bit_identical(tmp_path, make):
    whole = _map_trainer(make())
    expected = whole.train(12)
    first = _map_trainer(make(), out_dir=str(tmp_path), checkpoint_every=6)
    head = first.train(6)
    resumed = _map_trainer(make(), out_dir=str(tmp_path))
    tail = resumed.train(12, resume=True)
    assert head + tail == expected
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_trainer_samples_flow_maps_by_their_map():
    trainer = _map_trainer(flowmaps.LSD())
    trainer.train(2)
    assert trainer.sample(16, steps=3, method="map").nfe == 3
    assert trainer.sample(16, steps=5, method="euler").nfe == 5
    result = trainer.evaluate(n=64, steps=2, method="map")
    assert result["nfe"] == 2 and result["method"] == "map"


# --- the CLI ----------------------------------------------------------------------------------------


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_trains_samples_and_evaluates_flow_maps(tmp_path, capsys):
    teacher, student, lsd = tmp_path / "teacher", tmp_path / "student", tmp_path / "lsd"
    common = ["--steps", "30", "--batch-size", "64", "--log-every", "10", "--no-progress"]
    assert cli_main(["train", "--out", str(teacher), *common]) == 0
    assert cli_main(["train", "--method", "lsd", "--coupling", "exact", "--loss-weight", "--out", str(lsd),
                     *common]) == 0
    assert cli_main(["train", "--method", "distill", "--teacher", str(teacher / "checkpoint.pt"),
                     "--out", str(student), *common]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(student / "checkpoint.pt"), "--n", "100"]) == 0
    assert _last_json(capsys)["nfe"] == 4  # a flow map composes 4 jumps by default
    assert cli_main(["eval", "--checkpoint", str(lsd / "checkpoint.pt"), "--n", "100", "--steps", "1"]) == 0
    assert _last_json(capsys)["nfe"] == 1
    out = tmp_path / "x.npy"
    assert cli_main(["sample", "--checkpoint", str(lsd / "checkpoint.pt"), "--n", "10", "--steps", "2",
                     "--out", str(out)]) == 0
    assert _last_json(capsys)["nfe"] == 2 and np.load(out).shape == (10, 2)
    assert cli_main(["eval", "--checkpoint", str(lsd / "checkpoint.pt"), "--n", "50", "--method", "euler",
                     "--steps", "7"]) == 0
    assert _last_json(capsys)["nfe"] == 7  # the diagonal velocity through an ODE solver


def test_cli_trains_on_user_data(tmp_path, capsys):
    rows = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32) * 2 + 1
    np.save(tmp_path / "rows.npy", rows)
    torch.save(torch.rand(64, 1, 8, 8) * 2 - 1, tmp_path / "images.pt")
    assert cli_main(["train", "--method", "lsd", "--data", str(tmp_path / "rows.npy"), "--steps", "5",
                     "--batch-size", "50", "--out", str(tmp_path / "a"), "--no-progress", "--eval-n", "100"]) == 0
    summary = _last_json(capsys)
    assert summary["step"] == 5 and summary["eval"]["n"] == 100
    assert cli_main(["train", "--method", "lsd", "--data", str(tmp_path / "images.pt"), "--steps", "2",
                     "--batch-size", "16", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "b" / "checkpoint.pt"), "--n", "4",
                     "--out", str(tmp_path / "img.pt")]) == 0
    assert torch.load(tmp_path / "img.pt").shape == (4, 1, 8, 8)


def test_a_distilled_checkpoint_samples_without_its_teacher(tmp_path, capsys):
    common = ["--steps", "5", "--batch-size", "32", "--no-progress"]
    assert cli_main(["train", "--out", str(tmp_path / "teacher"), *common]) == 0
    assert cli_main(["train", "--method", "pfmm", "--teacher", str(tmp_path / "teacher" / "checkpoint.pt"),
                     "--out", str(tmp_path / "student"), *common]) == 0
    (tmp_path / "teacher" / "checkpoint.pt").rename(tmp_path / "moved.pt")
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "student" / "checkpoint.pt"), "--n", "50"]) == 0
    assert _last_json(capsys)["nfe"] == 4


def test_a_dataset_with_nan_rows_is_refused():
    rows = torch.randn(64, 2)
    rows[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 row"):
        _map_trainer(flowmaps.LSD()).__class__(flowmaps.FlowMap(FlowMapMLP(2)), flowmaps.LSD(), None, rows)


@pytest.mark.parametrize("argv, message", [
    (["--method", "lsd", "--path", "icfm"], "--path and --sigma are for --method cfm"),
    (["--coupling", "exact"], "--coupling is for the flow-map methods"),
    (["--method", "distill"], "--teacher"),
    (["--method", "lsd", "--teacher", "nowhere.pt"], "--teacher is for the distillation"),
    (["--method", "distill", "--teacher", "nowhere.pt"], "no teacher checkpoint"),
    (["--data", "missing.npy"], "no data file"),
])
def test_cli_flow_map_errors_are_one_line(tmp_path, capsys, argv, message):
    assert cli_main(["train", "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_the_map_sampler_for_velocity_models_and_images_for_cfm(tmp_path, capsys):
    assert cli_main(["train", "--steps", "2", "--batch-size", "16", "--out", str(tmp_path / "v"),
                     "--no-progress"]) == 0
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "v" / "checkpoint.pt"), "--method", "map"]) == 2
    assert "composes a flow map" in capsys.readouterr().err
    torch.save(torch.rand(16, 1, 8, 8), tmp_path / "images.pt")
    assert cli_main(["train", "--data", str(tmp_path / "images.pt"), "--steps", "1", "--out", str(tmp_path / "c"),
                     "--no-progress"]) == 2
    assert "vector MLP" in capsys.readouterr().err
