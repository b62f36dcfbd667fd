"""The CLI's categorical flow maps: `train --method vfm|csd|ecld --task ...`, `sample` writes the
tokens, `eval` adds the task's exact metrics, and misplaced options are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from flowfast import categorical
from flowfast.__main__ import main
from flowfast.train.recipes import CATEGORICAL_METHODS

TRAIN = ["train", "--task", "markov", "--task-size", "512", "--steps", "4", "--batch-size", "32", "--hidden", "16",
         "--depth", "1", "--no-progress", "--log-every", "2"]


def test_method_names_match_the_package():
    assert CATEGORICAL_METHODS == categorical.METHODS


def test_train_sample_eval(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--method", "ecld", "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "tokens.pt"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "12", "--out", str(out)]) == 0
    reply = json.loads(capsys.readouterr().out)
    tokens = torch.load(out)
    assert reply["nfe"] == 4 and tokens.shape == (12, 32) and tokens.dtype == torch.int64 and int(tokens.max()) < 16
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--n", "64", "--steps", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nfe"] == 1 and {"unigram_tv", "position_tv"} <= set(report)
    assert report["task"]["nll_ratio"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--method", "lsd"], "--task trains a categorical flow map"),
    (["--method", "ecld", "--coupling", "exact"], "--coupling do not apply"),
    (["--method", "vfm", "--sigma", "0.1"], "--sigma do not apply"),
])
def test_misplaced_options_are_one_line_errors(capsys, tmp_path, argv, needle):
    code = main(TRAIN + argv + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_categorical_method_needs_a_task(capsys, tmp_path):
    code = main(["train", "--method", "csd", "--steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "pass --task" in err
