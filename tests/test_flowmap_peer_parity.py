"""The convention mapping of benchmarks/bench_flowmap_peer.py is right: flowfast and the peer
(rectified-flow-pytorch's MeanFlow and LsdFlow) train the same net on the same problem.

- LsdFlow uses flowfast's convention (t=0 noise, t=1 data, X_{s,t} = x + (t-s) net(x, s, t)): at
  the same times its diagonal and off-diagonal losses *and gradients* equal flowfast LSD's terms.
- MeanFlow runs t=0 data -> t=1 noise with z_r = z_t - (t-r) u(z_t, t, t-r); through
  ``MeanFlowView`` (u = -net(z, 1-t, 1-t+d)) its loss and gradient equal flowfast's Eulerian
  residual with the *conditional* velocity x1 - x0 as drift (its only difference from ESD), with
  flowfast times s = 1 - t, end = 1 - r.
- On the closed-form Gaussian flow map (``flowfast.flowmaps.analytic``) the self-distillation
  terms vanish: flowfast LSD / ESD off-diagonal, LsdFlow's off-diagonal loss (~1e-12). MeanFlow's
  loss cannot vanish (its target carries the conditional velocity's variance, like flow matching),
  but the exact map is a stationary point of it (mean gradient ~0), and not under a wrong mapping.
- The peers' samplers are the bench's: LsdFlow's sample / slow_sample and MeanFlow's 1-step
  sample equal ``flowmaps.sample``; MeanFlow's multi-step sample is Euler on u(z, t, 0).
- ``bench_flowmap_peer.py --quick`` runs and writes its files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowfast import flowmaps
from flowfast.flowmaps.analytic import GaussianFlowMapNet, gaussian_fm_minimum
from flowfast.flowmaps.self_distillation import eulerian_residual

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_flowmap_peer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("flowfast_bench_flowmap_peer", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def peer(bench):
    pytest.importorskip("einops")
    if importlib.util.find_spec("rectified_flow_pytorch") is None:
        pytest.skip("rectified_flow_pytorch is not installed")
    try:
        return bench.load_peer()
    except ImportError as exc:
        pytest.skip(f"rectified_flow_pytorch's mean_flow / lsd_flow do not import: {exc}")


def small_net(bench, seed=0):
    torch.manual_seed(seed)
    return bench.TwoTimeMLP(2, hidden=32, depth=2, time_features=8)


def batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g)
    x1 = torch.randn(n, 2, generator=g) * 0.7 + torch.tensor([1.5, -0.5])
    u = torch.rand(n, 2, generator=g) * 0.98 + 0.01
    return x0, x1, u.min(1).values, u.max(1).values  # s < t


def grads(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()))


def assert_same(a, b, grads_a, grads_b, rtol=1e-5):
    assert torch.allclose(a, b, rtol=rtol, atol=1e-7), (float(a), float(b))
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-6), float((ga - gb).abs().max())


def fixed(*values):
    """A stand-in for a peer's time sampler that returns ``values`` in order, then fails."""
    it = iter(values)
    return lambda batch: next(it)


# ---------------------------------------------------------------- LsdFlow = flowfast LSD

def test_lsdflow_terms_equal_flowfast_lsd(bench, peer):
    net = small_net(bench)
    x0, x1, s, t = batch()
    fm, lsd = flowmaps.FlowMap(net), flowmaps.LSD()

    lf = peer.lsd_flow.LsdFlow(net)
    lf.sample_diag_mask = lambda b: torch.zeros(b, dtype=torch.bool)
    lf.sample_times = fixed(t)
    lf.sample_triangle_times = fixed((s, t))
    theirs = lf(x1, noise=x0)
    ours = lsd.off_diagonal(fm, x0, x1, s, t, None).mean()
    assert_same(theirs, ours, grads(theirs, net), grads(ours, net))

    lf.sample_diag_mask = lambda b: torch.ones(b, dtype=torch.bool)
    lf.sample_times = fixed(t)
    lf.sample_triangle_times = fixed((s, t))
    theirs = lf(x1, noise=x0)
    ours = lsd.diagonal(fm, x0, x1, t, None).mean()
    assert_same(theirs, ours, grads(theirs, net), grads(ours, net))


# ---------------------------------------------------------------- MeanFlow = Eulerian, conditional drift

@pytest.mark.parametrize("adaptive", [False, True])
def test_meanflow_equals_eulerian_residual_with_conditional_drift(bench, peer, adaptive):
    net = small_net(bench)
    x0, x1, r_peer, t_peer = batch()  # the peer's r < t, in its data(0) -> noise(1) time
    mf = peer.mean_flow.MeanFlow(bench.MeanFlowView(net), use_adaptive_loss_weight=adaptive,
                                 prob_default_flow_obj=0.0)
    mf.sample_times = fixed(t_peer, r_peer)  # the peer sorts the pair: r = min, t = max
    theirs = mf(x1, noise=x0)

    s, end = 1 - t_peer, 1 - r_peer  # flowfast times: the jump z_t -> z_r is X_{s, end}
    xs = (1 - s)[:, None] * x0 + s[:, None] * x1
    assert torch.allclose(xs, x1.lerp(x0, t_peer[:, None]), atol=1e-6)  # the peer's noised data
    per_sample = eulerian_residual(flowmaps.FlowMap(net), xs, s, end, x1 - x0, stop_gradient="target")
    if adaptive:  # the peer's default: weight 1 / (l + 1e-3)^0.5, detached
        per_sample = per_sample / (per_sample.detach() + mf.eps).pow(mf.adaptive_loss_weight_p)
    ours = per_sample.mean()
    assert_same(theirs, ours, grads(theirs, net), grads(ours, net))

    # its plain flow-matching batches: v_{s,s} regressed on x1 - x0 at s = 1 - t
    mf = peer.mean_flow.MeanFlow(bench.MeanFlowView(net), use_adaptive_loss_weight=False, prob_default_flow_obj=1.0)
    mf.sample_times = fixed(t_peer)
    theirs = mf(x1, noise=x0)
    ours = flowmaps.LSD().diagonal(flowmaps.FlowMap(net), x0, x1, 1 - t_peer, None).mean()
    assert_same(theirs, ours, grads(theirs, net), grads(ours, net))


# ---------------------------------------------------------------- the closed-form flow map

MEAN, SCALE = [2.0, -1.0], 0.5


def exact_net(perturbation=0.0, dtype=torch.float32):
    """The closed-form flow map; float32 for the peers (they draw their times in torch's default dtype)."""
    return GaussianFlowMapNet(torch.tensor(MEAN, dtype=dtype), SCALE, perturbation)


class Flipped(torch.nn.Module):
    """A wrong mapping, the time-reversed net -net(x, 1-s, 1-t): what a convention mix-up trains.
    It is self-consistent (every LSD/ESD off-diagonal term still vanishes: X_{s,t} is the exact
    map's X_{1-s,1-t}), so only the diagonal, flow matching, tells it apart."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, x, s, t):
        return -self.inner(x, 1 - s, 1 - t)


def test_self_distillation_terms_vanish_on_the_exact_map(peer):
    net = exact_net(dtype=torch.float64)
    fm = flowmaps.FlowMap(net)
    g = torch.Generator().manual_seed(3)
    x0, x1 = net.source(4096, g), net.target(4096, g)
    u = torch.rand(4096, 2, generator=g, dtype=torch.float64) * 0.98 + 0.01
    s, t = u.min(1).values, u.max(1).values
    assert float(flowmaps.LSD().off_diagonal(fm, x0, x1, s, t, None).detach().max()) < 1e-20
    assert float(flowmaps.ESD().off_diagonal(fm, x0, x1, s, t, None).detach().max()) < 1e-20

    net = exact_net()
    x0, x1, t_diag = x0.float(), x1.float(), u[:, 0].float()
    fm_minimum = float(gaussian_fm_minimum(SCALE, t_diag).mean())  # the diagonal's floor: Var(x1 - x0 | x_t)
    for model, exact in ((net, True), (Flipped(net), False)):
        lf = peer.lsd_flow.LsdFlow(model)
        lf.sample_times = fixed(t_diag)
        torch.manual_seed(0)
        _, (diag, off) = lf(x1, noise=x0, return_loss_breakdown=True)
        assert float(off) < 1e-9
        if exact:
            assert abs(float(diag) - fm_minimum) < 0.05 * fm_minimum, (float(diag), fm_minimum)
        else:
            assert float(diag) > 1.5 * fm_minimum, (float(diag), fm_minimum)


def meanflow_grad(peer, view, perturbation, n=200_000):
    """d(MeanFlow loss)/d(perturbation) on the exact map + perturbation * x, JVP branch, default weighting."""
    net = exact_net(perturbation)
    g = torch.Generator().manual_seed(6)
    x0, x1 = net.source(n, g), net.target(n, g)
    torch.manual_seed(5)
    loss = peer.mean_flow.MeanFlow(view(net), prob_default_flow_obj=0.0)(x1, noise=x0)
    (grad,) = torch.autograd.grad(loss, [net.perturbation])
    return float(grad)


def test_exact_map_is_stationary_for_meanflow(peer, bench):
    at_exact = meanflow_grad(peer, bench.MeanFlowView, 0.0)
    off_exact = meanflow_grad(peer, bench.MeanFlowView, 0.2)
    unflipped = meanflow_grad(peer, _UnflippedView, 0.0)
    reversed_net = meanflow_grad(peer, lambda net: bench.MeanFlowView(Flipped(net)), 0.0)
    # Monte Carlo: |grad| <~ 0.006 at the exact map over seeds; 0.13 .. 1.1 for the wrong ones
    assert abs(at_exact) < 0.02, at_exact
    assert min(abs(off_exact), abs(unflipped), abs(reversed_net)) > 0.1, (off_exact, unflipped, reversed_net)


class _UnflippedView(torch.nn.Module):
    """MeanFlow's model signature read in flowfast's time direction (the mistake the view avoids)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z, t, delta):
        return -self.net(z, t - delta, t)


# ---------------------------------------------------------------- samplers

def test_peer_samplers_are_the_benchmarks(bench, peer):
    net = small_net(bench, seed=4)
    fm = flowmaps.FlowMap(net)
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(8))
    lf = peer.lsd_flow.LsdFlow(net, data_shape=(2,))
    mf = peer.mean_flow.MeanFlow(bench.MeanFlowView(net), data_shape=(2,))
    with torch.no_grad():
        for k in (1, 2, 4):
            ours = flowmaps.sample(fm, x0, steps=k).x
            theirs = (lf.sample(batch_size=128, noise=x0, steps=1) if k == 1
                      else lf.slow_sample(steps=k, batch_size=128, noise=x0))
            assert torch.allclose(theirs, ours, atol=1e-6)
            torch.manual_seed(9)
            theirs = mf.sample(batch_size=128, steps=k) if k > 1 else mf.sample(batch_size=128, noise=x0, steps=1)
            torch.manual_seed(9)
            noise = torch.randn(128, 2) if k > 1 else x0
            assert torch.allclose(theirs, bench.meanflow_own_sampler(fm, noise, k), atol=1e-5)
            if k == 1:
                assert torch.allclose(theirs, ours, atol=1e-6)


# ---------------------------------------------------------------- the script

def test_quick_run_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (js,) = tmp_path.glob("flowmap-peer-quick-cpu-*.json")
    (md,) = tmp_path.glob("flowmap-peer-quick-cpu-*.md")
    payload = json.loads(js.read_text())
    assert payload["env"]["torch_threads"] == 1 and payload["env"]["cpu_model"]
    runs = payload["extra"]["runs"]
    methods = {r["method"] for r in runs}
    peer_present = payload["env"]["versions"].get("rectified_flow_pytorch") not in (None, "not installed")
    assert {"ff-lsd", "ff-esd"} <= methods
    if peer_present:
        assert {"peer-meanflow", "peer-lsdflow", "peer-meanflow-own-sampler"} <= methods
        assert max(payload["extra"]["sampler_check_max_abs_diff"].values()) < 1e-5
    for r in runs:
        assert set(r["w2"]) == {"1", "2", "4"}
        assert all(v is None or v > 0 for v in r["w2"].values())
    text = md.read_text()
    assert "| toy | method | W2 1 step |" in text and "W2 per seed" in text
