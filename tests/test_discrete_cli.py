"""The CLI's discrete flow models: `train --method dfm|pairflow --task ...` (PairFlow pairs built
from the task data), `sample` writes tokens, `eval` adds the task's exact metrics."""

from __future__ import annotations

import json

import pytest
import torch

from flowfast.__main__ import main
from flowfast.train import Trainer

TRAIN = ["train", "--task", "markov", "--task-size", "256", "--steps", "4", "--batch-size", "32", "--hidden", "16",
         "--depth", "1", "--no-progress", "--log-every", "2"]


@pytest.mark.parametrize("method", ["dfm", "pairflow"])
def test_train_sample_eval(capsys, tmp_path, method):
    run = tmp_path / "run"
    assert main(TRAIN + ["--method", method, "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "tokens.pt"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "12", "--steps", "4",
                 "--out", str(out)]) == 0
    reply = json.loads(capsys.readouterr().out)
    tokens = torch.load(out)
    assert reply["nfe"] == 4 and reply["method"] == "ancestral"
    assert tokens.shape == (12, 32) and tokens.dtype == torch.int64 and int(tokens.max()) < 16
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--n", "64", "--steps", "2",
                 "--method", "euler"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nfe"] == 2 and {"unigram_tv", "position_tv"} <= set(report)
    assert report["task"]["nll_ratio"] > 0
    trainer = Trainer.from_checkpoint(str(run / "checkpoint.pt"))
    assert trainer.path.paired == (method == "pairflow")


def test_map_sampler_is_refused_for_a_discrete_model(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--method", "dfm", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--method", "map",
                 "--out", str(tmp_path / "x.pt")]) != 0
    assert "method must be one of" in capsys.readouterr().err
