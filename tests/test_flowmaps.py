"""flowfast.flowmaps: the map and its derivatives, each objective on a closed-form flow map (zero
there, positive when perturbed), stop-gradients, the learned weight, time draws, the few-step
sampler and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from flowfast import flowmaps
from flowfast.flowmaps import (EMD, ESD, LMD, LSD, PSD, FlowMap, FlowMatchingDiagonal, LossWeight,
                               ProgressiveMapDistillation, sample, sample_times)
from flowfast.flowmaps.analytic import GaussianFlowMapNet, gaussian_fm_minimum
from flowfast.flowmaps.derivatives import along_characteristic, spatial_derivative, start_derivative, time_derivative
from flowfast.flowmaps.objective import per_sample_mse

F64 = torch.float64


class TwoTimeNet(nn.Module):
    """A small smooth net(x, s, t) with s and t as separate inputs."""

    def __init__(self, dim=2, hidden=32, dtype=torch.float32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + 2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, dim)).to(dtype)

    def forward(self, x, s, t):
        return self.body(torch.cat([x, s[:, None], t[:, None]], dim=1))


def _gaussian(perturbation=0.0):
    net = GaussianFlowMapNet(torch.tensor([2.0, -1.0], dtype=F64), 0.5, perturbation)
    return net, FlowMap(net)


def _times(n, g, dtype=F64, fraction=0.0):
    return sample_times(n, fraction, generator=g, dtype=dtype)


def _all_objectives(teacher):
    return {"lsd": LSD(), "esd": ESD(), "esd-target": ESD(stop_gradient="target"), "psd-m": PSD(),
            "psd-u": PSD(gamma="uniform"), "lmd": LMD(teacher), "emd": EMD(teacher),
            "emd-target": EMD(teacher, stop_gradient="target")}


# --- the map ----------------------------------------------------------------------------------------


def test_identity_on_the_diagonal_and_velocity_is_the_tangent():
    torch.manual_seed(0)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    x = torch.randn(16, 2, dtype=F64)
    t = torch.rand(16, dtype=F64)
    assert torch.equal(fm(x, t, t), x)
    # the tangent condition holds by construction: d/dt X_{s,t} at t = s is v_{s,s}
    _, rate = time_derivative(fm, x, t, t)
    torch.testing.assert_close(rate, fm.velocity(x, t), rtol=1e-12, atol=1e-12)


def test_closed_form_map_is_a_semigroup_with_the_right_marginals():
    net, fm = _gaussian()
    g = torch.Generator().manual_seed(0)
    x = net.source(64, g)
    s, u, t = (torch.full((64,), v, dtype=F64) for v in (0.1, 0.45, 0.95))
    torch.testing.assert_close(fm(fm(x, s, u), u, t), fm(x, s, t), rtol=1e-12, atol=1e-12)
    # Lagrangian property: d/dt X_{s,t}(x) = v_{t,t}(X_{s,t}(x))
    landing, rate = time_derivative(fm, x, s, t)
    torch.testing.assert_close(rate, fm.velocity(landing, t), rtol=1e-12, atol=1e-12)
    big = sample(fm, net.source(200_000, g), steps=1).x
    torch.testing.assert_close(big.mean(0), net.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(big.std(0), torch.full((2,), 0.5, dtype=F64), atol=0.01, rtol=0)


@pytest.mark.parametrize("name", ["lsd", "esd", "esd-target", "psd-m", "psd-u", "lmd", "emd", "emd-target"])
def test_off_diagonal_terms_vanish_on_the_exact_map_and_not_on_a_perturbed_one(name):
    net, fm = _gaussian()
    objective = _all_objectives(fm.velocity)[name]
    g = torch.Generator().manual_seed(1)
    x0, x1 = net.source(2048, g), net.target(2048, g)
    times = _times(2048, g)
    exact = objective.off_diagonal(fm, x0, x1, times.s, times.t, g).mean().item()
    assert exact < 1e-20
    net.perturbation.data.fill_(0.2)
    teacher = _gaussian()[1].velocity  # the distillation objectives keep the exact teacher
    objective = _all_objectives(teacher)[name]
    perturbed = objective.off_diagonal(fm, x0, x1, times.s, times.t, g).mean().item()
    assert perturbed > 1e-4


def test_diagonal_term_reaches_the_analytic_minimum_at_the_exact_map():
    net, fm = _gaussian()
    g = torch.Generator().manual_seed(2)
    n = 200_000
    x0, x1 = net.source(n, g), net.target(n, g)
    t = torch.rand(n, generator=g, dtype=F64)
    per_sample = FlowMatchingDiagonal().diagonal(fm, x0, x1, t, g)
    expected = gaussian_fm_minimum(0.5, t)
    assert abs(per_sample.mean().item() - expected.mean().item()) < 0.01
    net.perturbation.data.fill_(0.2)
    assert FlowMatchingDiagonal().diagonal(fm, x0, x1, t, g).mean().item() > expected.mean().item() + 0.02


# --- derivatives ------------------------------------------------------------------------------------


def test_time_jvp_equals_a_float64_finite_difference():
    torch.manual_seed(3)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    x = torch.randn(8, 2, dtype=F64)
    s, t = torch.rand(8, dtype=F64) * 0.5, 0.5 + torch.rand(8, dtype=F64) * 0.5
    _, rate = time_derivative(fm, x, s, t)
    h = 1e-6
    fd = (fm.jump(x, s, t + h) - fm.jump(x, s, t - h)) / (2 * h)
    torch.testing.assert_close(rate, fd, rtol=1e-7, atol=1e-8)


def test_characteristic_jvp_equals_a_float64_finite_difference():
    torch.manual_seed(4)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    x, b = torch.randn(8, 2, dtype=F64), torch.randn(8, 2, dtype=F64)
    s, t = torch.rand(8, dtype=F64) * 0.5, 0.5 + torch.rand(8, dtype=F64) * 0.5
    _, dv = along_characteristic(fm, x, s, t, b)
    h = 1e-6
    fd = (fm.v(x + h * b, s + h, t) - fm.v(x - h * b, s - h, t)) / (2 * h)
    torch.testing.assert_close(dv, fd, rtol=1e-7, atol=1e-8)


# --- stop-gradients ---------------------------------------------------------------------------------


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def _reference_off_diagonal(name, fm, frozen, xs, s, t):
    """The objective's term with every stop-gradient branch evaluated by a frozen copy: the
    gradients must be the same if (and only if) no gradient leaks into those branches."""
    if name == "lsd":
        landing, rate = time_derivative(fm, xs, s, t)
        return per_sample_mse(rate, frozen.velocity(landing.detach(), t))
    if name == "esd":  # the paper's placement: the gradient through d/ds X only
        b = frozen.v(xs, s, s)
        _, rate = start_derivative(fm, xs, s, t)
        return per_sample_mse(rate, -spatial_derivative(frozen, xs, s, t, b))
    if name == "esd-target":  # MeanFlow's: through v only
        b = frozen.v(xs, s, s)
        _, dv = along_characteristic(frozen, xs, s, t, b)
        return per_sample_mse(fm.v(xs, s, t), b + (t - s)[:, None] * dv)
    # psd-m
    u = 0.5 * (s + t)
    first = frozen.v(xs, s, u)
    second = frozen.v(xs + (u - s)[:, None] * first, u, t)
    return per_sample_mse(fm.v(xs, s, t), 0.5 * first + 0.5 * second)


@pytest.mark.parametrize("name", ["lsd", "esd", "esd-target", "psd-m"])
def test_the_teacher_branch_gets_no_gradient(name):
    torch.manual_seed(5)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    frozen = copy.deepcopy(fm).requires_grad_(False)
    objective = {"lsd": LSD(), "esd": ESD(), "esd-target": ESD(stop_gradient="target"), "psd-m": PSD()}[name]
    g = torch.Generator().manual_seed(6)
    x0, x1 = torch.randn(32, 2, dtype=F64), torch.randn(32, 2, dtype=F64) + 3
    times = _times(32, g)
    ours = _grads(fm, objective.off_diagonal(fm, x0, x1, times.s, times.t, g).mean())
    xs = (1 - times.s[:, None]) * x0 + times.s[:, None] * x1
    theirs = _grads(fm, _reference_off_diagonal(name, fm, frozen, xs, times.s, times.t).mean())
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the gradient is not zero: the trained branch does get one
    assert sum(float(a.abs().sum()) for a in ours) > 0


def test_distillation_teacher_gets_no_gradient():
    torch.manual_seed(7)
    teacher = TwoTimeNet(dtype=F64)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    objective = LMD(lambda x, t: teacher(x, t, t))
    loss = objective.loss(fm, torch.randn(64, 2, dtype=F64), torch.randn(64, 2, dtype=F64),
                          torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in fm.parameters())


# --- the batch loss, weights and times --------------------------------------------------------------


def test_loss_mixes_diagonal_and_off_diagonal_rows():
    net, fm = _gaussian()
    g = torch.Generator().manual_seed(8)
    x0, x1 = net.source(400, g), net.target(400, g)
    objective = LSD(diagonal_fraction=0.75)
    state = g.get_state()
    loss = objective.loss(fm, x0, x1, g)
    g.set_state(state)
    times = sample_times(400, 0.75, generator=g, dtype=F64)
    diagonal = objective.diagonal(fm, x0[:300], x1[:300], times.t[:300], g)
    # the off-diagonal rows are 0 on the exact map: the loss is the diagonal's sum over all rows
    torch.testing.assert_close(loss, diagonal.sum() / 400, rtol=1e-12, atol=0)


def test_learned_weight_starts_at_zero_and_learns_the_log_loss():
    torch.manual_seed(9)
    weight = LossWeight().double()
    s, t = torch.rand(256, dtype=F64), torch.rand(256, dtype=F64)
    assert torch.equal(weight(s, t), torch.zeros(256, dtype=F64))
    fm = FlowMap(TwoTimeNet(dtype=F64), loss_weight=weight)
    per_sample = torch.full((256,), 0.25, dtype=F64)
    opt = torch.optim.Adam(weight.parameters(), lr=0.1)
    for _ in range(150):
        w = fm.weight(s, t)
        loss = (torch.exp(-w) * per_sample + w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # e^{-w} L + w is minimised at w = log L
    torch.testing.assert_close(fm.weight(s, t), torch.full((256,), math.log(0.25), dtype=F64), atol=0.02, rtol=0)


def test_objective_uses_the_models_loss_weight():
    torch.manual_seed(10)
    plain = FlowMap(TwoTimeNet(dtype=F64))
    weighted = FlowMap(copy.deepcopy(plain.net), loss_weight=True).double()
    x0, x1 = torch.randn(64, 2, dtype=F64), torch.randn(64, 2, dtype=F64)
    a = LSD().loss(plain, x0, x1, torch.Generator().manual_seed(1))
    b = LSD().loss(weighted, x0, x1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)  # w = 0 at initialisation
    b.backward()
    assert weighted.loss_weight.mlp[-1].weight.grad.abs().sum() > 0


def test_the_two_eulerian_placements_have_the_same_value_and_different_gradients():
    torch.manual_seed(16)
    fm = FlowMap(TwoTimeNet(dtype=F64))
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, dtype=F64), torch.randn(64, 2, dtype=F64) + 2
    times = _times(64, g)
    paper = ESD().off_diagonal(fm, x0, x1, times.s, times.t, g).mean()
    target = ESD(stop_gradient="target").off_diagonal(fm, x0, x1, times.s, times.t, g).mean()
    torch.testing.assert_close(paper, target, rtol=1e-10, atol=0)
    a = torch.cat([g_.flatten() for g_ in _grads(fm, paper)])
    b = torch.cat([g_.flatten() for g_ in _grads(fm, target)])
    assert float((a - b).norm()) > 0.1 * float(a.norm())
    with pytest.raises(ValueError, match="stop_gradient"):
        ESD(stop_gradient="none")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_batches_give_finite_losses(dtype):
    torch.manual_seed(17)
    fm = FlowMap(TwoTimeNet(dtype=dtype))
    teacher = FlowMap(TwoTimeNet(dtype=dtype)).velocity
    g = torch.Generator().manual_seed(0)
    for objective in (LSD(), PSD(), ProgressiveMapDistillation(teacher, first_gap=0.01)):
        for _ in range(5):
            x0, x1 = torch.randn(512, 2).to(dtype), torch.randn(512, 2).to(dtype)
            assert torch.isfinite(objective.loss(fm, x0, x1, g).float()), type(objective).__name__


def test_small_batches_keep_an_off_diagonal_row_and_objectives_leave_the_global_rng_alone():
    assert sample_times(2, 0.75).n_diagonal == 1
    assert sample_times(1, 0.75).n_diagonal == 1
    assert sample_times(8, 1.0).n_diagonal == 8
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    LSD(max_gap=0.5), PSD(), ESD()
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="batch"):
        sample_times(0)


def test_sample_times_split_order_and_gap():
    g = torch.Generator().manual_seed(11)
    times = sample_times(1000, 0.75, generator=g, max_gap=0.1)
    assert times.n_diagonal == 750
    assert torch.equal(times.s[:750], times.t[:750])
    off = times.t[750:] - times.s[750:]
    assert bool((off >= 0).all()) and bool((off <= 0.1 + 1e-6).all()) and bool((off > 0).any())
    assert float(times.s.min()) >= 0 and float(times.t.max()) <= 1
    assert sample_times(10, 0.0, generator=g).n_diagonal == 0
    assert sample_times(10, 1.0, generator=g).n_diagonal == 10


@pytest.mark.parametrize("coupling", ["independent", "exact", "sinkhorn"])
def test_objectives_take_any_coupling(coupling):
    torch.manual_seed(12)
    fm = FlowMap(TwoTimeNet())
    objective = LSD(coupling=coupling)
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2) * 2 + 4
    loss = objective.loss(fm, x0, x1, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()


def test_progressive_distillation_stages_and_state_round_trip():
    torch.manual_seed(13)
    teacher = FlowMap(TwoTimeNet())
    fm = FlowMap(TwoTimeNet())
    objective = ProgressiveMapDistillation(teacher.velocity, stage_steps=2, first_gap=0.125)
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2)
    assert objective.gap == 0.25
    objective.after_step(fm, 1)
    assert objective.stage == 0
    objective.after_step(fm, 2)
    assert objective.stage == 1 and objective.gap == 0.5
    state = copy.deepcopy(objective.state_dict())
    before = objective.loss(fm, x0, x1, torch.Generator().manual_seed(3))
    restored = ProgressiveMapDistillation(teacher.velocity, stage_steps=2, first_gap=0.125)
    restored.load_state_dict(state)
    after = restored.loss(fm, x0, x1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    for step in (4, 6, 8):
        objective.after_step(fm, step)
    assert objective.gap == 1.0 and objective.stage == 2  # stops doubling at the full interval


# --- the sampler ------------------------------------------------------------------------------------


def test_sampler_composes_the_map_on_uniform_and_given_grids():
    torch.manual_seed(14)
    fm = FlowMap(TwoTimeNet())
    x0 = torch.randn(32, 2)
    one = sample(fm, x0, steps=1)
    assert one.nfe == 1
    torch.testing.assert_close(one.x, fm(x0, 0.0, 1.0))
    four = sample(fm, x0, steps=4, return_path=True)
    assert four.nfe == 4 and four.path.shape == (5, 32, 2)
    torch.testing.assert_close(four.times, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    manual = x0
    for a, b in ((0.0, 0.3), (0.3, 0.9), (0.9, 1.0)):
        manual = fm(manual, a, b)
    torch.testing.assert_close(sample(fm, x0, grid=[0.0, 0.3, 0.9, 1.0]).x, manual)
    # an ODE on the diagonal velocity through the objective's sampler
    assert LSD().sample(fm, x0, steps=10, method="euler").nfe == 10


def test_sample_grid_errors():
    fm = FlowMap(TwoTimeNet())
    x0 = torch.randn(4, 2)
    for kwargs, match in (({}, "exactly one"), ({"steps": 2, "grid": [0, 1]}, "exactly one"),
                          ({"steps": 0}, "steps"), ({"grid": [0.5]}, "at least two"),
                          ({"grid": [0.0, 0.5, 0.5, 1.0]}, "strictly increasing"),
                          ({"grid": [0.0, 1.5]}, r"\[0, 1\]"), ({"grid": [0.0, float("nan")]}, "finite")):
        with pytest.raises(ValueError, match=match):
            sample(fm, x0, **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        sample(fm, torch.full((4, 2), float("nan")), steps=1)
    with pytest.raises(TypeError, match="FlowMap"):
        sample(TwoTimeNet(), x0, steps=1)
    with pytest.raises(ValueError, match="method"):
        LSD().sample(fm, x0, method="heun")


# --- bad input --------------------------------------------------------------------------------------


def test_bad_times_and_shapes_name_the_argument():
    fm = FlowMap(TwoTimeNet())
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="s must be <= t"):
        fm(x, 0.8, 0.2)
    FlowMap(TwoTimeNet(), allow_backward=True)(x, 0.8, 0.2)  # allowed when asked for
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        fm(x, 0.0, 1.5)
    with pytest.raises(ValueError, match=r"s must lie in \[0, 1\]"):
        fm(x, -0.1, 0.5)
    with pytest.raises(ValueError, match="s contains NaN"):
        fm(x, torch.full((4,), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        fm(x, 0.0, torch.rand(3))
    with pytest.raises(TypeError, match="t must be a number"):
        fm(x, 0.0, "1")
    with pytest.raises(TypeError, match="x must be a floating-point"):
        fm(torch.ones(4, 2, dtype=torch.int64), 0.0, 1.0)

    class Wrong(nn.Module):
        def forward(self, x, s, t):
            return x[:, :1]

    with pytest.raises(ValueError, match=r"net\(x, s, t\) returned \(4, 1\)"):
        FlowMap(Wrong())(x, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"net\(x, s, t\) returned"):
        LSD().loss(FlowMap(Wrong()), x, x)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        FlowMap(lambda x, s, t: x)
    with pytest.raises(TypeError, match="model must be a flowfast.flowmaps.FlowMap"):
        LSD().loss(TwoTimeNet(), x, x)


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match="diagonal_fraction"):
        LSD(diagonal_fraction=1.5)
    with pytest.raises(ValueError, match="max_gap"):
        LSD(max_gap=0.0)
    with pytest.raises(ValueError, match="gamma"):
        PSD(gamma=1.0)
    with pytest.raises(TypeError, match="teacher"):
        LMD(teacher=3)
    with pytest.raises(TypeError, match="interpolant"):
        LSD(interpolant="linear")
    with pytest.raises(ValueError, match="stage_steps"):
        ProgressiveMapDistillation(lambda x, t: x, stage_steps=0)
    with pytest.raises(ValueError, match="needs teacher|teacher="):
        flowmaps.make_objective("distill")
    with pytest.raises(ValueError, match="unknown flow-map method"):
        flowmaps.make_objective("meanflow")
    with pytest.raises(ValueError, match="psd-u"):
        flowmaps.make_objective("psd-u", gamma="midpoint")
    fm = FlowMap(TwoTimeNet())
    with pytest.raises(TypeError, match="teacher's weights are float64"):
        LMD(FlowMap(TwoTimeNet(dtype=F64)).velocity).loss(fm, torch.randn(8, 2), torch.randn(8, 2))
    bad_teacher = LMD(lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match=r"teacher\(x, t\) returned"):
        bad_teacher.loss(fm, torch.randn(8, 2), torch.randn(8, 2))
    with pytest.raises(ValueError, match="same shape|shape"):
        LSD().loss(fm, torch.randn(8, 2), torch.randn(7, 2))


# --- a short training run ---------------------------------------------------------------------------


def test_lsd_training_on_a_toy_makes_a_good_four_step_sampler():
    from flowfast import data, metrics

    torch.manual_seed(15)
    fm = FlowMap(TwoTimeNet(hidden=64))
    objective = LSD()
    g = torch.Generator().manual_seed(0)
    eval_g = torch.Generator().manual_seed(1)
    x0_eval, real = data.gaussian(1000, eval_g), data.eight_gaussians(1000, eval_g)
    untrained = metrics.wasserstein2(sample(fm, x0_eval, steps=4).x, real)
    opt = torch.optim.Adam(fm.parameters(), lr=3e-3)
    for _ in range(600):
        loss = objective.loss(fm, data.gaussian(256, g), data.eight_gaussians(256, g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = metrics.wasserstein2(sample(fm, x0_eval, steps=4).x, real)
    assert trained < 0.35 * untrained, (untrained, trained)
