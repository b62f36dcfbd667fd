"""Full derivatives of the fused `interpolant` ops (flowfast.ops.interpolant): reverse and forward
mode of the eager autograd.Functions (sample / loss / mean_loss), reverse mode of the raw custom
ops, torch.func.jvp and dual tensors against the pure-torch reference (flowfast.reference), and
opcheck with inputs requiring grad.

Convention: x0 = source/noise at t=0, x1 = data at t=1. float64 throughout (one float32 case), t in
[0.05, 0.95]: the bridge's derivatives blow up at t = 0 and 1.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from flowfast import ops, reference

KINDS = list(ops.interpolant.KINDS.items())
KIND_IDS = [name for name, _ in KINDS]
SIGMA = 0.3
SEED, OFFSET = 11, 2**40 + 5
TOL = dict(rtol=1e-10, atol=1e-10)

OPS = ops.interpolant
REF = reference.interpolant


def _inputs(B=4, D=3, dtype=torch.float64, seed=0):
    """(v, x0, x1, t, eps, w), deterministic; t in [0.05, 0.95], weights in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    x1 = torch.randn(B, D, generator=g, dtype=torch.float64) + 1
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    return [z.to(dtype) for z in (v, x0, x1, t, eps, w)]


def _tangents(like, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(z.shape, generator=g, dtype=z.dtype) for z in like]


def _grad(*tensors):
    return [z.detach().clone().requires_grad_(True) for z in tensors]


def _ref_mean_loss(v, x0, x1, t, eps, w, kind):
    return REF.loss(v, x0, x1, t, eps, w, kind, SIGMA, SEED, OFFSET).sum() / v.numel()


# --- 1. gradcheck (reverse + forward AD) of the eager Functions -----------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("reduce", ["loss", "mean_loss"])
def test_loss_gradcheck_given_noise(name, kind, reduce):
    fn = getattr(OPS, reduce)
    inputs = _grad(*_inputs())

    def f(v, x0, x1, t, eps, w):
        return fn(v, x0, x1, t, eps, w, kind, SIGMA, SEED, OFFSET)

    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("reduce", ["loss", "mean_loss"])
def test_loss_gradcheck_drawn_noise(name, kind, reduce):
    fn = getattr(OPS, reduce)
    v, x0, x1, t, _, w = _inputs()
    inputs = _grad(v, x0, x1, t)

    def f(v, x0, x1, t):
        return fn(v, x0, x1, t, None, w, kind, SIGMA, SEED, OFFSET)

    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("return_noise", [False, True])
def test_sample_gradcheck_given_noise(name, kind, return_noise):
    _, x0, x1, t, eps, _ = _inputs()
    inputs = _grad(x0, x1, t, eps)

    def f(x0, x1, t, eps):
        return OPS.sample(x0, x1, t, eps, kind, SIGMA, SEED, OFFSET, return_noise)[0]

    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
def test_sample_gradcheck_drawn_noise(name, kind):
    _, x0, x1, t, _, _ = _inputs()
    inputs = _grad(x0, x1, t)

    def f(x0, x1, t):
        return OPS.sample(x0, x1, t, None, kind, SIGMA, SEED, OFFSET)[0]

    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)


# --- 2. reverse-mode gradcheck of the raw custom ops ----------------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_custom_op_loss_gradcheck(name, kind, given_noise):
    v, x0, x1, t, eps, w = _inputs()
    if given_noise:
        inputs = _grad(v, x0, x1, t, eps, w)

        def f(v, x0, x1, t, eps, w):
            return OPS.interpolant_loss(v, x0, x1, t, eps, w, kind, SIGMA, SEED, OFFSET)
    else:
        inputs = _grad(v, x0, x1, t, w)

        def f(v, x0, x1, t, w):
            return OPS.interpolant_loss(v, x0, x1, t, None, w, kind, SIGMA, SEED, OFFSET)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_custom_op_sample_gradcheck(name, kind, given_noise):
    _, x0, x1, t, eps, _ = _inputs()
    if given_noise:
        inputs = _grad(x0, x1, t, eps)

        def f(x0, x1, t, eps):
            return OPS.interpolant_sample(x0, x1, t, eps, kind, SIGMA, SEED, OFFSET, False)[0]
    else:
        inputs = _grad(x0, x1, t)

        def f(x0, x1, t):
            return OPS.interpolant_sample(x0, x1, t, None, kind, SIGMA, SEED, OFFSET, True)[0]

    assert torch.autograd.gradcheck(f, inputs)


# --- 3. torch.func.jvp against the reference ------------------------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_func_jvp_mean_loss_matches_reference(name, kind, given_noise):
    v, x0, x1, t, eps, w = _inputs()
    eps = eps if given_noise else None
    tangents = tuple(_tangents((v, t, x0)))

    def fused(v, t, x0):
        return OPS.mean_loss(v, x0, x1, t, eps, w, kind, SIGMA, SEED, OFFSET)

    def ref(v, t, x0):
        return _ref_mean_loss(v, x0, x1, t, eps, w, kind)

    p, dp = torch.func.jvp(fused, (v, t, x0), tangents)
    pr, dpr = torch.func.jvp(ref, (v, t, x0), tangents)
    torch.testing.assert_close(p, pr, **TOL)
    torch.testing.assert_close(dp, dpr, **TOL)
    assert float(dpr.abs()) > 1e-3  # a tangent that can tell a wrong rule from a right one
    # each direction alone (v only, t only): the rules for a missing tangent are exercised too
    for i in range(3):
        only = tuple(tg if j == i else torch.zeros_like(tg) for j, tg in enumerate(tangents))
        torch.testing.assert_close(torch.func.jvp(fused, (v, t, x0), only)[1],
                                   torch.func.jvp(ref, (v, t, x0), only)[1], **TOL)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_func_jvp_mean_loss_in_t_only_matches_reference(name, kind, given_noise):
    """jvp w.r.t. t alone (v, x0 closed over): only the d u_t / dt rule contributes."""
    v, x0, x1, t, eps, w = _inputs()
    eps = eps if given_noise else None
    (dt,) = _tangents((t,), seed=2)
    p, dp = torch.func.jvp(lambda tt: OPS.mean_loss(v, x0, x1, tt, eps, w, kind, SIGMA, SEED, OFFSET), (t,), (dt,))
    pr, dpr = torch.func.jvp(lambda tt: _ref_mean_loss(v, x0, x1, tt, eps, w, kind), (t,), (dt,))
    torch.testing.assert_close(p, pr, **TOL)
    torch.testing.assert_close(dp, dpr, **TOL)


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_func_jvp_sample_matches_reference(name, kind, given_noise):
    _, x0, x1, t, eps, _ = _inputs()
    if given_noise:
        primals = (x0, x1, t, eps)

        def fused(x0, x1, t, eps):
            return OPS.sample(x0, x1, t, eps, kind, SIGMA, SEED, OFFSET)[0]

        def ref(x0, x1, t, eps):
            return REF.sample(x0, x1, t, eps, kind, SIGMA, SEED, OFFSET, False)[0]
    else:
        primals = (x0, x1, t)

        def fused(x0, x1, t):
            return OPS.sample(x0, x1, t, None, kind, SIGMA, SEED, OFFSET)[0]

        def ref(x0, x1, t):
            return REF.sample(x0, x1, t, None, kind, SIGMA, SEED, OFFSET, False)[0]

    tangents = tuple(_tangents(primals))
    p, dp = torch.func.jvp(fused, primals, tangents)
    pr, dpr = torch.func.jvp(ref, primals, tangents)
    torch.testing.assert_close(p, pr, **TOL)
    torch.testing.assert_close(dp, dpr, **TOL)
    # t alone: d x_t / dt (for the bridge the true derivative, not the guarded u_t)
    only_t = tuple(tg if z is t else torch.zeros_like(tg) for z, tg in zip(primals, tangents))
    dpt = torch.func.jvp(fused, primals, only_t)[1]
    dprt = torch.func.jvp(ref, primals, only_t)[1]
    torch.testing.assert_close(dpt, dprt, **TOL)
    assert float(dprt.abs().max()) > 1e-3


# --- 4. dual tensors (torch.autograd.forward_ad) through loss -------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_forward_ad_dual_loss_matches_reference(name, kind, given_noise):
    v, x0, x1, t, eps, w = _inputs()
    if given_noise:
        primals = (v, x0, x1, t, eps, w)
    else:
        primals = (v, x0, x1, t, w)
    tangents = _tangents(primals, seed=3)

    def ref(*args):
        if given_noise:
            return REF.loss(*args[:5], args[5], kind, SIGMA, SEED, OFFSET)
        return REF.loss(*args[:4], None, args[4], kind, SIGMA, SEED, OFFSET)

    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, tg) for p, tg in zip(primals, tangents)]
        if given_noise:
            out = OPS.loss(*duals, kind, SIGMA, SEED, OFFSET)
        else:
            out = OPS.loss(*duals[:4], None, duals[4], kind, SIGMA, SEED, OFFSET)
        primal_out, tangent_out = fwAD.unpack_dual(out)
        assert tangent_out is not None
        primal_out, tangent_out = primal_out.clone(), tangent_out.clone()
    pr, dpr = torch.func.jvp(ref, primals, tuple(tangents))
    assert tangent_out.shape == (v.shape[0],)
    torch.testing.assert_close(primal_out, pr, **TOL)
    torch.testing.assert_close(tangent_out, dpr, **TOL)


# --- 5. flow-map style: jvp in time through a model on x_t ----------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_flow_map_time_jvp_through_model_matches_reference(name, kind, given_noise):
    _, x0, x1, t, eps, w = _inputs(B=5, D=3)
    eps = eps if given_noise else None
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).double().requires_grad_(False)

    def model(x, tt):
        return torch.tanh(net(torch.cat([x, tt[:, None]], dim=-1)))

    def fused(tt):
        xt, _ = OPS.sample(x0, x1, tt, eps, kind, SIGMA, SEED, OFFSET)
        return OPS.mean_loss(model(xt, tt), x0, x1, tt, eps, w, kind, SIGMA, SEED, OFFSET)

    def ref(tt):
        xt, _ = REF.sample(x0, x1, tt, eps, kind, SIGMA, SEED, OFFSET, False)
        return _ref_mean_loss(model(xt, tt), x0, x1, tt, eps, w, kind)

    dt = torch.ones_like(t)
    p, dp = torch.func.jvp(fused, (t,), (dt,))
    pr, dpr = torch.func.jvp(ref, (t,), (dt,))
    torch.testing.assert_close(p, pr, **TOL)
    torch.testing.assert_close(dp, dpr, **TOL)
    assert float(dpr.abs()) > 1e-4


# --- 6. reverse-mode gradients of mean_loss in every input ----------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("given_noise", [True, False], ids=["given", "drawn"])
def test_mean_loss_grads_match_reference(name, kind, given_noise):
    v, x0, x1, t, eps, w = _inputs(B=6, D=4)
    eps = eps if given_noise else None
    upstream = torch.tensor(1.7, dtype=torch.float64)
    leaves = [v, x0, x1, t, w] + ([eps] if given_noise else [])

    def grads(fn, strict):
        ins = _grad(*leaves)
        vv, a, b, tt, ww = ins[:5]
        e = ins[5] if given_noise else None
        out = fn(vv, a, b, tt, e, ww)
        # strict: raises if any gradient is missing (None). The reference's u_t does not depend on
        # t for the linear and target paths (its graph does not reach t): zeros there.
        gs = torch.autograd.grad(out, ins, upstream, allow_unused=not strict, materialize_grads=not strict)
        return out, gs

    out, gk = grads(lambda *a: OPS.mean_loss(*a, kind, SIGMA, SEED, OFFSET), strict=True)
    outr, gr = grads(lambda *a: _ref_mean_loss(*a, kind), strict=False)
    torch.testing.assert_close(out, outr, **TOL)
    names = ["v", "x0", "x1", "t", "weight", "eps"]
    for nm, a, b in zip(names, gk, gr):
        assert a is not None, nm
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, nm=nm: f"grad {nm}: {m}")
    # x0 and x1 gradients are not trivially zero (they used to be silently None)
    if kind != OPS.KINDS["target"]:
        assert float(gr[1].abs().max()) > 1e-3
    assert float(gr[2].abs().max()) > 1e-3


@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
def test_mean_loss_backward_populates_leaf_grads(name, kind):
    """.backward() fills .grad of x0, x1, t and weight (not just v)."""
    v, x0, x1, t, eps, w = _grad(*_inputs())
    OPS.mean_loss(v, x0, x1, t, None, w, kind, SIGMA, SEED, OFFSET).backward()
    for nm, z in (("v", v), ("x0", x0), ("x1", x1), ("t", t), ("weight", w)):
        assert z.grad is not None, nm
        assert z.grad.shape == z.shape, nm


# --- 7. opcheck with inputs requiring grad --------------------------------------------------------
# every kind with drawn (Philox) noise, and the given-noise variant where the noise enters u_t
OPCHECK_CASES = [(name, kind, False) for name, kind in KINDS] + [
    ("bridge", OPS.KINDS["bridge"], True), ("target", OPS.KINDS["target"], True)]


@pytest.mark.parametrize("name,kind,given_noise", OPCHECK_CASES,
                         ids=[f"{'given' if g else 'drawn'}-{n}" for n, _, g in OPCHECK_CASES])
def test_opcheck_with_grad_inputs(name, kind, given_noise):
    v, x0, x1, t, eps, w = _grad(*_inputs(B=4, D=3))
    eps = eps if given_noise else None
    return_noise = not given_noise  # drawn noise returned; given noise: the empty second output
    torch.library.opcheck(OPS.interpolant_sample, (x0, x1, t, eps, kind, SIGMA, SEED, OFFSET, return_noise))
    torch.library.opcheck(OPS.interpolant_loss, (v, x0, x1, t, eps, w, kind, SIGMA, SEED, OFFSET))


# --- float32 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", KINDS, ids=KIND_IDS)
def test_float32_forward_ad_in_v_matches_float64_reference(name, kind):
    v, x0, x1, t, eps, w = _inputs(B=8, D=5)
    (dv,) = _tangents((v,), seed=4)
    f32 = [z.float() for z in (v, x0, x1, t, eps, w)]
    v32, x032, x132, t32, eps32, w32 = f32
    p, dp = torch.func.jvp(lambda vv: OPS.mean_loss(vv, x032, x132, t32, eps32, w32, kind, SIGMA, SEED, OFFSET),
                           (v32,), (dv.float(),))
    assert dp.dtype == torch.float32
    # the reference on the float32 inputs promoted to float64 (same numbers)
    v64, x064, x164, t64, eps64, w64 = (z.double() for z in f32)
    pr, dpr = torch.func.jvp(lambda vv: _ref_mean_loss(vv, x064, x164, t64, eps64, w64, kind),
                             (v64,), (dv.float().double(),))
    assert abs(float(dp) - float(dpr)) <= 1e-5 * abs(float(dpr))
    assert abs(float(p) - float(pr)) <= 1e-5 * abs(float(pr))
