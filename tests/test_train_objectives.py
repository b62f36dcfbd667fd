"""The Trainer's objective protocol: an objective's own sample() behind Trainer.sample/evaluate,
objective_state in checkpoints, after_step, the path/objective= arguments, and on 2 gloo CPU
processes: function-transform objectives (torch.func.jvp through the model) under DDP, and global
coupling of loader batches whose sizes differ between the ranks."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from flowfast import data, paths
from flowfast.models import MLP
from flowfast.samplers import ODEResult
from flowfast.testing import spawn_gloo
from flowfast.train import Trainer


def _trainer(objective, out_dir=None, **kwargs) -> Trainer:
    torch.manual_seed(0)
    return Trainer(MLP(2, hidden=16, depth=2), objective, data.gaussian, data.eight_gaussians, batch_size=32,
                   out_dir=out_dir, progress=False, **kwargs)


class _OneJump(paths.IndependentCFM):
    """I-CFM with its own sampler: ``method="jump"`` (unknown to odeint) takes one Euler step of size
    1 per ``steps``-th of the way, counting its calls."""

    def __init__(self):
        super().__init__(0.1)
        self.calls = []

    def sample(self, model, x0, *, steps, method, atol, rtol, return_path):
        if method != "jump":
            raise ValueError(f"_OneJump samples with method='jump', got {method!r}")
        self.calls.append({"model": model, "steps": steps, "training": model.training})
        x = x0 + model(x0, torch.zeros(x0.shape[0]))
        return ODEResult(x=x, nfe=1, path=torch.stack([x0, x]) if return_path else None)


def test_an_objectives_own_sample_is_used():
    trainer = _trainer(_OneJump())
    trainer.train(3)
    x0 = torch.randn(10, 2)
    res = trainer.sample(0, steps=4, method="jump", x0=x0, return_path=True)
    call = trainer.path.calls[-1]
    assert call == {"model": trainer.ema_model, "steps": 4, "training": False}
    assert res.nfe == 1 and res.path.shape == (2, 10, 2)
    with torch.no_grad():
        assert torch.equal(res.x, x0 + trainer.ema_model(x0, torch.zeros(10)))
    assert trainer.sample(0, method="jump", x0=x0, ema=False).nfe == 1
    assert trainer.path.calls[-1]["model"] is trainer.model
    result = trainer.evaluate(n=50, method="jump", steps=7)
    assert result["nfe"] == 1 and result["n"] == 50 and result["w2"] > 0
    with pytest.raises(ValueError, match="method='jump'"):  # the objective validates its methods
        trainer.sample(5, method="euler")
    with pytest.raises(ValueError, match="method must be one of"):  # without one, odeint's methods
        _trainer("icfm").sample(5, method="jump")


class _Stateful(paths.IndependentCFM):
    """I-CFM with state (as a teacher copy would be) and an after_step hook that updates it."""

    def __init__(self):
        super().__init__(0.1)
        self.refreshes = torch.zeros((), dtype=torch.int64)
        self.steps_seen = []

    def after_step(self, model, step):
        assert isinstance(model, nn.Module) and model.training
        self.steps_seen.append(step)
        if step % 2 == 0:
            self.refreshes += 1

    def state_dict(self):
        return {"refreshes": self.refreshes.clone()}

    def load_state_dict(self, state):
        self.refreshes = state["refreshes"].clone()


def test_objective_state_round_trips_and_after_step_is_called(tmp_path):
    first = _trainer(_Stateful(), out_dir=tmp_path)
    losses = first.train(5)
    assert first.path.steps_seen == [1, 2, 3, 4, 5] and int(first.path.refreshes) == 2
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert int(state["objective_state"]["refreshes"]) == 2

    second = _trainer(_Stateful(), out_dir=tmp_path)
    rest = second.train(8, resume=True)
    assert int(second.path.refreshes) == 4 and second.path.steps_seen == [6, 7, 8]
    assert rest == _trainer(_Stateful()).train(8)[5:]  # still bit-identical
    assert len(losses) == 5

    with pytest.raises(ValueError, match="objective state"):
        _trainer("icfm", out_dir=tmp_path).resume()

    # a checkpoint from before objective and data states loads as it did
    del state["objective_state"], state["data_state"]
    old = _trainer(_Stateful())
    old.load_state_dict(state)
    assert old.step == 5 and int(old.path.refreshes) == 0


def test_path_and_objective_arguments():
    by_keyword = Trainer(MLP(2), objective="icfm", source=data.gaussian, target=data.eight_gaussians,
                         progress=False)
    assert isinstance(by_keyword.path, paths.IndependentCFM)
    with pytest.raises(TypeError, match="objective once"):
        Trainer(MLP(2), "icfm", data.gaussian, data.eight_gaussians, objective="otcfm")
    with pytest.raises(TypeError, match="objective once"):
        Trainer(MLP(2), source=data.gaussian, target=data.eight_gaussians)
    with pytest.raises(TypeError, match="loss"):
        Trainer(MLP(2), object(), data.gaussian, data.eight_gaussians)

    class _VectorLoss(paths.IndependentCFM):
        def loss(self, model, x0, x1, generator=None):
            return (model(x0, torch.zeros(x0.shape[0])) ** 2).mean(1)

    with pytest.raises(TypeError, match="scalar tensor"):
        _trainer(_VectorLoss(0.1)).train(1)


# --- function transforms under DDP (2 CPU processes, gloo) -----------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(3, 16), nn.Linear(16, 2)

    def forward(self, x, t):
        return self.out(torch.tanh(self.inp(torch.cat([x, t[:, None]], 1))))


class _JvpObjective:
    """A loss through torch.func.jvp of the model (as flow-map objectives take dX/dt): the velocity
    at the midpoint and its directional derivative along x1 - x0. Deterministic given the batch."""

    uses_function_transforms = True

    def __init__(self):
        self.seen, self.modules = [], set()

    def couple(self, x0, x1, generator=None):
        return x0, x1

    def loss(self, model, x0, x1, generator=None):
        x0, x1 = self.couple(x0, x1, generator)
        self.seen.append((x0.detach().clone(), x1.detach().clone()))
        self.modules.add(type(model).__name__)
        t = torch.full((x0.shape[0],), 0.5, dtype=x0.dtype)
        u = x1 - x0
        v, dv = torch.func.jvp(lambda x: model(x, t), (x0 + 0.5 * u,), (u,))
        return ((v - u) ** 2).mean() + 0.1 * (dv ** 2).mean()


class _RecordingOT(paths.OptimalTransportCFM):
    def __init__(self):
        super().__init__(0.1)
        self.seen = []

    def loss(self, model, x0, x1, generator=None):
        self.seen.append(x1.clone())  # under global coupling: this rank's slice of the coupled batch
        return super().loss(model, x0, x1, generator=generator)


_ROWS, _BATCH, _STEPS, _LR = 64, 8, 5, 0.05


def _dataset():
    return torch.linspace(-2, 2, _ROWS * 2, dtype=torch.float64).reshape(_ROWS, 2)


def _jvp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights per rank: the trainer must broadcast rank 0's
        model = _Net().double()
        objective = _JvpObjective()
        trainer = Trainer(model, objective, None, _dataset(), batch_size=_BATCH, seed=0, ema_decay=None,
                          optimizer=torch.optim.SGD(model.parameters(), lr=_LR), progress=False)
        init = [p.detach().clone() for p in model.parameters()]
        trainer.train(_STEPS)
        result = {"init": init, "params": [p.detach().clone() for p in model.parameters()],
                  "seen": objective.seen, "modules": sorted(objective.modules)}

        # global coupling of loader batches whose sizes differ between the ranks (8 and 5 rows)
        rows = 8 if rank == 0 else 5
        batches = [torch.randn(rows, 2, generator=torch.Generator().manual_seed(10 * rank + k)) for k in range(3)]
        path = _RecordingOT()
        torch.manual_seed(0)
        net = _Net()
        Trainer(net, path, data.gaussian, batches, seed=0, progress=False, global_coupling=True).train(3)
        result.update(global_seen=path.seen, global_batches=batches,
                      global_params=[p.detach().clone() for p in net.parameters()])
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears the group down while the other is still in a collective
    finally:
        dist.destroy_process_group()


def test_function_transform_objective_under_ddp_matches_one_process_on_the_global_batch(tmp_path):
    if not spawn_gloo(_jvp_worker, tmp_path):
        pytest.skip("torch.distributed gloo backend unavailable")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["modules"] == r1["modules"] == ["_Net"]  # the bare module, not the DDP wrapper
    for a, b in zip(r0["init"], r1["init"]):
        assert torch.equal(a, b)  # rank 0's weights were broadcast
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # identical steps on both ranks
    # the ranks split each epoch of the dataset: disjoint rows, together all of them
    epoch = torch.cat([x1 for r in (r0, r1) for _, x1 in r["seen"][:_ROWS // (2 * _BATCH)]])
    assert torch.equal(epoch[:, 0].sort().values, _dataset()[:, 0])

    # loader batches of 8 and 5 rows: each rank trains on as many rows of the coupled global batch
    for a, b in zip(r0["global_params"], r1["global_params"]):
        assert torch.equal(a, b)
    for step in range(3):
        mine0, mine1 = r0["global_seen"][step], r1["global_seen"][step]
        assert mine0.shape == (8, 2) and mine1.shape == (5, 2)
        given = torch.cat([r0["global_batches"][step], r1["global_batches"][step]])
        used = torch.cat([mine0, mine1])
        assert torch.equal(used[used[:, 0].argsort()], given[given[:, 0].argsort()])

    # one process, the concatenated global batch, the same initial weights: the same weights after
    model = _Net().double()
    with torch.no_grad():
        for p, w in zip(model.parameters(), r0["init"]):
            p.copy_(w)
    opt = torch.optim.SGD(model.parameters(), lr=_LR)
    reference = _JvpObjective()
    for (a0, a1), (b0, b1) in zip(r0["seen"], r1["seen"]):
        opt.zero_grad()
        reference.loss(model, torch.cat([a0, b0]), torch.cat([a1, b1])).backward()
        opt.step()
    moved = False
    for p, w, w0 in zip(model.parameters(), r0["params"], r0["init"]):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
        moved |= not torch.equal(w, w0)
    assert moved
