"""flowfast.discrete: the DFM objective (ELBO / cross-entropy, independent or paired sources),
the ancestral and CTMC-Euler samplers (exact posterior, NFE), training through the Trainer, and
clear errors."""

from __future__ import annotations

import pytest
import torch

from flowfast import discrete as dfm
from flowfast.categorical.tasks import MarkovChainTask
from flowfast.models import SimplexTransformer
from flowfast.train import Trainer


def _model(vocab=5, length=4, seed=0):
    torch.manual_seed(seed)
    return dfm.DiscreteFlowModel(SimplexTransformer(vocab, length, width=16, depth=1, heads=2, time_features=8), vocab)


@pytest.mark.parametrize("method", ["ancestral", "euler"])
@pytest.mark.parametrize("t,s", [(0.0, 0.25), (0.3, 0.5), (0.7, 0.9), (0.5, 1.0)])
def test_step_probabilities_are_distributions(method, t, s):
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 3, -1)
    x = torch.randint(0, 6, (3, 4), generator=g)
    q = dfm.step_probabilities(p, x, t, s, method)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("method", ["ancestral", "euler"])
def test_steps_carry_the_marginal_exactly(method):
    """With the true p(x1 | x_t) of a one-token data law pi, one step from the marginal
    p_t = t pi + (1 - t)/V gives exactly p_s = s pi + (1 - s)/V: the ancestral step is the exact
    posterior, and the Euler step is exact here too because the marginal is linear in t."""
    vocab = 5
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    for t, s in [(0.0, 0.3), (0.2, 0.6), (0.6, 0.61), (0.4, 1.0)]:
        x = torch.arange(vocab)[None, :]                         # every state x_t
        lik = t * torch.eye(vocab, dtype=torch.float64) + (1 - t) / vocab   # q(x_t = x | x1 = y), [x, y]
        posterior = pi * lik / (pi * lik).sum(1, keepdim=True)  # p(x1 = y | x_t = x)
        q = dfm.step_probabilities(posterior[None], x, t, s, method)[0]   # (x, y)
        marginal_t = t * pi + (1 - t) / vocab
        torch.testing.assert_close(marginal_t @ q, s * pi + (1 - s) / vocab)


def test_ancestral_and_euler_differ_per_state():
    """Same marginal, different transition kernels: the ancestral step keeps a token more often."""
    p = torch.softmax(torch.randn(1, 1, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    x = torch.zeros(1, 1, dtype=torch.long)
    a = dfm.step_probabilities(p, x, 0.3, 0.5, "ancestral")
    e = dfm.step_probabilities(p, x, 0.3, 0.5, "euler")
    assert not torch.allclose(a, e)


@pytest.mark.parametrize("loss", ["elbo", "ce"])
def test_loss_is_zero_for_an_oracle_and_positive_otherwise(loss):
    vocab, length = 5, 4
    tokens = torch.randint(0, vocab, (64, length), generator=torch.Generator().manual_seed(2))

    class Oracle(torch.nn.Module):
        vocab = 5

        def forward(self, xt, t):
            return torch.nn.functional.one_hot(tokens, vocab).float() * 60.0

    obj = dfm.DFMObjective(vocab, loss)
    noise = torch.randn(64, length, vocab, generator=torch.Generator().manual_seed(3))
    assert obj.loss(Oracle(), noise, tokens, torch.Generator().manual_seed(4)).item() < 1e-6
    value = obj.loss(_model(vocab, length), noise, tokens, torch.Generator().manual_seed(4))
    assert value.item() > 0.1 and value.requires_grad


def test_paired_rows_use_the_stored_source():
    vocab, length = 5, 4
    tokens = torch.randint(0, vocab, (32, length), generator=torch.Generator().manual_seed(5))
    sources = torch.randint(0, vocab, (32, length), generator=torch.Generator().manual_seed(6))
    obj = dfm.DFMObjective(vocab, paired=True)
    assert obj.source_shape((2 * length,)) == (length, vocab)
    source, data = obj.split(torch.randn(32, length, vocab), dfm.with_sources(tokens, sources))
    assert torch.equal(source, sources) and torch.equal(data, tokens)
    # Independent: the source is the argmax of the noise (uniform).
    noise = torch.randn(20000, 1, vocab, generator=torch.Generator().manual_seed(7))
    source, _ = dfm.DFMObjective(vocab).split(noise, torch.zeros(20000, 1, dtype=torch.long))
    freq = torch.bincount(source.flatten(), minlength=vocab).double() / 20000
    assert (freq - 0.2).abs().max() < 0.015


def test_sampler_nfe_greedy_and_paths():
    model = _model()
    x0 = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(8))
    for method in ("ancestral", "euler"):
        for K in (1, 2, 4):
            a = dfm.sample(model, x0, steps=K, method=method, generator=torch.Generator().manual_seed(0))
            b = dfm.sample(model, x0, steps=K, method=method, generator=torch.Generator().manual_seed(0))
            assert a.nfe == K and a.tokens.shape == (6, 4) and a.tokens.dtype == torch.int64
            assert torch.equal(a.tokens, b.tokens)
            assert ((a.tokens >= 0) & (a.tokens < 5)).all()
    one = dfm.sample(model, x0, steps=1)
    t0 = torch.zeros(6)
    assert torch.equal(one.tokens, model(x0, t0).argmax(-1))  # one greedy step: argmax of p(x1 | x0, 0)


def test_training_beats_untrained_and_pairs_train_too():
    task = MarkovChainTask(vocab=4, length=8)
    data = task.sample(4096, torch.Generator().manual_seed(1))
    x0 = torch.randint(0, 4, (2000, 8), generator=torch.Generator().manual_seed(2))

    def nll_ratio(model, steps=8):
        return task.evaluate(dfm.sample(model, x0, steps=steps, generator=torch.Generator().manual_seed(3)).tokens)[
            "nll_ratio"]

    torch.manual_seed(0)
    model = dfm.DiscreteFlowModel(SimplexTransformer(4, 8, width=32, depth=1, heads=2, time_features=16), 4)
    before = nll_ratio(model)
    trainer = Trainer(model, objective=dfm.DFMObjective(4), target=data, batch_size=128, progress=False,
                      ema_decay=None, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3))
    trainer.train(150)
    after = nll_ratio(model)
    assert after < before - 0.2, (before, after)
    result = trainer.sample(16)
    assert result.nfe == 32 and result.x.shape == (16, 8)

    sources = dfm.pairflow_pairs(data, 4, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    paired = dfm.DiscreteFlowModel(SimplexTransformer(4, 8, width=32, depth=1, heads=2, time_features=16), 4)
    Trainer(paired, objective=dfm.DFMObjective(4, paired=True), target=dfm.with_sources(data, sources),
            batch_size=128, progress=False, ema_decay=None,
            optimizer=torch.optim.AdamW(paired.parameters(), lr=3e-3)).train(150)
    assert nll_ratio(paired) < before - 0.2


def test_bad_inputs():
    model = _model()
    x0 = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        dfm.sample(model, x0, steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        dfm.sample(model, x0, method="rk4")
    with pytest.raises(ValueError, match="final must be"):
        dfm.sample(model, x0, final="mode")
    with pytest.raises(TypeError, match="integer source tokens"):
        dfm.sample(model, x0.float())
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        dfm.sample(model, x0 + 7)
    with pytest.raises(ValueError, match="loss must be one of"):
        dfm.DFMObjective(5, "mse")
    with pytest.raises(ValueError, match="t_max"):
        dfm.DFMObjective(5, t_max=1.0)
    obj = dfm.DFMObjective(5, paired=True)
    with pytest.raises(ValueError, match=r"\(B, 2L\)"):
        obj.loss(model, torch.randn(2, 4, 5), torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        dfm.DFMObjective(5).loss(model, torch.randn(2, 4, 5), torch.full((2, 4), 9))
    with pytest.raises(TypeError, match="integer token ids"):
        dfm.DFMObjective(5).loss(model, torch.randn(2, 4, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x0 noise must be"):
        dfm.DFMObjective(5).loss(model, torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"both be \(N, L\)"):
        dfm.with_sources(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
