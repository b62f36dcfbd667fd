"""flowfast.models / flowfast.train / the CLI: training lowers W2, exact resume, JSONL, atomic
checkpoints, EMA, DDP on gloo (2 CPU processes), CLI smoke, the demo at toy size, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from flowfast import data, paths
from flowfast.couplings.assignment import linear_assignment, pairwise_cost
from flowfast.__main__ import main as cli_main
from flowfast.models import MLP
from flowfast.samplers import odeint
from flowfast.testing import spawn_gloo
from flowfast.train import CHECKPOINT_NAME, METRICS_NAME, Trainer, make_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainer(out_dir=None, path="otcfm", batch_size=64, seed=0, progress=False, **kwargs) -> Trainer:
    torch.manual_seed(seed)
    return Trainer(MLP(2, hidden=32, depth=2), make_path(path) if isinstance(path, str) else path,
                   data.gaussian, data.eight_gaussians, batch_size=batch_size, seed=seed, out_dir=out_dir,
                   progress=progress, **kwargs)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the model -----------------------------------------------------------------------------------


def test_mlp_shapes_and_time_input():
    net = MLP(2)
    x = torch.randn(5, 2)
    assert net(x, torch.rand(5)).shape == (5, 2)
    assert torch.equal(net(x, 0.5), net(x, torch.full((5,), 0.5)))
    assert torch.equal(net(x, torch.full((5, 1), 0.5)), net(x, 0.5))
    assert not torch.equal(net(x, 0.1), net(x, 0.9))
    assert MLP(2, time_embedding=False)(x).shape == (5, 2)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 4  # depth 3 = 3 hidden layers
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(5, 3), torch.rand(5))
    with pytest.raises(ValueError, match="entries"):
        net(x, torch.rand(4))
    with pytest.raises(ValueError):
        MLP(0)


def test_mlp_is_torchcfm_2d_mlp():
    models = pytest.importorskip("torchcfm.models")
    theirs = models.MLP(dim=2, w=64, time_varying=True)
    ours = MLP(2)
    ours.load_state_dict(theirs.state_dict())  # same layers, same names
    x, t = torch.randn(7, 2), torch.rand(7)
    assert torch.equal(ours(x, t), theirs(torch.cat([x, t[:, None]], -1)))


# --- training ------------------------------------------------------------------------------------


def test_short_training_lowers_w2():
    trainer = _trainer(batch_size=128, optimizer=None)
    before = trainer.evaluate(n=400, steps=20)["w2"]
    trainer.train(300)
    after = trainer.evaluate(n=400, steps=20)
    assert after["step"] == 300 and after["nfe"] == 20
    assert after["w2"] < 0.4 * before, (before, after)
    assert trainer.evaluate(n=400, method="dopri5")["w2"] < 0.4 * before


class _Interrupt(Exception):
    pass


def _crash_after(sampler, calls):
    count = [0]

    def sample(n, generator):
        count[0] += 1
        if count[0] > calls:
            raise _Interrupt
        return sampler(n, generator)

    return sample


@pytest.mark.parametrize("path", ["otcfm", "sbcfm"])
def test_resume_continues_with_identical_losses(tmp_path, path):
    total, every = 12, 4
    full = _trainer(tmp_path / "full", path, log_every=2, checkpoint_every=every)
    losses = full.train(total)
    assert len(losses) == total

    # an interrupted run: the target sampler fails during step 7, after the checkpoint at step 4
    crashed = _trainer(tmp_path / "cut", path, log_every=2, checkpoint_every=every)
    crashed.target = _crash_after(data.eight_gaussians, 6)
    with pytest.raises(_Interrupt):
        crashed.train(total)
    assert torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)["step"] == every

    resumed = _trainer(tmp_path / "cut", path, log_every=2, checkpoint_every=every)
    rest = resumed.train(total, resume=True)
    assert resumed.step == total
    assert rest == losses[every:]  # bit-identical floats
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(_read_jsonl(tmp_path / "cut" / METRICS_NAME)) == strip(_read_jsonl(tmp_path / "full" / METRICS_NAME))

    # the explicit API: resume(path) on a fresh trainer, then the remaining steps
    again = _trainer(None, path).resume(tmp_path / "cut" / CHECKPOINT_NAME)
    assert again.step == total and again.train(total) == []


def test_metrics_jsonl_and_atomic_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = _trainer(out, log_every=3, checkpoint_every=5, config={"note": "x"})
    losses = trainer.train(10)
    rows = _read_jsonl(out / METRICS_NAME)
    assert [r["step"] for r in rows] == [3, 6, 9, 10]
    assert all(set(r) == {"step", "loss", "lr", "time_s"} for r in rows)
    assert rows[0]["loss"] == pytest.approx(sum(losses[:3]) / 3)
    assert rows[-1]["loss"] == pytest.approx(losses[9]) and rows[0]["lr"] == 1e-3
    assert [r["time_s"] for r in rows] == sorted(r["time_s"] for r in rows)
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]  # no tmp file
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 10 and set(state) >= {"model", "ema", "optimizer", "rng", "step"}
    assert state["config"] == {"note": "x"}

    # a save that dies half-way leaves the previous checkpoint intact and no temporary file behind
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    trainer.step = 99
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["step"] == 10
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]

    # a fresh run into the same folder starts a fresh log
    _trainer(out, log_every=3).train(3)
    assert [r["step"] for r in _read_jsonl(out / METRICS_NAME)] == [3]


def test_ema_differs_and_is_used_by_sample():
    trainer = _trainer(ema_decay=0.9)
    trainer.train(20)
    raw = torch.cat([p.flatten() for p in trainer.model.parameters()])
    ema = torch.cat([p.flatten() for p in trainer.ema_model.parameters()])
    assert not torch.allclose(raw, ema)
    assert not any(p.requires_grad for p in trainer.ema_model.parameters())
    x0 = torch.randn(50, 2)
    with_ema = trainer.sample(0, steps=5, x0=x0)
    assert torch.equal(with_ema.x, odeint(trainer.ema_model, x0, steps=5).x)
    assert torch.equal(trainer.sample(0, steps=5, x0=x0, ema=False).x, odeint(trainer.model, x0, steps=5).x)
    assert not torch.allclose(with_ema.x, trainer.sample(0, steps=5, x0=x0, ema=False).x)
    res = trainer.sample(30, steps=4, method="rk4", return_path=True)
    assert res.x.shape == (30, 2) and res.nfe == 16 and res.path.shape == (5, 30, 2)
    # the default source stream is fixed and separate from the training stream
    assert torch.equal(trainer.sample(30, steps=4).x, trainer.sample(30, steps=4).x)
    state = trainer.generator.get_state()
    trainer.evaluate(n=50, steps=2)
    assert torch.equal(state, trainer.generator.get_state())

    plain = _trainer(ema_decay=None)
    plain.train(3)
    assert plain.ema_model is None
    assert torch.equal(plain.sample(0, steps=3, x0=x0).x, plain.sample(0, steps=3, x0=x0, ema=False).x)


def test_progress_output(capsys):
    _trainer(log_every=2).train(4)
    assert capsys.readouterr().err == ""  # progress=False
    _trainer(log_every=2, progress=True).train(4)
    err = capsys.readouterr().err
    assert "4/4" in err  # tqdm's bar, or the plain line "[flowfast] step 4/4 ..." without tqdm


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = _trainer(seed=3).train(5), _trainer(seed=3).train(5), _trainer(seed=4).train(5)
    assert a == b and a != c


# --- distributed (2 CPU processes, gloo) ---------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        def params(trainer):
            return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

        def make(global_coupling, out_dir=None):
            torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
            return Trainer(MLP(2, hidden=16, depth=2), paths.OptimalTransportCFM(0.1), data.gaussian,
                           data.eight_gaussians, batch_size=32, seed=0, log_every=2, out_dir=out_dir,
                           progress=False, global_coupling=global_coupling,
                           checkpoint_every=2 if out_dir else None)

        def record_first(fn, store, pairs_from):
            def wrapped(*args, **kwargs):
                out = fn(*args, **kwargs)
                if not store:
                    store.extend(t.clone() for t in pairs_from(args, out))
                return out
            return wrapped

        result = {}
        for mode in (False, True):
            trainer = make(mode, out_dir=os.path.join(out, f"run{int(mode)}"))
            pairs = []  # the (x0, x1) pairs this rank trains on at step 1
            if mode:
                trainer._paired_path.loss = record_first(trainer._paired_path.loss, pairs, lambda a, o: a[1:3])
            else:
                trainer.path.couple = record_first(trainer.path.couple, pairs, lambda a, o: o)
            losses = trainer.train(6)
            ema = torch.cat([p.flatten() for p in trainer.ema_model.parameters()])
            result[mode] = {"losses": losses, "params": params(trainer), "ema": ema, "pairs": pairs}
        # exact resume under DDP: every rank's generator state lives in rank 0's checkpoint
        expected = make(True).train(5)
        make(True, out_dir=os.path.join(out, "resume")).train(2)
        got = make(True, out_dir=os.path.join(out, "resume")).train(5, resume=True)
        result["resume"] = {"expected": expected[2:], "got": got}
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears the group down while the other is still in a collective
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path):
    if not spawn_gloo(_ddp_worker, tmp_path):
        pytest.skip("torch.distributed gloo backend unavailable")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for mode in (False, True):
        assert torch.equal(r0[mode]["params"], r1[mode]["params"])  # DDP keeps the ranks in lockstep
        assert torch.equal(r0[mode]["ema"], r1[mode]["ema"])
        assert r0[mode]["losses"] != r1[mode]["losses"]  # each rank trains on its own minibatch
        rows = _read_jsonl(tmp_path / f"run{int(mode)}" / METRICS_NAME)
        assert [r["step"] for r in rows] == [2, 4, 6]  # rank 0 alone writes
        for row, k in zip(rows, (0, 2, 4)):  # the logged loss is the mean over both ranks
            window = r0[mode]["losses"][k:k + 2] + r1[mode]["losses"][k:k + 2]
            assert row["loss"] == pytest.approx(sum(window) / 4)
    assert not torch.equal(r0[False]["params"], r0[True]["params"])  # global coupling changes the pairs

    # step 1's pairs over both ranks: a permutation of the global batch, optimal for it only with global_coupling
    def union(mode):
        x0 = torch.cat([r0[mode]["pairs"][0], r1[mode]["pairs"][0]])
        x1 = torch.cat([r0[mode]["pairs"][1], r1[mode]["pairs"][1]])
        return x0, x1

    for mode in (False, True):
        x0, x1 = union(mode)
        assert x0.shape == (64, 2)
        optimal = ((x0 - x1[linear_assignment(pairwise_cost(x0, x1))]) ** 2).sum()
        used = ((x0 - x1) ** 2).sum()
        if mode:
            assert float(used) == pytest.approx(float(optimal), rel=1e-5)
        else:
            assert float(used) > float(optimal) * (1 + 1e-4)
    assert torch.equal(union(False)[0].sort(0).values, union(True)[0].sort(0).values)  # same minibatches
    for r in (r0, r1):
        assert r["resume"]["got"] == r["resume"]["expected"]


# --- CLI -----------------------------------------------------------------------------------------


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "flowfast", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_train_sample_eval(tmp_path):
    out = tmp_path / "run"
    tiny = ["--batch-size", "64", "--hidden", "16", "--depth", "2", "--log-every", "5", "--out", str(out)]
    summary = json.loads(_cli("train", "--steps", "10", "--checkpoint-every", "5", *tiny).stdout)
    assert summary["step"] == 10 and summary["steps_run"] == 10
    assert [r["step"] for r in _read_jsonl(out / METRICS_NAME)] == [5, 10]
    config = json.loads((out / "config.json").read_text())
    assert config["path"] == "otcfm" and config["model"]["hidden"] == 16
    ckpt = str(out / CHECKPOINT_NAME)

    info = json.loads(_cli("sample", "--checkpoint", ckpt, "--n", "50", "--steps", "4", "--method", "midpoint",
                           "--out", str(tmp_path / "s.pt")).stdout)
    assert info["nfe"] == 8 and info["shape"] == [50, 2]
    x = torch.load(tmp_path / "s.pt", weights_only=True)
    assert x.shape == (50, 2) and torch.isfinite(x).all()

    result = json.loads(_cli("eval", "--checkpoint", ckpt, "--n", "100", "--steps", "4").stdout)
    assert result["n"] == 100 and result["nfe"] == 4 and result["step"] == 10 and result["w2"] > 0

    # --resume continues to the new total, in-process
    assert cli_main(["train", "--steps", "15", "--resume", "--no-progress", *tiny]) == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 15
    assert [r["step"] for r in _read_jsonl(out / METRICS_NAME)] == [5, 10, 15]


@pytest.mark.parametrize("command", ["train", "sample", "eval", "demo", "info"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cli_bad_inputs(tmp_path, capsys):
    assert cli_main(["train", "--batch-size", "0", "--steps", "1", "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    with pytest.raises(SystemExit):
        cli_main(["train", "--path", "nope"])
    (tmp_path / "junk.pt").write_bytes(b"")
    torch.save({"x": 1}, tmp_path / "junk.pt")
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "junk.pt")]) == 2


def test_cfm_demo_at_toy_size(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert cli_main(["demo", "--cfm", "--steps", "20", "--batch-size", "32", "--n-eval", "100", "--eval-sets", "2",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the demo's single-thread setting is undone
    text = capsys.readouterr().out
    assert "| euler, 1 step | 1 | " in text and "| dopri5" in text and "train time / 1000 steps" in text
    results = json.loads((tmp_path / "cfm-results.json").read_text())
    assert set(results["models"]) == {"icfm", "otcfm"}
    assert [e["nfe"] for e in results["models"]["icfm"]["evals"]][:5] == [1, 2, 4, 8, 100]
    assert all(len(e["w2_per_set"]) == 2 for e in results["models"]["otcfm"]["evals"])
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cfm.png").stat().st_size > 0
    assert cli_main(["demo", "--coupling", "--n", "64", "--out", str(tmp_path / "pairing")]) == 0


def test_flowmap_demo_at_toy_size(tmp_path, capsys):
    assert cli_main(["demo", "--steps", "20", "--batch-size", "32", "--n-eval", "100", "--eval-sets", "2",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| OT-CFM teacher (ODE) | dopri5" in text and "| LSD map (exact-OT pairs) | map, 1 step | 1 |" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "lsd", "distill"}
    assert [e["nfe"] for e in results["models"]["lsd"]["evals"]] == [1, 2, 4, 8]
    assert [e["nfe"] for e in results["models"]["distill"]["evals"]] == [1, 2, 4, 8]
    # the run folders are CLI checkpoints: eval reads the flow map back and composes its map
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "distill" / "checkpoint.pt"), "--n", "50",
                     "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["nfe"] == 2
    pytest.importorskip("matplotlib")
    assert (tmp_path / "demo.png").stat().st_size > 0


# --- bad inputs ----------------------------------------------------------------------------------


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown path"):
        make_path("nope")
    with pytest.raises(ValueError, match="unknown path"):
        Trainer(MLP(2), "nope", data.gaussian, data.eight_gaussians)
    with pytest.raises(ValueError, match="batch_size"):
        _trainer(batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        _trainer().train(-1)
    with pytest.raises(ValueError, match="steps"):
        _trainer().train(2.5)
    with pytest.raises(ValueError, match="ema_decay"):
        _trainer(ema_decay=1.0)
    with pytest.raises(ValueError, match="log_every"):
        _trainer(log_every=0)
    with pytest.raises(ValueError, match="checkpoint_every needs out_dir"):
        _trainer(checkpoint_every=10)
    with pytest.raises(ValueError, match="out_dir"):
        _trainer().train(1, resume=True)
    with pytest.raises(TypeError, match="source"):
        Trainer(MLP(2), "icfm", "gaussian", data.eight_gaussians)
    with pytest.raises(TypeError, match="nn.Module"):
        Trainer(lambda x, t: x, "icfm", data.gaussian, data.eight_gaussians)
    with pytest.raises(ValueError, match="method"):
        _trainer().sample(10, method="heun")
    with pytest.raises(ValueError, match="sampler returned"):
        Trainer(MLP(2), "icfm", data.gaussian, lambda n, g: torch.randn(n + 1, 2), progress=False).train(1)
    with pytest.raises(ValueError, match="overflows float32"):  # the path's check, before any step
        Trainer(MLP(2), "icfm", data.gaussian, lambda n, g: torch.full((n, 2), 1e30), progress=False,
                log_every=1).train(1)

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(1e30))

        def forward(self, x, t):
            return x * self.scale**2

    with pytest.raises(FloatingPointError, match="non-finite"):
        Trainer(Exploding(), "icfm", data.gaussian, data.eight_gaussians, progress=False, log_every=1).train(1)


class _CountingCoupling:
    """A stateful coupling (as a teacher with a cache would be): counts the batches it paired."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x0, x1, generator=None):
        self.calls += 1
        return x0, x1

    def state_dict(self):
        return {"calls": torch.tensor(self.calls)}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_checkpoint_keeps_the_coupling_state(tmp_path):
    """A path's stateful coupling travels with the checkpoint and is restored on resume."""
    first = _trainer(str(tmp_path), path=paths.IndependentCFM(0.1, coupling=_CountingCoupling()))
    first.train(5)
    first.save()
    assert first.path.coupling.calls == 5
    second = _trainer(str(tmp_path), path=paths.IndependentCFM(0.1, coupling=_CountingCoupling()))
    second.resume()
    assert second.path.coupling.calls == 5
    stateless = _trainer(str(tmp_path), path="icfm")
    with pytest.raises(ValueError, match="(?i)coupling"):
        stateless.resume()


def _aborts_once_worker(rank: int, world: int, port: int, out: str) -> None:
    """Dies by SIGABRT on the first run (as gloo's transport does when a peer vanishes), then works."""
    marker = os.path.join(out, f"aborted{rank}")
    if rank == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()
    open(os.path.join(out, f"done{rank}"), "w").close()


def _raises_worker(rank: int, world: int, port: int, out: str) -> None:
    open(os.path.join(out, f"ran{rank}-{len(os.listdir(out))}"), "w").close()
    raise RuntimeError("a real error in the worker")


def test_spawn_gloo_retries_a_worker_killed_by_a_signal_but_not_one_that_raised(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed gloo backend unavailable")
    assert spawn_gloo(_aborts_once_worker, tmp_path, timeout=120)
    assert (tmp_path / "aborted0").exists() and (tmp_path / "done0").exists() and (tmp_path / "done1").exists()
    raised = tmp_path / "raised"
    raised.mkdir()
    with pytest.raises(mp.ProcessRaisedException, match="a real error"):
        spawn_gloo(_raises_worker, raised, timeout=120)
    assert len([p for p in os.listdir(raised) if p.startswith("ran0")]) == 1  # one attempt, no retry
