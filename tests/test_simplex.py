"""The `simplex` kernels (flow-map step, ECLD/CSD loss with its fused gradients) against the
pure-torch reference: values, gradients (float64 gradcheck), 16-bit storage, V = 1 .. 5000,
adversarial logits (large offsets, tiny and huge scales, ties), and clear errors on bad input.
Test functions take ``device`` so tests/emulation re-runs them on the emulated CUDA kernels."""

from __future__ import annotations

import pytest
import torch

from flowfast.ops import simplex as ops
from flowfast.reference import simplex as ref

LEADS = [(3, 5), (7,), (2, 1, 3)]
VOCABS = [1, 2, 16, 65, 300, 4097, 5000]


def _rows(lead, V, dtype, device="cpu", seed=0, scale=3.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, V)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype).to(device)
    zdot = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    target = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    B = lead[0]
    s = torch.rand(B, generator=g, dtype=torch.float64) * 0.9
    t = s + torch.rand(B, generator=g, dtype=torch.float64) * (1 - s)
    acc = ops.accumulation_dtype(dtype)
    return z, zdot, target, x, s.to(acc).to(device), t.to(acc).to(device)


def _tol(dtype):
    return {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}[dtype]


# --- the flow-map step ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("lead", LEADS, ids=str)
def test_step_matches_reference(device, dtype, V, lead):
    z, _, _, x, s, t = _rows(lead, V, dtype, device)
    gamma = (t - s) / (1 - s)
    got = ops.flow_map_step(z, x, gamma, return_argmax=True, return_log_probs=True)
    want = ops.flow_map_step(z, x, gamma, return_argmax=True, return_log_probs=True, backend="torch")
    torch.testing.assert_close(got.x, want.x, **_tol(dtype))
    torch.testing.assert_close(got.log_probs, want.log_probs, **_tol(dtype))
    assert torch.equal(got.argmax, want.argmax)
    assert got.x.shape == x.shape and got.argmax.shape == lead


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_step_endpoints(device, dtype):
    """gamma = 1 lands on softmax(logits) (the one-step sample X_{s,1} = pi); gamma = 0 keeps x."""
    z, _, _, x, _, _ = _rows((4, 6), 33, dtype, device)
    landed = ops.flow_map_step(z, x, 1.0).x
    torch.testing.assert_close(landed, torch.softmax(z, -1), **_tol(dtype))
    torch.testing.assert_close(landed.sum(-1), torch.ones(4, 6, dtype=dtype, device=device), **_tol(dtype))
    assert torch.equal(ops.flow_map_step(z, x, 0.0).x, x)


def test_step_gamma_shapes(device):
    """gamma: scalar, one per sequence (B,), or one per position (B, L)."""
    z, _, _, x, _, _ = _rows((3, 4), 10, torch.float64, device)
    per_seq = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64, device=device)
    got = ops.flow_map_step(z, x, per_seq).x
    full = ops.flow_map_step(z, x, per_seq[:, None].expand(3, 4)).x
    torch.testing.assert_close(got, full)
    for b in range(3):
        one = ops.flow_map_step(z[b], x[b], float(per_seq[b])).x
        torch.testing.assert_close(got[b], one)


def test_step_argmax_ties_take_the_lowest_index(device):
    z = torch.zeros(5, 70, device=device)
    z[:, [3, 9, 40]] = 2.0
    z[4, 1] = 2.0
    got = ops.flow_map_step(z, torch.zeros_like(z), 1.0, return_argmax=True).argmax
    assert got.tolist() == [3, 3, 3, 3, 1]
    big = torch.zeros(2, 6000, device=device)
    big[:, [5000, 4999, 5999]] = 1.0
    assert ops.flow_map_step(big, big, 1.0, return_argmax=True).argmax.tolist() == [4999, 4999]


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)], ids=str)
@pytest.mark.parametrize("V", [2, 65, 5000])
def test_step_low_precision(device, dtype, eps, V):
    """16-bit rows are computed in float32: equal to the float32 result rounded once."""
    z, _, _, x, _, _ = _rows((3, 4), V, dtype, device)
    got = ops.flow_map_step(z, x, 0.7, return_log_probs=True)
    want = ops.flow_map_step(z.float(), x.float(), 0.7, return_log_probs=True)
    torch.testing.assert_close(got.x.float(), want.x.to(dtype).float(), rtol=eps, atol=eps)
    torch.testing.assert_close(got.log_probs.float(), want.log_probs.to(dtype).float(), rtol=eps, atol=eps)


def test_step_gradients(device):
    z, _, _, x, s, t = _rows((2, 3), 5, torch.float64, device)
    gamma = ((t - s) / (1 - s)).requires_grad_()
    z.requires_grad_()
    x.requires_grad_()

    def f(z, x, gamma):
        out = ops.flow_map_step(z, x, gamma, return_log_probs=True)
        return out.x, out.log_probs

    assert torch.autograd.gradcheck(f, (z, x, gamma))


# --- the distillation losses ---------------------------------------------------------------------------
def _loss_and_grads(kind, z, zdot, target, x, s, t, backend, weights=None):
    z = z.detach().clone().requires_grad_()
    zdot = zdot.detach().clone().requires_grad_()
    loss = ops.distill_loss(kind, z, zdot, target, s, t, x=x, backend=backend)
    upstream = weights if weights is not None else torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype,
                                                                  device=loss.device).view(loss.shape)
    gz, gzdot = torch.autograd.grad((loss * upstream).sum(), [z, zdot])
    return loss.detach(), gz, gzdot


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kind", ["ecld", "csd"])
def test_distill_matches_reference(device, dtype, V, kind):
    inputs = _rows((3, 5), V, dtype, device, seed=V)
    got = _loss_and_grads(kind, *inputs, "auto")
    want = _loss_and_grads(kind, *inputs, "torch")
    tol = _tol(dtype) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("V", [2, 7, 70])
def test_distill_gradcheck(device, V):
    """The kernel's analytic ECLD gradients (incl. the second-order term through the softmax JVP)
    against finite differences of the kernel itself, in float64. (CSD's value depends on the
    logits through its stop-gradient landing point too, so finite differences of its value are
    not its gradient: CSD is checked against the reference's autograd above.)"""
    kind = "ecld"
    z, zdot, target, x, s, t = _rows((2, 2), V, torch.float64, device, seed=3)

    def f(z, zdot):
        return ops.distill_loss(kind, z, zdot, target, s, t, x=x)

    assert torch.autograd.gradcheck(f, (z.requires_grad_(), zdot.requires_grad_()))


@pytest.mark.parametrize("case", ["offset", "tiny", "huge", "ties"])
@pytest.mark.parametrize("kind", ["ecld", "csd"])
def test_distill_adversarial_logits(device, case, kind):
    """Large offsets (1e4, shift-invariant softmax), tiny and huge scales, exact ties: finite and
    equal to the reference computed in float64."""
    scale, offset = {"offset": (3.0, 1e4), "tiny": (1e-6, 0.0), "huge": (200.0, 0.0), "ties": (0.0, 5.0)}[case]
    z, zdot, target, x, s, t = _rows((3, 4), 300, torch.float32, device, scale=scale, offset=offset)
    got = _loss_and_grads(kind, z, zdot, target, x, s, t, "auto")
    want = _loss_and_grads(kind, *(a.double() for a in (z, zdot, target, x, s, t)), "torch")
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)], ids=str)
@pytest.mark.parametrize("kind", ["ecld", "csd"])
def test_distill_low_precision(device, dtype, eps, kind):
    inputs = _rows((3, 4), 65, dtype, device)
    got = _loss_and_grads(kind, *inputs, "auto")
    want = _loss_and_grads(kind, *(a.float() for a in inputs), "auto")
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=eps, atol=eps * max(1.0, float(b.abs().max())))


def test_distill_without_grad_is_the_same_loss(device):
    inputs = _rows((3, 4), 65, torch.float64, device)
    with torch.no_grad():
        plain = ops.distill_loss("ecld", *inputs[:3], *inputs[4:])
    with_grad = _loss_and_grads("ecld", *inputs, "auto")[0]
    torch.testing.assert_close(plain, with_grad, rtol=0, atol=0)


def test_ecld_weights_and_zero_jump(device):
    """At s = t (gamma = 0) ECLD is ce_weight times the cross-entropy; td_weight scales gamma^2 |pdot|^2."""
    z, zdot, target, _, s, _ = _rows((3, 4), 9, torch.float64, device)
    at_s = ops.distill_loss("ecld", z, zdot, target, s, s, ce_weight=1.0)
    ce = -(torch.softmax(target, -1) * torch.log_softmax(z, -1)).sum(-1)
    torch.testing.assert_close(at_s, ce)
    t = torch.ones_like(s) * 0.95
    only_td = ops.distill_loss("ecld", z, zdot, target, s, t, ce_weight=0.0, td_weight=1.0)
    _, pdot = ref.softmax_jvp(z, zdot)
    gamma = ((t - s) / (1 - s).clamp_min(0.05))[:, None]
    torch.testing.assert_close(only_td, gamma**2 * (pdot**2).sum(-1))


def test_softmax_jvp_formula():
    """d/dt softmax(z(t)) = p * (zdot - <p, zdot>), against torch.func.jvp."""
    z, zdot, *_ = _rows((4, 3), 11, torch.float64)
    p, pdot = ref.softmax_jvp(z, zdot)
    want_p, want_pdot = torch.func.jvp(lambda a: torch.softmax(a, -1), (z,), (zdot,))
    torch.testing.assert_close(p, want_p)
    torch.testing.assert_close(pdot, want_pdot)


def test_custom_ops_pass_opcheck():
    z, zdot, target, x, s, t = _rows((2, 3), 5, torch.float64)
    rows = [a.reshape(6, 5) for a in (z, zdot, target, x)]
    per_row = [a[:, None].expand(2, 3).reshape(6).contiguous() for a in (s, t)]
    torch.library.opcheck(ops.simplex_step, (rows[0].requires_grad_(), rows[3], per_row[0], True, True))
    torch.library.opcheck(ops.simplex_distill_loss, (1, rows[0], rows[1].requires_grad_(), rows[2], rows[3],
                                                     *per_row, 4.0, 2.0, 0.05, True))


# --- bad input ---------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(device):
    z, zdot, target, x, s, t = _rows((3, 4), 6, torch.float32, device)
    with pytest.raises(ValueError, match="shape of logits"):
        ops.flow_map_step(z, x[:, :2], 0.5)
    with pytest.raises(TypeError, match="dtype of logits"):
        ops.flow_map_step(z, x.double(), 0.5)
    with pytest.raises(TypeError, match="logits must be"):
        ops.flow_map_step(z.long(), x, 0.5)
    with pytest.raises(ValueError, match="V >= 1"):
        ops.flow_map_step(z[..., :0], x[..., :0], 0.5)
    with pytest.raises(ValueError, match="prefix"):
        ops.flow_map_step(z, x, torch.ones(4))
    with pytest.raises(TypeError, match="gamma must be"):
        ops.flow_map_step(z, x, "half")
    bad = z.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="logits contains NaN"):
        ops.flow_map_step(bad, x, 0.5)
    with pytest.raises(ValueError, match="logits_dot contains NaN"):
        ops.distill_loss("ecld", z, bad, target, s, t)
    with pytest.raises(ValueError, match="s <= t"):
        ops.distill_loss("ecld", z, zdot, target, t, s - 0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        ops.distill_loss("kl", z, zdot, target, s, t)
    with pytest.raises(ValueError, match="CSD loss needs x"):
        ops.distill_loss("csd", z, zdot, target, s, t)
    with pytest.raises(ValueError, match="min_one_minus_s"):
        ops.distill_loss("ecld", z, zdot, target, s, t, min_one_minus_s=0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.distill_loss("ecld", z, zdot, target, s, t, backend="gpu")


def test_empty_batches(device):
    z = torch.zeros(0, 4, 7, device=device)
    assert ops.flow_map_step(z, z, 0.5).x.shape == (0, 4, 7)
    assert ops.distill_loss("ecld", z, z, z, torch.zeros(0), torch.zeros(0)).shape == (0, 4)


@pytest.mark.parametrize("V", [9, 16, 20, 300])
def test_nan_logits_give_nan_rows_without_validation(device, V):
    """validate=False skips the finiteness read, but a NaN logit must still poison its row (never a
    plausible-looking distribution): the vector exp and max keep NaN."""
    z = torch.randn(4, V, device=device)
    z[1, V // 2] = float("nan")
    z[3, V - 1] = float("nan")
    out = ops.flow_map_step(z, torch.zeros_like(z), 1.0, validate=False).x
    assert torch.isnan(out[[1, 3]]).all()
    assert torch.isfinite(out[[0, 2]]).all()


def test_one_row_and_loss_scaling(device):
    """A single (V,) row; fp16 gradients under a large loss scale stay finite when they fit."""
    z = torch.randn(7, device=device)
    torch.testing.assert_close(ops.flow_map_step(z, z, 1.0).x, torch.softmax(z, -1))
    assert ops.distill_loss("ecld", z, z, z, 0.2, 0.5).shape == ()
    inputs = _rows((3, 4), 65, torch.float16, device)
    z16 = inputs[0].clone().requires_grad_()
    loss = ops.distill_loss("ecld", z16, inputs[1], inputs[2], inputs[4], inputs[5])
    scale = 4096.0  # the unscaled gradients reach about 10: 4e4 still fits fp16 (max 65504), 65536 would not
    (loss.sum() * scale).backward()
    assert torch.isfinite(z16.grad).all()
    z32 = inputs[0].float().requires_grad_()
    (ops.distill_loss("ecld", z32, inputs[1].float(), inputs[2].float(), inputs[4], inputs[5]).sum() * scale).backward()
    torch.testing.assert_close(z16.grad.float(), z32.grad, rtol=2e-2, atol=2e-2 * float(z32.grad.abs().max()))


def test_no_double_backward():
    z, zdot, target, _, s, t = _rows((2, 3), 5, torch.float64)
    z.requires_grad_()
    loss = ops.distill_loss("ecld", z, zdot, target, s, t).sum()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, z, create_graph=True)
