"""flowfast.models: the flow-map nets FlowMapMLP and FlowMapUNet and their TimeEmbedding — shapes,
s and t embedded separately, forward-mode derivatives in s, t and x against float64 central
differences, training through a JVP, bad inputs, config round trips."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jvp

from flowfast.models import MLP, FlowMapMLP, FlowMapUNet, TimeEmbedding, batch_time


def _unet8(**kw):
    return FlowMapUNet(channels=1, size=8, **kw)


NETS = {
    "mlp": (lambda: FlowMapMLP(3, hidden=32, depth=3, time_features=16), (3,)),
    "unet8": (lambda: _unet8(base=8, groups=4), (1, 8, 8)),
}


@pytest.fixture(params=sorted(NETS))
def net_and_shape(request):
    make, shape = NETS[request.param]
    return make().double(), shape


def _inputs(shape, batch=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g, dtype=dtype)
    s = torch.rand(batch, generator=g, dtype=dtype) * 0.5
    t = 0.5 + torch.rand(batch, generator=g, dtype=dtype) * 0.5
    return x, s, t


# --- shapes and time inputs ----------------------------------------------------------------------


def test_output_shape_and_time_forms(net_and_shape):
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    v = net(x, s, t)
    assert v.shape == x.shape and v.dtype == x.dtype
    assert torch.equal(net(x, 0.25, t), net(x, torch.full((4,), 0.25, dtype=x.dtype), t))
    assert torch.equal(net(x, s, 0.75), net(x, s, torch.tensor(0.75)))
    assert torch.equal(net(x, s[:, None], t[:, None]), v)
    assert torch.equal(net(x, s.float(), t), net(x, s.float().double(), t))  # cast to x's dtype


def test_s_and_t_are_embedded_separately(net_and_shape):
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    v = net(x, s, t)
    assert not torch.allclose(net(x, s + 0.1, t), v)  # s alone matters
    assert not torch.allclose(net(x, s, t - 0.1), v)  # t alone matters
    assert not torch.allclose(net(x, s + 0.1, t + 0.1), v)  # not a function of t - s only
    assert not torch.allclose(net(x, t, s), v)  # the two times are not interchangeable
    emb = [m for m in net.modules() if isinstance(m, TimeEmbedding)]
    assert len(emb) == 2 and emb[0] is not emb[1]


def test_float32_forward_and_batch_one():
    net = FlowMapMLP(2)
    assert net(torch.randn(1, 2), 0.0, 1.0).shape == (1, 2)
    unet = _unet8()
    assert unet(torch.randn(1, 1, 8, 8), torch.zeros(1), torch.ones(1, 1)).shape == (1, 1, 8, 8)


# --- forward-mode derivatives --------------------------------------------------------------------


def _central(f, h=1e-4):
    """Fourth-order central difference of f at 0 (float64: error about 1e-10 here)."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def test_jvp_in_t_matches_central_difference(net_and_shape):
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    dt = torch.linspace(0.5, 1.5, 4, dtype=x.dtype)  # a different tangent per row
    v, dv = jvp(lambda tt: net(x, s, tt), (t,), (dt,))
    assert torch.equal(v, net(x, s, t))
    fd = _central(lambda h: net(x, s, t + h * dt))
    assert dv.abs().max() > 1e-4  # a non-trivial derivative, so the comparison means something
    torch.testing.assert_close(dv, fd, rtol=1e-6, atol=1e-7)


def test_jvp_in_s_matches_central_difference(net_and_shape):
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    ds = torch.ones_like(s)
    _, dv = jvp(lambda ss: net(x, ss, t), (s,), (ds,))
    torch.testing.assert_close(dv, _central(lambda h: net(x, s + h * ds, t)), rtol=1e-6, atol=1e-7)


def test_jvp_in_x_and_s_jointly(net_and_shape):
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    dx, ds = torch.randn_like(x), torch.rand_like(s)
    _, dv = jvp(lambda xx, ss: net(xx, ss, t), (x, s), (dx, ds))
    fd = _central(lambda h: net(x + h * dx, s + h * ds, t))
    torch.testing.assert_close(dv, fd, rtol=1e-6, atol=1e-7)
    # linear in the tangent: the joint derivative is the sum of the partial ones
    _, dv_x = jvp(lambda xx: net(xx, s, t), (x,), (dx,))
    _, dv_s = jvp(lambda ss: net(x, ss, t), (s,), (ds,))
    torch.testing.assert_close(dv, dv_x + dv_s)


def test_flow_map_time_derivative_and_training_through_jvp(net_and_shape):
    """The use in flow-map losses: d/dt of X_{s,t}(x) = x + (t - s) v via jvp, then backward."""
    net, shape = net_and_shape
    x, s, t = _inputs(shape)
    view = (-1,) + (1,) * len(shape)

    def flow_map(tt):
        return x + (tt - s).reshape(view) * net(x, s, tt)

    X, dX = jvp(flow_map, (t,), (torch.ones_like(t),))
    fd = _central(lambda h: flow_map(t + h))
    torch.testing.assert_close(dX, fd, rtol=1e-6, atol=1e-7)
    (dX.pow(2).mean() + X.pow(2).mean()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_time_embedding_is_smooth_and_checked():
    emb = TimeEmbedding(16, out_features=8).double()
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    out, d = jvp(emb, (t,), (torch.ones_like(t),))
    assert out.shape == (7, 8)
    torch.testing.assert_close(d, _central(lambda h: emb(t + h)), rtol=1e-6, atol=1e-8)
    # the fastest sinusoid has period min_period (1/16): |w| = 32 pi, so d/dt stays moderate
    assert float(emb.frequencies.max()) == pytest.approx(2 * math.pi * 16)
    assert emb(0.5, batch=3).shape == (3, 8)
    with pytest.raises(ValueError, match="even"):
        TimeEmbedding(15)
    with pytest.raises(ValueError, match="max_period"):
        TimeEmbedding(8, max_period=0.1, min_period=1.0)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        emb(t[:, None])


def test_batch_time_forms_and_errors():
    like = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(batch_time(0.5, 3, like), torch.full((3,), 0.5, dtype=torch.float64))
    assert batch_time(1, 3, like).dtype == torch.float64
    assert batch_time(torch.tensor(0.5), 3, like).shape == (3,)
    assert batch_time(torch.rand(3, 1), 3, like).shape == (3,)
    with pytest.raises(ValueError, match="3 entries"):
        batch_time(torch.rand(4), 3, like)
    with pytest.raises(ValueError, match="scalar"):
        batch_time(torch.rand(3, 2), 3, like)
    with pytest.raises(TypeError, match="required"):
        batch_time(None, 3, like, "s")
    with pytest.raises(TypeError, match="bool"):
        batch_time(True, 3, like)
    with pytest.raises(TypeError, match="number"):
        batch_time("0.5", 3, like)


# --- bad inputs and configuration ----------------------------------------------------------------


def test_flow_map_mlp_bad_inputs():
    net = FlowMapMLP(2, hidden=16, depth=2, time_features=8)
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        net(torch.randn(5, 3), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        net(torch.randn(5), 0.0, 1.0)
    with pytest.raises(ValueError, match="s must .*5 entries"):
        net(x, torch.rand(4), 1.0)
    with pytest.raises(ValueError, match="t must .*5 entries"):
        net(x, 0.0, torch.rand(6))
    with pytest.raises(TypeError, match="t is required"):
        net(x, 0.0, None)
    for kwargs in ({"dim": 0}, {"dim": 2, "depth": 0}, {"dim": 2, "hidden": 1.5}, {"dim": True}):
        with pytest.raises(ValueError):
            FlowMapMLP(**kwargs)
    with pytest.raises(ValueError, match="activation"):
        FlowMapMLP(2, activation="swish")
    with pytest.raises(ValueError, match="even"):
        FlowMapMLP(2, time_features=7)


def test_flow_map_unet_bad_inputs():
    net = _unet8(base=8, groups=4)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 28, 28), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.randn(1, 8, 8), 0.0, 1.0)
    with pytest.raises(ValueError, match="s must .*2 entries"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3), 1.0)
    with pytest.raises(ValueError, match="divisible"):
        FlowMapUNet(size=6, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="channel_mults"):
        FlowMapUNet(channel_mults=())
    with pytest.raises(ValueError, match="base"):
        FlowMapUNet(base=0)


@pytest.mark.parametrize("make, shape", [
    (lambda: FlowMapMLP(3, hidden=32, depth=2, time_features=16, activation="silu"), (3,)),
    (lambda: FlowMapUNet(channels=2, size=8, base=8, channel_mults=(1, 2), groups=4), (2, 8, 8)),
])
def test_config_round_trips(make, shape):
    net = make()
    cls = type(net)
    twin = cls(**net.config())
    assert twin.config() == net.config()
    twin.load_state_dict(net.state_dict())
    x, s, t = _inputs(shape, dtype=torch.float32)
    assert torch.equal(twin(x, s, t), net(x, s, t))
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in net.parameters())


def test_unet_sizes_8_and_28():
    small = FlowMapUNet(size=8)
    assert small.channel_mults == (1, 1)
    big = FlowMapUNet(size=28, base=8, groups=4)
    assert big.channel_mults == (1, 2, 2)  # 28 -> 14 -> 7
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    big = big.double()
    s, t = torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.6, 0.9], dtype=torch.float64)
    v, dv = jvp(lambda tt: big(x, s, tt), (t,), (torch.ones_like(t),))
    assert v.shape == x.shape
    torch.testing.assert_close(dv, _central(lambda h: big(x, s, t + h)), rtol=1e-6, atol=1e-7)
    rgb = FlowMapUNet(channels=3, size=16, base=8, groups=4)
    assert rgb(torch.randn(2, 3, 16, 16), 0.0, 0.5).shape == (2, 3, 16, 16)


def test_default_sizes_are_small():
    """The defaults the digits experiments use stay small (a CPU training step must be cheap)."""
    n8 = sum(p.numel() for p in FlowMapUNet(size=8).parameters())
    n28 = sum(p.numel() for p in FlowMapUNet(size=28).parameters())
    assert n8 < 100_000 and n28 < 300_000


def test_velocity_mlp_unchanged():
    """flowfast.models.MLP is still the one-time velocity net forward(x, t)."""
    net = MLP(2)
    assert net(torch.randn(3, 2), 0.5).shape == (3, 2)
    assert net.config() == {"dim": 2, "hidden": 64, "depth": 3, "time_embedding": True}


def test_mlp_on_flattened_samples():
    net = MLP(64, hidden=8, depth=1, sample_shape=(1, 8, 8))
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    out = net(x, t)
    assert out.shape == x.shape
    assert torch.equal(out.flatten(1), net._vector_forward(x.flatten(1), t))  # the same net on the flat pixels
    assert net.config()["sample_shape"] == [1, 8, 8] and MLP(**net.config()).sample_shape == (1, 8, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        net(torch.randn(3, 64), t)
    with pytest.raises(ValueError, match="product is dim=64"):
        MLP(64, sample_shape=(1, 8, 7))
