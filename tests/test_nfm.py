"""flowfast.nfm: TarFlow (exact inverse, log-determinant, causality, zero init), its MLE objective
through the Trainer, Tweedie denoising, the NFM coupling (sigma_f, determinism, the per-row cache,
state and exact resume), NFM students beating the independent coupling at one Euler step; the
Trainer's grad_clip / warmup_steps; flowfast.metrics.path_curvature; bad inputs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from flowfast import data, paths
from flowfast.metrics import path_curvature
from flowfast.models import MLP
from flowfast.nfm import NFMCoupling, TarFlow, TarFlowObjective
from flowfast.nfm.tarflow import _AffineBlock
from flowfast.train import CHECKPOINT_NAME, METRICS_NAME, Trainer

F64 = torch.float64


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Non-identity weights: the zero-initialised output projections get N(0, std^2) entries."""
    g = torch.Generator().manual_seed(seed)
    blocks = module.blocks if isinstance(module, TarFlow) else [module]
    with torch.no_grad():
        for block in blocks:
            for p in (block.proj_out.weight, block.proj_out.bias):
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _flow(shape, dtype=F64, randomize=True, seed=0, **kwargs) -> TarFlow:
    torch.manual_seed(seed)
    kwargs = {"width": 16, "blocks": 2, "layers": 1, "heads": 2, **kwargs}
    flow = TarFlow(shape, **kwargs).to(dtype)
    return _randomize(flow, seed) if randomize else flow


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


SHAPES = [((2,), {}), ((6,), {"token_dim": 2}), ((6,), {"token_dim": 3}), ((1, 8, 8), {"patch": 2}),
          ((1, 8, 8), {"patch": 4}), ((3, 4, 4), {"patch": 2})]
SHAPE_IDS = ["vec2", "vec6-tok2", "vec6-tok3", "img1x8x8-p2", "img1x8x8-p4", "img3x4x4-p2"]


# --- TarFlow: the bijection -----------------------------------------------------------------------


@pytest.mark.parametrize("shape, kwargs", SHAPES, ids=SHAPE_IDS)
def test_tarflow_round_trip(shape, kwargs):
    flow = _flow(shape, layers=2, **kwargs)  # two layers: the key/value cache is exercised per layer
    x = torch.randn(5, *shape, dtype=F64)
    z, logdet = flow(x)
    assert z.shape == x.shape and z.dtype == F64 and logdet.shape == (5,)
    assert (z - x).abs().max() > 1e-2 and logdet.abs().max() > 1e-3  # not the identity
    assert (flow.inverse(z) - x).abs().max() < 1e-5
    noise = torch.randn(5, *shape, dtype=F64)
    assert (flow(flow.inverse(noise))[0] - noise).abs().max() < 1e-5


def test_tarflow_round_trip_float32_and_more_blocks():
    flow = _flow((6,), dtype=torch.float32, token_dim=2, blocks=3, layers=2)
    x = torch.randn(7, 6)
    z, _ = flow(x)
    assert z.dtype == torch.float32 and (z - x).abs().max() > 1e-2
    assert (flow.inverse(z) - x).abs().max() < 1e-4


def _jacobian_logdet(flow: TarFlow, x: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0].flatten(), x)
    sign, logabs = torch.linalg.slogdet(jac.reshape(x.numel(), x.numel()))
    assert sign != 0
    return float(logabs)


@pytest.mark.parametrize("shape, kwargs", [((2,), {}), ((6,), {"token_dim": 2}), ((1, 4, 4), {"patch": 2}),
                                           ((3, 4, 4), {"patch": 2})], ids=["vec2", "vec6", "img1", "img3"])
def test_logdet_and_log_prob_match_the_jacobian(shape, kwargs):
    flow = _flow(shape, blocks=3, **kwargs)
    x = torch.randn(3, *shape, dtype=F64)
    z, logdet = flow(x)
    log_prob = flow.log_prob(x)
    for b in range(3):
        brute = _jacobian_logdet(flow, x[b])
        assert logdet[b].item() == pytest.approx(brute, abs=1e-8)
        # change of variables under the N(0, I) prior
        expected = -0.5 * z[b].pow(2).sum().item() - 0.5 * x[b].numel() * math.log(2 * math.pi) + brute
        assert log_prob[b].item() == pytest.approx(expected, abs=1e-8)
        # samples do not see each other: alone in a batch the same z and logdet
        z1, ld1 = flow(x[b:b + 1])
        assert torch.allclose(z1[0], z[b], atol=1e-12) and torch.allclose(ld1[0], logdet[b], atol=1e-12)
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    assert torch.allclose(log_prob, normal.log_prob(z).flatten(1).sum(1) + logdet, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_affine_block_is_causal_in_its_token_order(reverse):
    tokens, dim = 4, 2
    torch.manual_seed(0)
    block = _randomize(_AffineBlock(tokens, dim, width=16, layers=2, heads=2, mlp_ratio=2, reverse=reverse)).double()
    x = torch.randn(1, tokens, dim, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda v: block(v)[0].flatten(), x).reshape(tokens * dim, tokens * dim)
    # rows/columns are token-major: in the block's order, z_i depends on x_{<= i} only
    order = jac.flip(0, 1) if reverse else jac
    assert torch.count_nonzero(torch.triu(order, 1)) == 0  # exactly: masked attention has zero weight
    assert torch.triu(order, 1).abs().max() == 0
    assert torch.tril(order, -1).abs().max() > 1e-3  # and it does depend on the earlier tokens
    assert (order.diagonal().abs() > 0).all()
    # token 0 of the block's order passes through unchanged; logdet = log|det J|
    first = -1 if reverse else 0
    z, logdet = block(x)
    assert torch.equal(z[:, first], x[:, first])
    assert logdet.item() == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-10)
    # perturbing a later token (in the block's order) leaves the earlier outputs as they were
    for k in range(1, tokens):
        j = tokens - 1 - k if reverse else k
        bumped = x.clone()
        bumped[:, j] += 0.7
        zb, _ = block(bumped)
        earlier = list(range(j + 1, tokens)) if reverse else list(range(j))
        later = list(range(j)) if reverse else list(range(j + 1, tokens))
        assert torch.equal(zb[:, earlier], z[:, earlier])
        assert not torch.equal(zb[:, j], z[:, j])
        if later:
            assert (zb[:, later] - z[:, later]).abs().max() > 1e-6


def test_fresh_tarflow_is_the_identity():
    for shape, kwargs in SHAPES:
        torch.manual_seed(0)
        flow = TarFlow(shape, width=16, blocks=2, layers=1, heads=2, **kwargs)
        x = torch.randn(4, *shape)
        z, logdet = flow(x)
        assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(4))
        assert torch.equal(flow.inverse(x), x)


def test_config_rebuilds_the_same_flow():
    flow = _flow((1, 4, 4), patch=2, blocks=3, dtype=torch.float32)
    again = TarFlow(**flow.config)
    again.load_state_dict(flow.state_dict())
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(again(x)[0], flow(x)[0])
    assert flow.dim == 16 and flow.sample_shape == (1, 4, 4)


# --- MLE training through the Trainer -------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    """A TarFlow((2,)) trained on moons for 200 steps (shared: the MLE test and the NFM students)."""
    torch.manual_seed(1)
    flow = TarFlow((2,), width=32, blocks=4, layers=1)
    trainer = Trainer(flow, objective=TarFlowObjective(eta=0.05), source=None, target=data.moons, batch_size=128,
                      optimizer=torch.optim.AdamW(flow.parameters(), lr=2e-3, betas=(0.9, 0.95)), ema_decay=None,
                      seed=1, progress=False, grad_clip=1.0, warmup_steps=20)
    before = trainer.evaluate(n=500)["w2"]
    losses = trainer.train(200)
    return trainer, losses, before


def test_mle_loss_decreases_and_samples(teacher):
    trainer, losses, w2_before = teacher
    assert len(losses) == 200 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < first - 0.2, (first, last)
    report = trainer.evaluate(n=500)
    assert report["method"] == "inverse" and report["nfe"] == 4 * (2 - 1) and report["step"] == 200
    assert math.isfinite(report["w2"]) and report["w2"] < 0.6 * w2_before, (w2_before, report)
    result = trainer.sample(300)
    assert result.x.shape == (300, 2) and bool(torch.isfinite(result.x).all()) and result.nfe == 4
    objective = trainer.path
    nll = objective.nll(trainer.model, data.moons(500, torch.Generator().manual_seed(3)))
    assert math.isfinite(nll)


def test_tarflow_objective_sample_rejects_ode_options():
    flow = _flow((2,), dtype=torch.float32)
    objective = TarFlowObjective(eta=0.05)
    x0 = torch.randn(8, 2)
    with pytest.raises(ValueError, match="method must be 'inverse'"):
        objective.sample(flow, x0, method="euler")
    with pytest.raises(ValueError, match="return_path"):
        objective.sample(flow, x0, return_path=True)
    trainer = Trainer(flow, objective=objective, target=data.moons, progress=False, ema_decay=None)
    with pytest.raises(ValueError, match="inverse"):
        trainer.sample(8, method="euler")
    with pytest.raises(ValueError, match="inverse"):
        trainer.evaluate(n=8, method="dopri5")
    # denoise: inverse then one Tweedie step; without it: the inverse alone
    plain = TarFlowObjective(eta=0.05, denoise=False).sample(flow, x0)
    assert torch.equal(plain.x, flow.inverse(x0)) and plain.nfe == 2
    assert torch.allclose(objective.sample(flow, x0).x, flow.denoise(flow.inverse(x0), 0.05), atol=0)


def test_tarflow_objective_loss_is_the_noisy_nll():
    flow = _flow((6,), token_dim=2)
    x1 = torch.randn(16, 6, dtype=F64)
    g = torch.Generator().manual_seed(4)
    loss = TarFlowObjective(eta=0.1).loss(flow, None, x1, generator=g)
    noisy = x1 + 0.1 * torch.randn(x1.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    expected = -flow.log_prob(noisy).mean() / 6 - 0.5 * math.log(2 * math.pi)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-10)


def test_denoise_moves_by_eta_squared_times_the_score():
    flow = _flow((6,), token_dim=3, blocks=3)
    x = torch.randn(5, 6, dtype=F64)
    leaf = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(flow.log_prob(leaf).sum(), leaf)
    out = flow.denoise(x, 0.2)
    assert not out.requires_grad
    assert torch.allclose(out, x + 0.04 * score, atol=1e-12)
    assert (out - x).abs().max() > 1e-3
    assert torch.equal(flow.denoise(x, 0.0), x)
    with torch.no_grad():  # works inside no_grad as well (sampling)
        assert torch.allclose(flow.denoise(x, 0.2), out, atol=1e-12)


# --- the NFM coupling -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moons_rows():
    return data.moons(2000, torch.Generator().manual_seed(11))


def test_fit_scale_normalises_the_encoding(teacher, moons_rows):
    flow = copy.deepcopy(teacher[0].model)  # NFMCoupling freezes its flow in place
    coupling = NFMCoupling(flow, eta=0.05)
    sigma = coupling.fit_scale(moons_rows, torch.Generator().manual_seed(5))
    assert sigma == coupling.sigma_f and sigma > 0
    # the formula: sqrt(mean f(x + eta eps')^2) with the generator's eps'
    noise = torch.randn(moons_rows.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        raw = flow(moons_rows + 0.05 * noise)[0].double()
    assert sigma == pytest.approx(float(raw.pow(2).mean().sqrt()), rel=1e-5)
    z = coupling.encode(moons_rows, torch.Generator().manual_seed(6))
    assert float(z.double().pow(2).mean()) == pytest.approx(1.0, abs=0.03)
    # a random non-trained flow too (the scale is whatever the flow gives)
    other = NFMCoupling(_flow((2,), dtype=torch.float32), eta=0.05)
    other.fit_scale(moons_rows)
    assert float(other.encode(moons_rows).double().pow(2).mean()) == pytest.approx(1.0, abs=0.05)


def test_coupling_pairs_deterministically(moons_rows):
    flow = _flow((2,), dtype=torch.float32)
    coupling = NFMCoupling(flow, eta=0.1, sigma_f=1.5)
    x1 = moons_rows[:64]
    x0 = torch.randn(64, 2)
    z, same = coupling(x0, x1, torch.Generator().manual_seed(0))
    assert same is x1
    assert z.shape == x1.shape and z.dtype == x1.dtype
    z2, _ = coupling(torch.zeros(64, 2), x1, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2)  # x0 only gives the batch size
    z3, _ = coupling(x0, x1, torch.Generator().manual_seed(1))
    assert not torch.equal(z, z3)  # the eta noise
    # the value: f(x1 + eta eps') / sigma_f with the generator's eps'
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(z, flow(x1 + 0.1 * noise)[0] / 1.5, atol=1e-6)
    # eta 0: no noise, the generator does not matter
    exact = NFMCoupling(flow, eta=0.0, sigma_f=1.0)
    assert torch.equal(exact.encode(x1, torch.Generator().manual_seed(0)),
                       exact.encode(x1, torch.Generator().manual_seed(1)))
    # float64 data on a float32 teacher: z comes back in the data's dtype
    z64, _ = coupling(x0.double(), x1.double(), torch.Generator().manual_seed(0))
    assert z64.dtype == F64 and z64.shape == (64, 2)
    # the frozen teacher
    assert not any(p.requires_grad for p in flow.parameters()) and not flow.training


def test_coupling_errors(moons_rows):
    coupling = NFMCoupling(_flow((2,), dtype=torch.float32), eta=0.05)
    with pytest.raises(ValueError, match="fit_scale"):
        coupling.encode(moons_rows[:4])
    with pytest.raises(ValueError, match="fit_scale"):
        coupling(torch.randn(4, 2), moons_rows[:4])
    coupling.fit_scale(moons_rows)
    with pytest.raises(ValueError, match="same batch size"):
        coupling(torch.randn(5, 2), moons_rows[:4])


def test_cache_keeps_draws_per_row(moons_rows):
    flow = _flow((2,), dtype=torch.float32)
    rows = moons_rows[:200]
    coupling = NFMCoupling(flow, eta=0.1, sigma_f=1.0).cache(rows, draws=3)
    seen = [coupling.encode(rows, torch.Generator().manual_seed(s)) for s in range(12)]
    stacked = torch.stack(seen)  # (12, 200, 2)
    for i in range(0, 200, 17):
        distinct = torch.unique(stacked[:, i], dim=0)
        assert 1 <= distinct.shape[0] <= 3
    assert torch.unique(stacked[:, 0], dim=0).shape[0] >= 2  # draws are chosen, not fixed
    # the (row, draw) encodings are stable: each value is its table entry, whatever batch it came in
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    shuffled = coupling.encode(rows[perm], torch.Generator().manual_seed(99))
    table = coupling._table / coupling.sigma_f
    for i in range(0, 200, 13):
        row = int(perm[i])
        assert any(torch.equal(shuffled[i], table[d, row]) for d in range(3))
    # the same generator, the same draws
    assert torch.equal(coupling.encode(rows, torch.Generator().manual_seed(3)), seen[3])

    once = NFMCoupling(flow, eta=0.1, sigma_f=1.0).cache(rows, draws=1)
    a = once.encode(rows, torch.Generator().manual_seed(0))
    assert torch.equal(a, once.encode(rows, torch.Generator().manual_seed(1)))
    assert torch.equal(once.encode(rows[perm]), a[perm])
    # rows that are not in the cached data: encoded afresh every call
    new = torch.randn(10, 2) + 5.0
    fresh1 = once.encode(new, torch.Generator().manual_seed(0))
    fresh2 = once.encode(new, torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(fresh1).all()) and not torch.equal(fresh1, fresh2)
    mixed = once.encode(torch.cat([rows[:5], new[:5]]), torch.Generator().manual_seed(2))
    assert torch.equal(mixed[:5], a[:5]) and bool(torch.isfinite(mixed).all())
    # the table is a function of (data, draws, seed): rebuilt identically, another seed gives other eps'
    assert torch.equal(NFMCoupling(flow, eta=0.1, sigma_f=1.0).cache(rows, draws=1)._table, once._table)
    assert not torch.equal(NFMCoupling(flow, eta=0.1, sigma_f=1.0).cache(rows, draws=1, seed=1)._table, once._table)
    with pytest.raises(ValueError, match="cache holds"):
        once.encode(rows.double())


def test_coupling_state_round_trip(tmp_path, moons_rows):
    flow = _flow((2,), dtype=torch.float32)
    rows = moons_rows[:300]
    first = NFMCoupling(flow, eta=0.05).cache(rows, draws=2)
    first.fit_scale(rows, torch.Generator().manual_seed(0))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert "table" not in state and state["fingerprint"]["draws"] == 2 and state["fingerprint"]["rows"] == 300
    second = NFMCoupling(flow, eta=0.05).cache(rows, draws=2)
    second.load_state_dict(state)
    assert second.sigma_f == first.sigma_f and torch.equal(second._table, first._table)
    batch = rows[torch.randperm(300, generator=torch.Generator().manual_seed(1))[:128]]
    assert torch.equal(second.encode(batch, torch.Generator().manual_seed(7)),
                       first.encode(batch, torch.Generator().manual_seed(7)))
    # no cache: the scale and the teacher's fingerprint travel
    plain = NFMCoupling(flow, eta=0.05, sigma_f=2.0)
    other = NFMCoupling(flow, eta=0.05)
    other.load_state_dict(plain.state_dict())
    assert other.sigma_f == 2.0
    with pytest.raises(ValueError, match="eta"):
        NFMCoupling(flow, eta=0.1).cache(rows, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="cached data"):
        NFMCoupling(flow, eta=0.05).load_state_dict(state)  # made with a cache, this coupling has none
    with pytest.raises(ValueError, match="cached data"):
        NFMCoupling(flow, eta=0.05).cache(moons_rows[300:600], draws=2).load_state_dict(state)
    with pytest.raises(ValueError, match="draws"):
        NFMCoupling(flow, eta=0.05).cache(rows, draws=3).load_state_dict(state)
    retrained = _flow((2,), dtype=torch.float32)
    with torch.no_grad():
        retrained.blocks[0].proj_out.bias.add_(0.01)
    with pytest.raises(ValueError, match="teacher's weights"):
        NFMCoupling(retrained, eta=0.05).cache(rows, draws=2).load_state_dict(state)
    with pytest.raises(ValueError, match="sigma_f"):
        NFMCoupling(flow, eta=0.05).load_state_dict({"eta": 0.05})


def _student_trainer(coupling, target, out_dir=None, **kwargs):
    torch.manual_seed(0)
    return Trainer(MLP(2, hidden=16, depth=2), paths.IndependentCFM(sigma=0.0, coupling=coupling), None, target,
                   batch_size=64, seed=0, out_dir=out_dir, progress=False, log_every=2, **kwargs)


@pytest.mark.parametrize("cached", [False, True], ids=["sampler", "dataset-cache"])
def test_nfm_coupling_in_the_trainer_resumes_exactly(tmp_path, moons_rows, cached):
    flow = _flow((2,), dtype=torch.float32)
    rows = moons_rows[:256]

    def coupling(fit=True):
        c = NFMCoupling(flow, eta=0.05)
        if cached:
            c.cache(rows, draws=2)
        if fit:
            c.fit_scale(rows, torch.Generator().manual_seed(0))
        return c

    target = rows if cached else data.moons
    full = _student_trainer(coupling(), target, str(tmp_path / "full"))
    losses = full.train(10)
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    if cached:  # the trainer's batch rows are found in the cache: the pairs are table entries
        c = full.path.coupling
        batch = rows[:64]
        z, table = c.encode(batch, torch.Generator().manual_seed(0)), c._table / c.sigma_f
        assert all(any(torch.equal(z[i], table[d, i]) for d in range(2)) for i in range(64))

    cut = _student_trainer(coupling(), target, str(tmp_path / "cut"))
    assert cut.train(4) == losses[:4]
    state = torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)
    assert state["coupling_state"]["sigma_f"] == cut.path.coupling.sigma_f
    assert state["coupling_state"]["eta"] == 0.05
    resumed = _student_trainer(coupling(fit=False), target, str(tmp_path / "cut"))  # sigma_f from the checkpoint
    assert resumed.path.coupling.sigma_f is None
    rest = resumed.train(10, resume=True)
    assert resumed.path.coupling.sigma_f == full.path.coupling.sigma_f
    assert rest == losses[4:]  # bit-identical
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    report = resumed.evaluate(n=200, method="euler", steps=2)
    assert math.isfinite(report["w2"]) and report["nfe"] == 2


def test_nfm_student_beats_independent_at_one_step(teacher):
    """The effect NFM is for: with the flow's pairing the paths are nearly straight, so one Euler
    step lands near the data; the independent coupling's one-step samples collapse to the mean."""
    flow = copy.deepcopy(teacher[0].model)
    target = data.moons
    coupling = NFMCoupling(flow, eta=0.05)
    coupling.fit_scale(target(5000, torch.Generator().manual_seed(1)), torch.Generator().manual_seed(2))
    w2 = {}
    for name, path in (("independent", paths.IndependentCFM(sigma=0.0)),
                       ("nfm", paths.IndependentCFM(sigma=0.0, coupling=coupling))):
        torch.manual_seed(1)
        student = Trainer(MLP(dim=2, hidden=64, depth=3, time_embedding=True), path, None, target, batch_size=256,
                          seed=1, progress=False, ema_decay=None)
        student.train(500)
        w2[name] = student.evaluate(n=1000, method="euler", steps=1)["w2"]
    # seen while choosing the settings (seeds 0, 1, 2): independent 1.65-2.07, nfm 0.49-0.61
    assert w2["nfm"] < 0.5 * w2["independent"], w2
    assert w2["nfm"] < 0.9, w2


# --- bad inputs -----------------------------------------------------------------------------------


def test_tarflow_constructor_errors():
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        TarFlow((1, 6, 6), patch=4)
    with pytest.raises(ValueError, match="token_dim 2 does not divide the sample size 5"):
        TarFlow((5,), token_dim=2)
    with pytest.raises(ValueError, match="blocks must be >= 2"):
        TarFlow((2,), blocks=1)
    with pytest.raises(ValueError, match="blocks must be an int >= 1"):
        TarFlow((2,), blocks=0)
    with pytest.raises(ValueError, match="heads 3 does not divide width 16"):
        TarFlow((2,), width=16, heads=3)
    for shape, kwargs in (((1,), {}), ((4,), {"token_dim": 4}), ((1, 4, 4), {"patch": 4})):
        with pytest.raises(ValueError, match="makes 1 token"):
            TarFlow(shape, **kwargs)
    with pytest.raises(ValueError, match="patch is for image samples"):
        TarFlow((4,), patch=2)
    with pytest.raises(ValueError, match="token_dim is for vector samples"):
        TarFlow((1, 4, 4), token_dim=2)
    for bad in ((2, 3), (), (0,), (2.0,), (True,)):
        with pytest.raises(ValueError, match="sample_shape"):
            TarFlow(bad)
    for name in ("width", "layers", "heads", "mlp_ratio"):
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
            TarFlow((2,), **{name: 0})
    with pytest.raises(ValueError, match="patch must be an int >= 1"):
        TarFlow((1, 4, 4), patch=0)


def test_tarflow_input_errors():
    image = _flow((3, 4, 4), patch=2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) images of shape \(B, 3, 4, 4\), got \(2, 1, 4, 4\)"):
        image(torch.randn(2, 1, 4, 4))  # wrong channels
    with pytest.raises(ValueError, match="images of shape"):
        image.inverse(torch.randn(2, 3, 8, 8))
    vector = _flow((2,), dtype=torch.float32)
    for bad in (torch.randn(4, 3), torch.randn(4), torch.randn(4, 2, 1)):
        with pytest.raises(ValueError, match=r"\(B, d\) vectors of shape \(B, 2\)"):
            vector(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        vector([[0.0, 1.0]])
    for value in (float("nan"), float("inf")):
        bad = torch.zeros(3, 2)
        bad[1, 0] = value
        with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
            vector(bad)
        with pytest.raises(ValueError, match="z contains 1 NaN/Inf"):
            vector.inverse(bad)
        with pytest.raises(ValueError, match="NaN/Inf"):
            vector.log_prob(bad)
    double = _flow((2,))
    with pytest.raises(TypeError, match="float32 but the flow's weights are torch.float64"):
        double(torch.randn(3, 2))
    with pytest.raises(TypeError, match="float32"):
        double.inverse(torch.randn(3, 2))
    with pytest.raises(TypeError, match="int64"):
        double(torch.zeros(3, 2, dtype=torch.int64))


def test_eta_sigma_draws_and_flow_errors(moons_rows):
    flow = _flow((2,), dtype=torch.float32)
    for eta in (-0.1, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="eta"):
            TarFlowObjective(eta=eta)
        with pytest.raises(ValueError, match="eta"):
            NFMCoupling(flow, eta=eta)
    with pytest.raises(TypeError, match="denoise must be a bool"):
        TarFlowObjective(denoise=1)
    for sigma in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="sigma_f must be a finite number > 0"):
            NFMCoupling(flow, sigma_f=sigma)
    coupling = NFMCoupling(flow, sigma_f=1.0)
    for draws in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="draws must be an int >= 1"):
            coupling.cache(moons_rows, draws=draws)
    with pytest.raises(TypeError, match="flowfast.nfm.TarFlow"):
        NFMCoupling(MLP(2))
    with pytest.raises(TypeError, match="flowfast.nfm.TarFlow"):
        NFMCoupling(None)


def test_coupling_input_errors(moons_rows):
    coupling = NFMCoupling(_flow((2,), dtype=torch.float32), sigma_f=1.0)
    bad = moons_rows[:10].clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x1 contains 1 NaN/Inf"):
        coupling.encode(bad)
    with pytest.raises(ValueError, match="x1 contains 1 NaN/Inf"):
        coupling(torch.randn(10, 2), bad)
    with pytest.raises(ValueError, match="data contains 1 NaN/Inf"):
        coupling.fit_scale(bad)
    with pytest.raises(ValueError, match="data contains 1 NaN/Inf"):
        coupling.cache(bad)
    inf = moons_rows[:10].clone()
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        coupling.encode(inf)
    with pytest.raises(ValueError, match="teacher's sample shape"):
        coupling.encode(torch.randn(4, 3))
    with pytest.raises(ValueError, match="teacher's sample shape"):
        coupling.fit_scale(torch.randn(4, 2, 1))
    with pytest.raises(TypeError, match="floating-point"):
        coupling.encode(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one data row"):
        coupling.fit_scale(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="at least one data row"):
        coupling.cache(torch.zeros(0, 2))
    assert coupling.encode(torch.zeros(0, 2)).shape == (0, 2)


def test_trainer_grad_clip_and_warmup_errors():
    def make(**kwargs):
        return Trainer(MLP(2, hidden=8, depth=1), "icfm", None, data.moons, progress=False, **kwargs)

    for clip in (0, 0.0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="grad_clip must be None or a finite number > 0"):
            make(grad_clip=clip)
    for warmup in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="warmup_steps must be an int >= 0"):
            make(warmup_steps=warmup)
    assert make(grad_clip=2, warmup_steps=0).grad_clip == 2.0


# --- Trainer: warm-up and clipping ----------------------------------------------------------------


def _warmup_trainer(out_dir):
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=2)
    return Trainer(model, "icfm", None, data.moons, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                   batch_size=32, seed=0, out_dir=str(out_dir), progress=False, log_every=1, warmup_steps=10,
                   ema_decay=None)


def test_warmup_ramps_the_learning_rate_and_resumes_mid_ramp(tmp_path):
    full = _warmup_trainer(tmp_path / "full")
    seen = []
    for k in range(1, 16):
        full.train(k)
        seen.append(full.optimizer.param_groups[0]["lr"])
    expected = [1e-3 * k for k in range(1, 11)] + [1e-2] * 5
    assert seen == pytest.approx(expected, rel=1e-12)
    assert full.optimizer.param_groups[0]["base_lr"] == 1e-2
    logged = [row["lr"] for row in _read_jsonl(tmp_path / "full" / METRICS_NAME)]
    assert logged == pytest.approx(expected, rel=1e-12)
    losses_full = [row["loss"] for row in _read_jsonl(tmp_path / "full" / METRICS_NAME)]

    cut = _warmup_trainer(tmp_path / "cut")
    cut.train(4)  # checkpoint at step 4, mid-ramp
    resumed = _warmup_trainer(tmp_path / "cut")
    rest = resumed.train(15, resume=True)
    rows = _read_jsonl(tmp_path / "cut" / METRICS_NAME)
    assert [row["step"] for row in rows] == list(range(1, 16))
    assert [row["lr"] for row in rows] == pytest.approx(expected, rel=1e-12)
    assert rest == losses_full[4:]
    assert resumed.warmup_steps == 10


class _ConstantGradient:
    """loss = scale * sum of all parameters: every entry's gradient is ``scale``, whatever the batch."""

    def __init__(self, scale):
        self.scale = scale

    def couple(self, x0, x1, generator=None):
        return x0, x1

    def loss(self, model, x0, x1, generator=None):
        return self.scale * sum(p.sum() for p in model.parameters()) + 0.0 * model(x1).sum()


@pytest.mark.parametrize("clip", [None, 0.5, 1e9])
def test_grad_clip_bounds_the_update(clip):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    count = sum(p.numel() for p in model.parameters())  # 6
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, objective=_ConstantGradient(1e6), target=data.moons, batch_size=8, progress=False,
                      optimizer=torch.optim.SGD(model.parameters(), lr=1.0), ema_decay=None, grad_clip=clip)
    trainer.train(1)
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    raw_norm = 1e6 * math.sqrt(count)
    if clip is None or clip > raw_norm:
        assert torch.allclose(update, torch.full((count,), -1e6), rtol=1e-6)
    else:  # clip_grad_norm_: the gradient scaled to norm clip, direction kept
        assert float(update.norm()) == pytest.approx(clip, rel=1e-5)
        assert torch.allclose(update, torch.full((count,), -clip / math.sqrt(count)), rtol=1e-4)


# --- path curvature -------------------------------------------------------------------------------


def test_path_curvature():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.linspace(0, 1, 9, dtype=F64)
    straight = x0 + t[:, None, None] * (x1 - x0)  # (9, 6, 3)
    assert path_curvature(straight) == pytest.approx(0.0, abs=1e-20)
    uneven = torch.tensor([0.0, 0.1, 0.15, 0.5, 0.6, 0.8, 0.9, 0.95, 1.0], dtype=F64)
    assert path_curvature(x0 + uneven[:, None, None] * (x1 - x0), uneven) == pytest.approx(0.0, abs=1e-20)
    # straight but not at constant speed, and curved paths: > 0
    assert path_curvature(x0 + (t ** 2)[:, None, None] * (x1 - x0)) > 1e-3
    angle = t * math.pi / 2
    arc = torch.stack([torch.cos(angle), torch.sin(angle)], -1)[:, None]  # (9, 1, 2): a quarter circle
    assert path_curvature(arc) > 1e-2
    assert path_curvature(arc.float()) == pytest.approx(path_curvature(arc), rel=1e-5)
    # by hand: (0, 0) -> (1, 1) -> (2, 0); velocities (2, 2), (2, -2), chord (2, 0): 4 per step, / D = 2
    tent = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]])
    assert path_curvature(tent) == pytest.approx(2.0, rel=1e-12)
    # at times 0, 0.25, 1: velocities (4, 4), (4/3, -4/3): deviations 20, 20/9 -> (5 + 5/3) / 2
    assert path_curvature(tent, torch.tensor([0.0, 0.25, 1.0])) == pytest.approx(10 / 3, rel=1e-12)
    # a batch averages over samples; D normalises: one (2, 2)-image sample = its 4 numbers flattened
    both = torch.cat([tent, torch.zeros(3, 1, 2)], 1)
    assert path_curvature(both) == pytest.approx(1.0, rel=1e-12)
    image = torch.cat([tent, torch.zeros(3, 1, 2)], -1).reshape(3, 1, 2, 2)
    assert path_curvature(image) == pytest.approx(1.0, rel=1e-12)  # deviations 4, 4: (4 + 4) / 2 / D=4


def test_path_curvature_errors():
    good = torch.randn(3, 2, 2)
    for bad in (torch.randn(3, 2), torch.randn(1, 2, 2), torch.randn(3, 0, 2), torch.randn(3)):
        with pytest.raises(ValueError, match=r"\(K \+ 1, B, \*shape\)"):
            path_curvature(bad)
    with pytest.raises(ValueError, match="path must be"):
        path_curvature(good.numpy())
    with pytest.raises(ValueError, match=r"times must be \(3,\)"):
        path_curvature(good, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        path_curvature(good, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        path_curvature(good, torch.tensor([0.0, float("nan"), 1.0]))
    nan = good.clone()
    nan[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        path_curvature(nan)
    with pytest.raises(TypeError, match="path must be"):
        path_curvature(torch.zeros(3, 2, 2, dtype=torch.int64))


def test_path_curvature_times_not_a_tensor():
    with pytest.raises((TypeError, ValueError), match="times"):
        path_curvature(torch.randn(3, 2, 2), [0.0, 0.5, 1.0])
