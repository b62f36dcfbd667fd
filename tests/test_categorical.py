"""Categorical flow maps (flowfast.categorical): the ECLD identity and bound, the map's endpoints,
the path, the objectives (kernel = reference wiring, training beats the untrained model), the
samplers, classifier-free and reward guidance, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowfast import categorical as cat
from flowfast.categorical.tasks import MarkovChainTask
from flowfast.models import SimplexTransformer
from flowfast.train import Trainer


def _map(vocab=5, length=3, num_classes=None, dtype=torch.float64, seed=0, width=16):
    torch.manual_seed(seed)
    net = SimplexTransformer(vocab, length, width=width, depth=1, heads=2, time_features=8, num_classes=num_classes)
    # FiLM starts at zero; random FiLM weights make the logits depend on s and t in every test.
    for block in net.blocks:
        torch.nn.init.normal_(block.film.weight, std=0.3)
    return cat.CategoricalFlowMap(net.to(dtype), vocab)


def _times(B, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, generator=g, dtype=dtype) * 0.8
    t = s + torch.rand(B, generator=g, dtype=dtype) * (1 - s) * 0.9
    return s, t


# --- the map and the identity -----------------------------------------------------------------------------
def test_endpoints_of_the_map():
    """X_{s,s}(x) = x; X_{s,1}(x) = pi_theta(x; s, 1), on the simplex."""
    fm = _map()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    s, _ = _times(4)
    same = fm.jump(x, s, s, fm.logits(x, s, s)).x
    torch.testing.assert_close(same, x)
    one = torch.ones_like(s)
    landed = fm.jump(x, s, one, fm.logits(x, s, one)).x
    torch.testing.assert_close(landed, fm.endpoint(x, s, one))
    torch.testing.assert_close(landed.sum(-1), torch.ones(4, 3, dtype=torch.float64))


def test_ecld_identity_and_bound():
    """(1 - t)[d/dt X - v_t(X)] = (pi_{s,t} - pi(X; t, t)) + (1 - t) gamma d/dt pi_{s,t}, with
    v_t(x) = (pi(x; t, t) - x) / (1 - t), and |d/dt X - v_t(X)|^2 <= 4 / (1 - t)^2 KL(pi(X;t,t) | pi_{s,t})
    + 2 gamma^2 |d/dt pi_{s,t}|^2 per position, on a random network in float64."""
    fm = _map()
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    s, t = _times(6)

    def jump(tt):
        return fm.jump(x, s, tt, fm.logits(x, s, tt)).x

    X, dX = torch.func.jvp(jump, (t,), (torch.ones_like(t),))
    pi_st, dpi = torch.func.jvp(lambda tt: fm.endpoint(x, s, tt), (t,), (torch.ones_like(t),))
    pi_land = fm.endpoint(X, t, t)
    v = (pi_land - X) / (1 - t)[:, None, None]
    gamma = ((t - s) / (1 - s))[:, None, None]
    lhs = (1 - t)[:, None, None] * (dX - v)
    rhs = (pi_st - pi_land) + (1 - t)[:, None, None] * gamma * dpi
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    residual = ((dX - v) ** 2).sum(-1)
    kl = (pi_land * (pi_land.log() - pi_st.log())).sum(-1)
    bound = 4 / (1 - t)[:, None] ** 2 * kl + 2 * gamma[..., 0] ** 2 * (dpi**2).sum(-1)
    assert (residual <= bound * (1 + 1e-9)).all()
    assert (residual > 0).all()


def test_interpolate_without_a_one_hot():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 6, 7, generator=g)
    tokens = torch.randint(0, 7, (4, 6), generator=g)
    t = torch.rand(4, generator=g)
    want = (1 - t)[:, None, None] * x0 + t[:, None, None] * F.one_hot(tokens, 7).float()
    torch.testing.assert_close(cat.interpolate(x0, tokens, t), want)
    torch.testing.assert_close(cat.input_scale(torch.tensor([0.0, 1.0]), 16), torch.tensor([0.25, 1.0]))


# --- the objectives ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ecld", "csd"])
def test_objective_kernel_equals_reference(method):
    """The same loss and parameter gradients through the fused kernels and the pure-torch reference."""
    fm = _map()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (8, 3), generator=g)
    x0 = torch.randn(8, 3, 5, generator=g, dtype=torch.float64)
    results = []
    for backend in ("auto", "torch"):
        obj = cat.CategoricalObjective(5, method, diagonal_fraction=0.5, backend=backend)
        fm.zero_grad()
        loss = obj.loss(fm, x0, tokens, torch.Generator().manual_seed(7))
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in fm.parameters() if p.grad is not None])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_vfm_is_the_diagonal_cross_entropy():
    fm = _map()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 5, (8, 3), generator=g)
    x0 = torch.randn(8, 3, 5, generator=g, dtype=torch.float64)
    obj = cat.CategoricalObjective(5, "vfm")
    loss = obj.loss(fm, x0, tokens, torch.Generator().manual_seed(7))
    t = torch.rand(8, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)[:, 0]
    logits = fm.logits(cat.interpolate(x0, tokens, t), t, t)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1)))
    assert obj.default_sampler == ("euler", 100)
    assert cat.CategoricalObjective(5, "ecld").default_sampler == ("map", 4)


def test_short_training_beats_the_untrained_model():
    """A short ECLD run on the Markov task through the trainer (token data, dense source) lowers
    the exact NLL of one-step samples clearly below the untrained model's."""
    task = MarkovChainTask(vocab=8, length=8, seed=0)
    data = task.sample(4096, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = SimplexTransformer(8, 8, width=32, depth=1, heads=2, time_features=16)
    fm = cat.CategoricalFlowMap(net, 8)
    x0 = cat.source_noise(2000, 8, 8, torch.Generator().manual_seed(5))

    def nll_ratio(model):
        return task.evaluate(cat.sample(model, x0, 1).tokens)["nll_ratio"]

    before = nll_ratio(fm)
    trainer = Trainer(fm, objective=cat.CategoricalObjective(8, "ecld"), target=data, batch_size=128,
                      progress=False, ema_decay=None, optimizer=torch.optim.AdamW(fm.parameters(), lr=3e-3))
    trainer.train(150)
    after = nll_ratio(fm)
    assert after < before - 0.3, (before, after)
    result = trainer.sample(16)  # the objective's default: 4 jumps
    assert result.nfe == 4 and result.x.shape == (16, 8, 8)
    torch.testing.assert_close(result.x.sum(-1), torch.ones(16, 8))


# --- samplers and guidance ----------------------------------------------------------------------------------
def test_sampler_steps_and_nfe():
    fm = _map(dtype=torch.float32)
    x0 = torch.randn(5, 3, 5)
    for method in ("map", "euler"):
        for K in (1, 2, 4):
            r = cat.sample(fm, x0, K, method=method, return_path=True)
            assert r.nfe == K and r.path.shape == (K + 1, 5, 3, 5)
            torch.testing.assert_close(r.probs.sum(-1), torch.ones(5, 3))
            assert torch.equal(r.tokens, r.probs.argmax(-1))
    one = cat.sample(fm, x0, 1)
    s = torch.zeros(5)
    torch.testing.assert_close(one.probs, fm.endpoint(x0, s, torch.ones(5)))
    drawn = cat.sample(fm, x0, 2, readout_method="multinomial", generator=torch.Generator().manual_seed(0))
    assert drawn.tokens.shape == (5, 3) and int(drawn.tokens.max()) < 5


def test_guidance_weight_zero_is_the_conditional_sampler():
    fm = _map(num_classes=3, dtype=torch.float32)
    x0 = torch.randn(6, 3, 5)
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    guided = cat.sample(fm, x0, 3, label=label, guidance_weight=0.0)
    x = x0
    for k in range(3):
        s, t = torch.full((6,), k / 3), torch.full((6,), (k + 1) / 3)
        x = fm.jump(x, s, t, fm.logits(x, s, t, label)).x
    torch.testing.assert_close(guided.probs, x)
    assert guided.nfe == 3
    assert cat.sample(fm, x0, 3, label=label, guidance_weight=1.5).nfe == 6


def _class_task(n, generator):
    """Class c in {0..3}; each of 4 positions is token c with probability 0.4, else uniform on 4."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    uniform = torch.randint(0, 4, (n, 4), generator=generator)
    keep = torch.rand(n, 4, generator=generator) < 0.4
    return torch.where(keep, labels[:, None], uniform), labels


def test_classifier_free_guidance_raises_the_conditioned_class_rate():
    tokens, labels = _class_task(4096, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = SimplexTransformer(4, 4, width=32, depth=1, heads=2, time_features=16, num_classes=4)
    fm = cat.CategoricalFlowMap(net, 4)
    obj = cat.CategoricalObjective(4, "vfm", num_classes=4, label_dropout=0.2)
    Trainer(fm, objective=obj, target=cat.with_labels(tokens, labels), batch_size=256, progress=False,
            ema_decay=None, optimizer=torch.optim.AdamW(fm.parameters(), lr=3e-3)).train(200)
    x0 = cat.source_noise(2000, 4, 4, torch.Generator().manual_seed(1))
    label = torch.arange(2000) % 4
    rates = {}
    for w in (0.0, 2.0):
        out = cat.sample(fm, x0, 8, method="euler", label=label, guidance_weight=w,
                         readout_method="multinomial", generator=torch.Generator().manual_seed(2))
        rates[w] = float((out.tokens == label[:, None]).float().mean())
    assert 0.45 < rates[0.0] < 0.7, rates  # the conditional law: 0.4 + 0.6 / 4 = 0.55
    assert rates[2.0] > rates[0.0] + 0.1, rates


def test_reward_guidance_raises_the_reward():
    """Gradient guidance and SMC reweighting both raise the look-ahead reward 'probability of
    token 0' over the unguided sampler, on a fixed random map."""
    fm = _map(dtype=torch.float32, width=16)
    x0 = cat.source_noise(512, 3, 5, torch.Generator().manual_seed(0))

    def reward(probs):
        return probs[..., 0].mean(-1)

    base = float((cat.sample(fm, x0, 4).tokens == 0).float().mean())
    guided = cat.gradient_guided_sample(fm, x0, reward, 4, scale=30.0)
    smc = cat.smc_sample(fm, x0, reward, 4, temperature=0.02, generator=torch.Generator().manual_seed(1))
    assert float((guided.tokens == 0).float().mean()) > base + 0.05
    assert float((smc.tokens == 0).float().mean()) > base + 0.05
    assert smc.resamplings >= 1 and len(smc.ess) == 4 and guided.nfe == 8


# --- bad input ----------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    fm = _map(dtype=torch.float32)
    obj = cat.CategoricalObjective(5, "ecld")
    x0 = torch.randn(4, 3, 5)
    good = torch.randint(0, 5, (4, 3))
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        obj.loss(fm, x0, good + 5)
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        obj.loss(fm, x0, good - 6)
    with pytest.raises(TypeError, match="int64 or int32 token ids"):
        obj.loss(fm, x0, good.float())
    with pytest.raises(ValueError, match="dense source"):
        obj.loss(fm, x0[..., :4], good)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 5\)"):
        obj.loss(fm, torch.randn(4, 4, 5), torch.randint(0, 5, (4, 4)))
    with pytest.raises(TypeError, match="CategoricalFlowMap"):
        obj.loss(fm.net, x0, good)
    with pytest.raises(ValueError, match="method must be one of"):
        cat.CategoricalObjective(5, "kl")
    with pytest.raises(ValueError, match="guidance_weight needs"):
        cat.CategoricalObjective(5, guidance_weight=1.0)
    with pytest.raises(ValueError, match="V = 4 classes"):
        cat.sample(fm, torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="steps must be"):
        cat.sample(fm, x0, 0)
    with pytest.raises(ValueError, match="label= needs a class-conditional"):
        cat.sample(fm, x0, 2, label=torch.zeros(4, dtype=torch.long))
    conditional = cat.CategoricalObjective(5, num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        conditional.loss(_map(num_classes=3, dtype=torch.float32), x0, cat.with_labels(good, torch.full((4,), 3)))


class _ExactPosterior(torch.nn.Module):
    """The exact diagonal endpoint of a one-position data law p on V classes: with x_t = (1 - t) x0
    + t e_v, p(v | x_t) is proportional to p_v exp(t x_t[v] / (1 - t)^2)."""

    def __init__(self, p: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_p", p.log())

    def forward(self, x, s, t):
        return self.log_p + (s / (1 - s).clamp_min(1e-3) ** 2)[:, None, None] * x


def test_euler_on_the_exact_posterior_converges_to_the_data_law():
    """The samplers are right: Euler on the exact posterior reaches the data law as K grows (and one
    Euler step collapses onto the mode, what flow maps are trained to avoid)."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    fm = cat.CategoricalFlowMap(_ExactPosterior(p), 5, input_scaling=False)
    x0 = cat.source_noise(100_000, 1, 5, torch.Generator().manual_seed(0))
    freq = {K: torch.bincount(cat.sample(fm, x0, K, method="euler").tokens.view(-1), minlength=5).double() / 100_000
            for K in (1, 128)}
    assert freq[1][0] == 1.0
    torch.testing.assert_close(freq[128], p.double(), atol=0.006, rtol=0)


def test_many_steps_land_on_the_simplex():
    """The grid's exact gamma: the last of K = 100 steps lands on the endpoint (the training clamp
    of 1 - s would stop the last five steps short)."""
    fm = _map(dtype=torch.float32)
    out = cat.sample(fm, torch.randn(4, 3, 5), 100, method="euler")
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(4, 3))
    assert (out.probs >= 0).all()


def test_trainer_evaluate_reports_token_statistics():
    task = MarkovChainTask(vocab=5, length=3, seed=0)
    data = task.sample(512, torch.Generator().manual_seed(1))
    fm = _map(dtype=torch.float32)
    trainer = Trainer(fm, objective=cat.CategoricalObjective(5, "ecld"), target=data, batch_size=64, progress=False)
    report = trainer.evaluate(256)
    assert {"unigram_tv", "position_tv", "unique_fraction", "nfe"} <= set(report) and report["nfe"] == 4
    assert 0 <= report["unigram_tv"] <= 1 and 0 <= report["position_tv"] <= 1


def test_bad_guidance_inputs():
    fm = _map(num_classes=3, dtype=torch.float32)
    x0 = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="guidance_weight must be a finite number"):
        cat.sample(fm, x0, 2, label=torch.zeros(2, dtype=torch.long), guidance_weight=float("nan"))
    with pytest.raises(ValueError, match=r"label must lie in \[0, 3\]"):
        cat.sample(fm, x0, 2, label=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="ce_weight must be a finite number"):
        cat.CategoricalObjective(5, ce_weight=float("inf"))
