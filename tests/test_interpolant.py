"""The `interpolant` kernel family: fused CFM sampling and loss vs the pure-torch reference, the
paths' formulas, gradients and op registration."""

import pytest
import torch

from flowfast import _C, _arrays, ops, paths, reference
from flowfast.testing import devices

KINDS = list(ops.interpolant.KINDS.items())
PATHS = [(paths.IndependentCFM(0.1), "linear"), (paths.SchrodingerBridgeCFM(0.7), "bridge"),
         (paths.TargetCFM(0.05), "target"), (paths.VariancePreservingCFM(0.2), "vp")]


def _inputs(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64) + 1
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.5
    return [z.to(device, dtype) for z in (x0, x1, t, eps, v, w)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# (600, 3): rows grouped for one noise draw, groups starting mid-pair; D = 1173: rows cut in blocks.
@pytest.mark.parametrize("shape", [(9, 2), (4, 3, 5, 5), (600, 3), (3, 3, 23, 17)])
@pytest.mark.parametrize("name,kind", KINDS)
@pytest.mark.parametrize("given_noise", [True, False])
def test_kernel_matches_reference(device, dtype, shape, name, kind, given_noise):
    x0, x1, t, eps, v, w = _inputs(shape, dtype, device)
    eps = eps if given_noise else None
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    xt, noise = ops.interpolant.interpolant_sample(x0, x1, t, eps, kind, 0.3, 11, 2**40 + 5, True)
    xr, nr = reference.interpolant.sample(x0, x1, t, eps, kind, 0.3, 11, 2**40 + 5, True)
    torch.testing.assert_close(xt, xr, **tol)
    torch.testing.assert_close(noise, nr, **tol)
    vk = v.clone().requires_grad_(True)
    vr = v.clone().requires_grad_(True)
    lk = ops.interpolant.interpolant_loss(vk, x0, x1, t, eps, w, kind, 0.3, 11, 2**40 + 5)
    lr = reference.interpolant.loss(vr, x0, x1, t, eps, w, kind, 0.3, 11, 2**40 + 5)
    torch.testing.assert_close(lk, lr, **tol)
    upstream = torch.linspace(0.5, 1.5, shape[0], dtype=dtype, device=device)
    (gk,) = torch.autograd.grad((lk * upstream).sum(), vk)
    (gr,) = torch.autograd.grad((lr * upstream).sum(), vr)
    torch.testing.assert_close(gk, gr, **tol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_that_draw_no_noise_leave_the_others_unchanged(device, dtype):
    """Bridge rows at t = 0 or 1 have sigma_t = 0 and draw nothing; the rows around them (in the
    same noise block) still get the noise of their own element indices."""
    x0, x1, t, _, v, w = _inputs((700, 3), dtype, device, seed=3)
    t[::7] = 0.0
    t[3::7] = 1.0
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    kind = ops.interpolant.KINDS["bridge"]
    xt, _ = ops.interpolant.sample(x0, x1, t, None, kind, 0.5, 5, 6)
    xr, _ = reference.interpolant.sample(x0, x1, t, None, kind, 0.5, 5, 6, False)
    torch.testing.assert_close(xt, xr, **tol)
    torch.testing.assert_close(xt[::7], x0[::7], rtol=0, atol=0)
    lk = ops.interpolant.loss(v, x0, x1, t, None, w, kind, 0.5, 5, 6)
    torch.testing.assert_close(lk, reference.interpolant.loss(v, x0, x1, t, None, w, kind, 0.5, 5, 6), **tol)


@pytest.mark.parametrize("path,name", PATHS, ids=[n for _, n in PATHS])
def test_kernel_coefficients_are_the_paths_formulas(path, name):
    x0, x1, t, eps, _, _ = _inputs((6, 4), torch.float64, "cpu")
    kind = ops.interpolant.KINDS[name]
    xt, _ = ops.interpolant.interpolant_sample(x0, x1, t, eps, kind, path.sigma, 0, 0, False)
    torch.testing.assert_close(xt, path.sample_xt(x0, x1, t, eps))
    u = reference.interpolant.target(x0, x1, t, eps, kind, path.sigma, 0, 0)
    torch.testing.assert_close(u, path.compute_conditional_flow(x0, x1, t, xt), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # double draws; float (vector) draws
def test_philox_noise_is_standard_normal_and_reproducible(dtype):
    x = torch.zeros(400, 250, dtype=dtype)
    t = torch.full((400,), 0.0, dtype=dtype)
    ones = torch.ones_like(x)
    _, n1 = ops.interpolant.interpolant_sample(x, ones, t, None, 0, 1.0, 7, 3, True)
    _, n2 = ops.interpolant.interpolant_sample(x, ones, t, None, 0, 1.0, 7, 3, True)
    _, n3 = ops.interpolant.interpolant_sample(x, ones, t, None, 0, 1.0, 7, 4, True)
    torch.testing.assert_close(n1, n2, rtol=0, atol=0)
    assert not torch.equal(n1, n3)
    assert abs(float(n1.mean())) < 0.01 and abs(float(n1.std()) - 1) < 0.01
    assert abs(float((n1.double()**4).mean()) - 3) < 0.1  # Gaussian kurtosis
    # The empirical CDF against Phi: Kolmogorov-Smirnov distance below 1.5x its 1% critical value.
    z = torch.sort(n1.double().flatten()).values
    ecdf = torch.arange(1, z.numel() + 1, dtype=torch.float64) / z.numel()
    assert float((ecdf - 0.5 * (1 + torch.erf(z / 2**0.5))).abs().max()) < 1.5 * 1.63 / z.numel() ** 0.5


def test_loss_gradcheck_float64():
    x0, x1, t, eps, v, w = _inputs((3, 4), torch.float64, "cpu")
    v.requires_grad_(True)
    for kind in range(4):
        assert torch.autograd.gradcheck(
            lambda vv: ops.interpolant.interpolant_loss(vv, x0, x1, t, None, w, kind, 0.3, 5, 6), (v,))


@pytest.mark.parametrize("given_noise", [True, False])
def test_opcheck(given_noise):
    x0, x1, t, eps, v, w = _inputs((3, 2, 2), torch.float64, "cpu")
    eps = eps if given_noise else None
    torch.library.opcheck(ops.interpolant.interpolant_sample, (x0, x1, t, eps, 1, 0.5, 3, 9, True))
    torch.library.opcheck(ops.interpolant.interpolant_loss, (v.requires_grad_(True), x0, x1, t, eps, w, 3, 0.5, 3, 9))
    torch.library.opcheck(ops.interpolant.interpolant_loss_backward,
                          (torch.ones(3, dtype=torch.float64), v.detach(), x0, x1, t, eps, None, 0, 0.5, 3, 9))


@pytest.mark.parametrize("path,name", PATHS, ids=[n for _, n in PATHS])
def test_fused_loss_equals_eager_loss_for_the_same_noise(path, name, monkeypatch):
    """path.loss(fused=True) draws Philox noise; feeding that noise to the eager formulas gives the
    same loss and the same parameter gradients (coupling switched off: it is tested elsewhere)."""
    monkeypatch.setattr(path, "couple", lambda x0, x1, generator=None: (x0, x1))
    x0, x1, t, _, _, w = _inputs((16, 3), torch.float64, "cpu")
    net = torch.nn.Linear(4, 3).double()

    def model(x, tt):
        return net(torch.cat([x, tt[:, None]], dim=-1))

    g = torch.Generator().manual_seed(5)
    fused = path.loss(model, x0, x1, t=t, weight=w, generator=g)
    (g_fused,) = torch.autograd.grad(fused, net.weight)
    from flowfast._rng import draw_seed

    seed, offset = draw_seed(torch.Generator().manual_seed(5))
    noise = reference.interpolant.noise(seed, offset, 16, 3)
    xt = path.sample_xt(x0, x1, t, noise)
    ut = path.compute_conditional_flow(x0, x1, t, xt)
    eager = (((model(xt, t) - ut) ** 2).sum(1) * w).sum() / ut.numel()
    (g_eager,) = torch.autograd.grad(eager, net.weight)
    torch.testing.assert_close(fused, eager)
    torch.testing.assert_close(g_fused, g_eager)


def test_direct_calls_validate_shapes():
    x0, x1, t, _, v, _ = _inputs((4, 3), torch.float64, "cpu")
    with pytest.raises(ValueError, match="x1"):
        ops.interpolant.interpolant_sample(x0, x1[:2], t, None, 0, 0.1, 0, 0, False)
    with pytest.raises(ValueError, match="t"):
        ops.interpolant.interpolant_sample(x0, x1, t[:2], None, 0, 0.1, 0, 0, False)
    with pytest.raises(ValueError, match="path kind"):
        ops.interpolant.interpolant_sample(x0, x1, t, None, 7, 0.1, 0, 0, False)
    with pytest.raises(ValueError, match="sigma"):
        ops.interpolant.interpolant_sample(x0, x1, t, None, 0, float("nan"), 0, 0, False)
    with pytest.raises(ValueError, match="x1"):
        ops.interpolant.interpolant_loss(v, x0, x1.float(), t, None, None, 0, 0.1, 0, 0)
    assert issubclass(_C.KernelError, ValueError)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kind", KINDS)
def test_low_precision_matches_rounded_reference(device, dtype, name, kind):
    """16-bit storage, double compute: the kernel is within one rounding of the float64 reference,
    i.e. at most 2x the reference's own low-precision error (FlashAttention's criterion)."""
    from flowfast.testing import assert_close_rel_to_ref

    x0, x1, t, eps, v, w = _inputs((8, 3, 4, 4), torch.float64, device)
    low = [z.to(dtype) for z in (x0, x1, t, eps, v, w)]
    exact = [z.to(dtype).double() for z in (x0, x1, t, eps, v, w)]  # the same inputs, computed in float64
    xt, _ = ops.interpolant.interpolant_sample(*low[:4], kind, 0.3, 1, 2, False)
    x64, _ = reference.interpolant.sample(*exact[:4], kind, 0.3, 1, 2, False)
    x_naive = (low[0] * 0 + x64.to(dtype))  # what a float64 computation rounded to dtype gives
    assert_close_rel_to_ref(xt, x64, x_naive, atol=float(torch.finfo(dtype).eps) * float(x64.abs().max()))
    vk = low[4].clone().requires_grad_(True)
    per = ops.interpolant.interpolant_loss(vk, *low[:4], low[5], kind, 0.3, 1, 2)
    per64 = reference.interpolant.loss(exact[4], *exact[:4], exact[5], kind, 0.3, 1, 2)
    torch.testing.assert_close(per.double(), per64, rtol=2 * float(torch.finfo(dtype).eps), atol=0)
    (g,) = torch.autograd.grad(per.sum(), vk)
    u64 = reference.interpolant.target(*exact[:4], kind, 0.3, 1, 2).reshape(g.shape)
    g64 = 2 * exact[5].reshape(-1, 1, 1, 1) * (exact[4] - u64)
    torch.testing.assert_close(g.double(), g64, rtol=2 * float(torch.finfo(dtype).eps), atol=float(torch.finfo(dtype).tiny))


def test_eager_path_equals_custom_ops():
    """paths use ops.interpolant.sample/loss/mean_loss: direct kernel calls in eager mode, the registered
    custom ops under torch.compile; both give the same values and gradients."""
    x0, x1, t, _, v, w = _inputs((5, 3), torch.float64, "cpu")
    for kind in range(4):
        xa, _ = ops.interpolant.sample(x0, x1, t, None, kind, 0.4, 8, 9)
        xb, _ = ops.interpolant.interpolant_sample(x0, x1, t, None, kind, 0.4, 8, 9, False)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        va, vb = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
        la = ops.interpolant.loss(va, x0, x1, t, None, w, kind, 0.4, 8, 9)
        lb = ops.interpolant.interpolant_loss(vb, x0, x1, t, None, w, kind, 0.4, 8, 9)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
        (ga,) = torch.autograd.grad(la.sum(), va)
        (gb,) = torch.autograd.grad(lb.sum(), vb)
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)
        vm = v.clone().requires_grad_(True)
        mean = ops.interpolant.mean_loss(vm, x0, x1, t, None, w, kind, 0.4, 8, 9)
        torch.testing.assert_close(mean, lb.sum() / v.numel(), rtol=1e-15, atol=0)
        (gm,) = torch.autograd.grad(3 * mean, vm)
        torch.testing.assert_close(gm, 3 * gb / v.numel(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,kind", KINDS)
@pytest.mark.parametrize("given_noise", [True, False])
def test_training_mean_loss_gradient_from_the_forward_pass(device, dtype, name, kind, given_noise):
    """Only v requires grad (a training step): the forward kernel writes dL/dv in the same pass
    (TrainingMeanLoss); value and gradient equal the two-kernel path's (EagerMeanLoss), and a second
    derivative is refused instead of silently zero."""
    x0, x1, t, eps, v, w = _inputs((37, 5), dtype, device, seed=3)
    noise = eps if given_noise else None
    args = (x0, x1, t, noise, w, kind, 0.3, 5, 7)
    fast_v, slow_v = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    fast = ops.interpolant.mean_loss(fast_v, *args)
    assert type(fast.grad_fn).__name__.startswith("TrainingMeanLoss")
    slow = ops.interpolant.EagerMeanLoss.apply(slow_v, *args)
    # float64: a few roundings of the 37-term sum apart (the kernel sums in order, torch pairwise)
    exact = dict(rtol=1e-14, atol=0) if dtype == torch.float64 else {}
    torch.testing.assert_close(fast, slow, **exact)
    (2.5 * fast).backward()
    (2.5 * slow).backward()
    one_rounding = {torch.float64: 1e-15, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(fast_v.grad, slow_v.grad, rtol=2 * one_rounding,
                               atol=2 * one_rounding * float(slow_v.grad.abs().max()))
    again = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ops.interpolant.mean_loss(again, *args), again, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice|does not require grad"):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_training_mean_loss_16bit_gradient_survives_a_loss_scale(dtype):
    """fp16 training scales the loss (GradScaler) so that small gradients do not underflow: the
    stored dL/dv must not be pre-divided by numel in 16 bits, or a large batch's gradient rounds to
    zero before the scale arrives. The gradient stays within a few roundings of the exact one."""
    gen = torch.Generator().manual_seed(11)
    shape = (4096, 64)  # numel 2^18: 2 (v - u) / numel is below fp16's smallest subnormal for |v - u| < 1.5
    x0, x1 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t = torch.rand(shape[0], generator=gen)
    v = (x1 - x0 + 1e-2 * torch.randn(shape, generator=gen)).to(dtype)
    x0, x1, t = x0.to(dtype), x1.to(dtype), t.to(dtype)
    scale = 2.0 ** 14
    fast_v = v.clone().requires_grad_(True)
    (scale * ops.interpolant.mean_loss(fast_v, x0, x1, t, None, None, 0, 0.0, 0, 0)).backward()
    exact = scale * 2 * (v.double() - (x1.double() - x0.double())) / v.numel()
    err = (fast_v.grad.double() - exact).norm() / exact.norm()
    assert err <= 4 * float(torch.finfo(dtype).eps), err


def test_kernel_mean_output_is_checked_and_empty_batches_are_nan():
    """The forward kernel's mean output: one element of x0's dtype, refused otherwise (no write to
    a buffer of the wrong size); an empty batch's mean is 0 / 0 = nan, as torch's mean."""
    x0, x1, t, _, v, _ = _inputs((4, 3), torch.float32, "cpu")
    per_sample, wrong = torch.empty(4), torch.empty((), dtype=torch.float64)
    with pytest.raises(ValueError, match="mean must be one element"):
        _C.interpolant_loss_forward(ops.interpolant._inputs(x0, x1, t, None, 0, 0.1, 0, 0), _arrays.describe(v), None,
                                    _arrays.describe(per_sample), None, 0.0, _arrays.describe(wrong), 0)
    mean = ops.interpolant.mean_loss_impl(v, x0, x1, t, None, None, 0, 0.1, 0, 0)
    torch.testing.assert_close(mean, ops.interpolant.loss_impl(v, x0, x1, t, None, None, 0, 0.1, 0, 0).sum() / 12)
    empty = torch.empty(0, 3)
    assert torch.isnan(ops.interpolant.mean_loss_impl(empty, empty, empty, torch.empty(0), None, None, 0, 0.1, 0, 0))


def test_mean_loss_without_gradients_takes_no_autograd_node():
    x0, x1, t, _, v, w = _inputs((6, 2), torch.float32, "cpu")
    with torch.no_grad():
        loss = ops.interpolant.mean_loss(v.requires_grad_(True), x0, x1, t, None, w, 0, 0.1, 1, 2)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, ops.interpolant.loss_impl(v.detach(), x0, x1, t, None, w, 0, 0.1, 1, 2).sum() / 12)
