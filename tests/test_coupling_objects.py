"""Couplings as objects (flowfast.couplings.coupling) and the paths' ``coupling=`` argument.

Convention: x0 = source/noise at t=0, x1 = data at t=1. Couplings are compared against the
function API (flowfast.couplings.pair) they wrap, and the paths' presets against explicit objects.
"""

import io

import pytest
import torch

from flowfast import paths
from flowfast.couplings import pair, pair_with_labels
from flowfast.couplings.coupling import (Coupling, ExactOTCoupling, IndependentCoupling, IndexCoupling,
                                         LabelAwareCoupling, SinkhornCoupling, UnbalancedCoupling, as_coupling)


def _clouds(n=24, d=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=dtype)
    x1 = torch.randn(n, d, generator=g, dtype=dtype) * 1.5 + 2
    return x0, x1


def _row_indices(xp, x):
    """idx with xp == x[idx] row for row (exact match; every row of xp must match exactly one of x)."""
    match = (xp[:, None, :] == x[None, :, :]).all(-1)
    assert bool((match.sum(1) == 1).all()), "a paired row is not (uniquely) a row of the input"
    return match.int().argmax(1)


def _assert_permutation(idx, n):
    assert sorted(idx.tolist()) == list(range(n)), f"not a permutation: {idx.tolist()}"


def _model(d=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(d + 1, d).double()

    def model(x, t):
        return net(torch.cat([x, t[:, None]], dim=-1))

    model.net = net
    return model


def _gen(seed=7):
    return torch.Generator().manual_seed(seed)


# (coupling, the pair(...) keyword arguments it stands for)
PLAN_COUPLINGS = [
    (ExactOTCoupling(), dict(method="exact")),
    (SinkhornCoupling(), dict(method="sinkhorn")),
    (SinkhornCoupling(reg=0.2), dict(method="sinkhorn", reg=0.2)),
    (SinkhornCoupling(eps=2 * 0.5**2), dict(method="sinkhorn", eps=2 * 0.5**2)),
    (SinkhornCoupling(max_iter=50, tol=1e-4), dict(method="sinkhorn", max_iter=50, tol=1e-4)),
    (UnbalancedCoupling(), dict(method="unbalanced")),
    (UnbalancedCoupling(reg=0.1, reg_m=0.5), dict(method="unbalanced", reg=0.1, reg_m=0.5)),
]
PLAN_IDS = ["exact", "sinkhorn", "sinkhorn-reg", "sinkhorn-eps", "sinkhorn-iters", "unbalanced", "unbalanced-args"]


# --- 1. permutations, equal to pair(...) -----------------------------------------------------------
@pytest.mark.parametrize("coupling,kwargs", PLAN_COUPLINGS, ids=PLAN_IDS)
def test_plan_coupling_is_a_permutation_equal_to_pair(coupling, kwargs):
    x0, x1 = _clouds()
    n = x0.shape[0]
    x0p, x1p = coupling(x0, x1, _gen())
    _assert_permutation(_row_indices(x0p, x0), n)
    _assert_permutation(_row_indices(x1p, x1), n)
    a, b, (i, j) = pair(x0, x1, generator=_gen(), **kwargs)
    assert torch.equal(x0p, a) and torch.equal(x1p, b)
    ri, rj = coupling.indices(x0, x1, _gen())
    assert torch.equal(ri, i) and torch.equal(rj, j)
    # the pairing is not the identity: the test would not notice a coupling that does nothing
    assert not torch.equal(x1p, x1)


@pytest.mark.parametrize("coupling,kwargs", PLAN_COUPLINGS[:2] + PLAN_COUPLINGS[5:6],
                         ids=["exact", "sinkhorn", "unbalanced"])
def test_plan_coupling_with_replacement_equals_pair(coupling, kwargs):
    cls = type(coupling)
    c = cls(replace=True)
    x0, x1 = _clouds()
    x0p, x1p = c(x0, x1, _gen(3))
    a, b, _ = pair(x0, x1, replace=True, generator=_gen(3), **kwargs)
    assert torch.equal(x0p, a) and torch.equal(x1p, b)


def test_independent_coupling_is_the_identity():
    x0, x1 = _clouds()
    c = IndependentCoupling()
    x0p, x1p = c(x0, x1, _gen())
    assert torch.equal(x0p, x0) and torch.equal(x1p, x1)
    i, j = c.indices(x0, x1)
    assert torch.equal(i, torch.arange(24)) and torch.equal(j, torch.arange(24))
    y0, y1 = torch.arange(24), torch.arange(24) + 100
    out = c.with_labels(x0, x1, y0, y1)
    assert all(torch.equal(o, e) for o, e in zip(out, (x0, x1, y0, y1)))


def test_coupling_is_reproducible_from_the_generator_and_random_across_seeds():
    x0, x1 = _clouds()
    c = SinkhornCoupling(reg=0.5)  # broad plan: the Gumbel draw matters
    first = c(x0, x1, _gen(1))[1]
    assert torch.equal(first, c(x0, x1, _gen(1))[1])
    assert any(not torch.equal(first, c(x0, x1, _gen(s))[1]) for s in range(2, 6))


def test_index_coupling_with_labels_carries_labels_along():
    x0, x1 = _clouds()
    y0, y1 = torch.arange(24), torch.arange(24) * 10
    x0p, x1p, y0p, y1p = ExactOTCoupling().with_labels(x0, x1, y0, y1)
    assert torch.equal(y0p, y0[_row_indices(x0p, x0)])
    assert torch.equal(y1p, y1[_row_indices(x1p, x1)])


# --- 2. ExactOTCoupling is optimal -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(24, 3), (40, 7)])
def test_exact_coupling_total_is_scipy_optimum(dtype, n, d):
    from scipy.optimize import linear_sum_assignment

    x0, x1 = _clouds(n, d, dtype=dtype, seed=n + d)
    x0p, x1p = ExactOTCoupling()(x0, x1)
    total = float(((x0p.double() - x1p.double()) ** 2).sum())
    C = ((x0.double()[:, None, :] - x1.double()[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(C.numpy())
    optimum = float(C[r, c].sum())
    assert abs(total - optimum) <= 1e-9 * optimum
    identity = float(((x0.double() - x1.double()) ** 2).sum())
    assert optimum < identity  # the identity pairing is not already optimal


# --- 3. paths: presets == explicit couplings --------------------------------------------------------
def test_ot_cfm_equals_icfm_with_exact_coupling_bit_for_bit():
    x0, x1 = _clouds()
    model = _model()
    a = paths.OptimalTransportCFM(0.1).loss(model, x0, x1, generator=_gen())
    b = paths.IndependentCFM(0.1, coupling=ExactOTCoupling()).loss(model, x0, x1, generator=_gen())
    assert torch.equal(a, b)
    c = paths.IndependentCFM(0.1).loss(model, x0, x1, generator=_gen())
    assert not torch.equal(a, c)  # the coupling changed something


def test_ot_cfm_replace_preset_equals_explicit_coupling():
    x0, x1 = _clouds()
    model = _model()
    a = paths.OptimalTransportCFM(0.1, replace=True).loss(model, x0, x1, generator=_gen())
    b = paths.IndependentCFM(0.1, coupling=ExactOTCoupling(replace=True)).loss(model, x0, x1, generator=_gen())
    assert torch.equal(a, b)


def test_sb_cfm_equals_explicit_sinkhorn_coupling_bit_for_bit():
    x0, x1 = _clouds()
    model = _model()
    a = paths.SchrodingerBridgeCFM(0.5).loss(model, x0, x1, generator=_gen())
    b = paths.SchrodingerBridgeCFM(0.5, coupling=SinkhornCoupling(eps=2 * 0.5**2)).loss(model, x0, x1, generator=_gen())
    assert torch.equal(a, b)
    sb_preset = paths.SchrodingerBridgeCFM(0.5)
    sb_explicit = paths.SchrodingerBridgeCFM(0.5, coupling=SinkhornCoupling(eps=2 * 0.5**2))
    ga = torch.autograd.grad(sb_preset.loss(model, x0, x1, generator=_gen()), list(model.net.parameters()))
    gb = torch.autograd.grad(sb_explicit.loss(model, x0, x1, generator=_gen()), list(model.net.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(ga, gb))


def test_sb_cfm_exact_preset_equals_explicit_exact_coupling():
    x0, x1 = _clouds()
    model = _model()
    a = paths.SchrodingerBridgeCFM(0.5, ot_method="exact").loss(model, x0, x1, generator=_gen())
    b = paths.SchrodingerBridgeCFM(0.5, coupling=ExactOTCoupling()).loss(model, x0, x1, generator=_gen())
    assert torch.equal(a, b)


def test_vp_cfm_with_exact_coupling_runs_and_differs():
    x0, x1 = _clouds()
    model = _model()
    coupled = paths.VariancePreservingCFM(0.1, coupling="exact")
    assert isinstance(coupled.coupling, ExactOTCoupling)
    a = coupled.loss(model, x0, x1, generator=_gen())
    b = paths.VariancePreservingCFM(0.1).loss(model, x0, x1, generator=_gen())
    assert a.shape == () and torch.isfinite(a)
    assert not torch.equal(a, b)
    # and it is the VP loss on the OT-paired batch
    x0p, x1p = ExactOTCoupling()(x0, x1)
    c = paths.VariancePreservingCFM(0.1).loss(model, x0p, x1p, generator=_gen())
    assert torch.equal(a, c)


@pytest.mark.parametrize("cls", [paths.IndependentCFM, paths.OptimalTransportCFM, paths.SchrodingerBridgeCFM,
                                 paths.TargetCFM, paths.VariancePreservingCFM])
def test_every_path_takes_a_coupling(cls):
    c = SinkhornCoupling(reg=0.1)
    path = cls(0.5, coupling=c)
    assert path.coupling is c
    x0, x1 = _clouds()
    a, b = path.couple(x0, x1, _gen())
    ea, eb = c(x0, x1, _gen())
    assert torch.equal(a, ea) and torch.equal(b, eb)


# --- 4. as_coupling and user couplings ---------------------------------------------------------------
class ReverseX1:
    """A user coupling: pairs x0[i] with x1[n-1-i]."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x0, x1, generator=None):
        self.calls += 1
        return x0, x1.flip(0)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_as_coupling_none_and_names():
    assert type(as_coupling(None)) is IndependentCoupling
    for name, cls in [("independent", IndependentCoupling), ("exact", ExactOTCoupling),
                      ("sinkhorn", SinkhornCoupling), ("unbalanced", UnbalancedCoupling)]:
        assert type(as_coupling(name)) is cls, name
    c = SinkhornCoupling(reg=0.3)
    assert as_coupling(c) is c
    r = ReverseX1()
    assert as_coupling(r) is r


def test_as_coupling_unknown_name_names_the_choices():
    with pytest.raises(ValueError) as info:
        as_coupling("optimal")
    msg = str(info.value)
    assert "optimal" in msg
    for choice in ("independent", "exact", "sinkhorn", "unbalanced"):
        assert choice in msg


@pytest.mark.parametrize("bad", [3, 1.5, [1, 2], {"method": "exact"}])
def test_as_coupling_non_callable_raises_type_error(bad):
    with pytest.raises(TypeError, match="Coupling"):
        as_coupling(bad)
    with pytest.raises(TypeError):
        paths.IndependentCFM(0.1, coupling=bad)


@pytest.mark.parametrize("cls", [paths.IndependentCFM, paths.TargetCFM, paths.VariancePreservingCFM,
                                 paths.SchrodingerBridgeCFM, paths.OptimalTransportCFM])
def test_user_coupling_plugs_into_a_path(cls):
    x0, x1 = _clouds()
    model = _model()
    r = ReverseX1()
    path = cls(0.3, coupling=r)
    assert path.coupling is r
    a, b = path.couple(x0, x1, _gen())
    assert torch.equal(a, x0) and torch.equal(b, x1.flip(0))
    got = path.loss(model, x0, x1, generator=_gen())
    assert r.calls == 2  # couple() above, and once in loss()
    # the same path with no re-pairing, on the manually reversed batch
    plain = cls(0.3, coupling=IndependentCoupling())
    expected = plain.loss(model, x0, x1.flip(0), generator=_gen())
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain.loss(model, x0, x1, generator=_gen()))


def test_user_coupling_in_icfm_equals_manual_reverse_with_default_icfm():
    x0, x1 = _clouds()
    model = _model()
    got = paths.IndependentCFM(0.1, coupling=ReverseX1()).loss(model, x0, x1, generator=_gen())
    assert torch.equal(got, paths.IndependentCFM(0.1).loss(model, x0, x1.flip(0), generator=_gen()))
    # sample_location_and_conditional_flow uses the coupling too
    t, xt, ut = paths.IndependentCFM(0.0, coupling=ReverseX1()).sample_location_and_conditional_flow(
        x0, x1, generator=_gen())
    torch.testing.assert_close(ut, x1.flip(0) - x0, rtol=0, atol=0)


# --- 5. state ----------------------------------------------------------------------------------------
class CyclicShift:
    """A stateful user coupling: pairs x0[i] with x1[(i + shift) % n], shift advancing every call;
    its state (the shift and a running tensor) goes through state_dict."""

    def __init__(self):
        self.shift = 0
        self.seen = torch.zeros(3, dtype=torch.float64)

    def __call__(self, x0, x1, generator=None):
        n = x0.shape[0]
        cols = (torch.arange(n) + self.shift) % n
        self.shift += 1
        self.seen = self.seen + x1.detach().sum(0)
        return x0, x1[cols]

    def state_dict(self):
        return {"shift": self.shift, "seen": self.seen.clone()}

    def load_state_dict(self, state):
        if set(state) != {"shift", "seen"}:
            raise ValueError(f"unexpected keys {sorted(state)}")
        self.shift = int(state["shift"])
        self.seen = state["seen"].clone()


def test_stateful_coupling_state_dict_round_trips():
    x0, x1 = _clouds(n=6)
    model = _model()
    c1 = CyclicShift()
    path1 = paths.IndependentCFM(0.1, coupling=c1)
    for _ in range(3):
        path1.loss(model, x0, x1, generator=_gen())
    state = c1.state_dict()
    assert isinstance(c1, Coupling)
    # through a checkpoint file as the trainer writes it (weights_only load)
    buf = io.BytesIO()
    torch.save({"coupling_state": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["coupling_state"]
    c2 = CyclicShift()
    c2.load_state_dict(loaded)
    assert c2.shift == 3 and torch.equal(c2.seen, c1.seen)
    assert c2.state_dict().keys() == state.keys()
    path2 = paths.IndependentCFM(0.1, coupling=c2)
    # both continue identically (and differently from a fresh one)
    a = path1.loss(model, x0, x1, generator=_gen(9))
    b = path2.loss(model, x0, x1, generator=_gen(9))
    fresh = paths.IndependentCFM(0.1, coupling=CyclicShift()).loss(model, x0, x1, generator=_gen(9))
    assert torch.equal(a, b)
    assert not torch.equal(a, fresh)


STATELESS = [IndependentCoupling(), ExactOTCoupling(), ExactOTCoupling(replace=True), SinkhornCoupling(),
             SinkhornCoupling(reg=0.2, eps=0.1), UnbalancedCoupling(), LabelAwareCoupling(),
             LabelAwareCoupling(method="sinkhorn")]
STATELESS_IDS = ["independent", "exact", "exact-replace", "sinkhorn", "sinkhorn-args", "unbalanced",
                 "label-exact", "label-sinkhorn"]


@pytest.mark.parametrize("coupling", STATELESS, ids=STATELESS_IDS)
def test_stateless_couplings_have_empty_state(coupling):
    assert coupling.state_dict() == {}
    coupling.load_state_dict({})  # fine
    coupling.load_state_dict(coupling.state_dict())
    with pytest.raises(ValueError, match="stateless"):
        coupling.load_state_dict({"x": 1})


# --- 6. LabelAwareCoupling ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "sinkhorn", "unbalanced"])
def test_label_aware_pairs_equal_labels(method):
    n, k = 30, 3
    x0, x1 = _clouds(n=n, seed=2)
    g = torch.Generator().manual_seed(4)
    y0 = torch.arange(n) % k
    y1 = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # equal counts, shuffled
    c = LabelAwareCoupling(method=method)
    x0p, x1p, y0p, y1p = c.with_labels(x0, x1, y0, y1, _gen())
    assert torch.equal(y0p, y1p)
    i, j = _row_indices(x0p, x0), _row_indices(x1p, x1)
    _assert_permutation(i, n)
    _assert_permutation(j, n)
    assert torch.equal(y0p, y0[i]) and torch.equal(y1p, y1[j])  # labels follow their samples
    # the same as the function API
    expected = pair_with_labels(x0, x1, y0, y1, method, within_labels=True, generator=_gen())
    assert all(torch.equal(o, e) for o, e in zip((x0p, x1p, y0p, y1p), expected))
    # an unconditional coupling would mix labels on this batch (so the check above can fail)
    _, _, u0, u1 = ExactOTCoupling().with_labels(x0, x1, y0, y1)
    assert not torch.equal(u0, u1)


def test_label_aware_exact_is_optimal_within_each_label():
    from scipy.optimize import linear_sum_assignment

    n, k = 30, 3
    x0, x1 = _clouds(n=n, seed=5)
    y0 = torch.arange(n) % k
    y1 = (torch.arange(n) % k).flip(0)
    x0p, x1p, y0p, _ = LabelAwareCoupling().with_labels(x0, x1, y0, y1)
    for label in range(k):
        a, b = x0[y0 == label], x1[y1 == label]
        C = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        r, c = linear_sum_assignment(C.numpy())
        optimum = float(C[r, c].sum())
        got = float(((x0p[y0p == label] - x1p[y0p == label]) ** 2).sum())
        assert abs(got - optimum) <= 1e-9 * optimum


def test_label_aware_without_labels_raises():
    x0, x1 = _clouds()
    c = LabelAwareCoupling()
    with pytest.raises(TypeError, match="labels"):
        c(x0, x1)
    with pytest.raises(TypeError, match="labels"):
        c(x0, x1, _gen())
    with pytest.raises(TypeError, match="labels"):
        c.indices(x0, x1)
    path = paths.IndependentCFM(0.1, coupling=c)
    with pytest.raises(TypeError, match="labels"):
        path.loss(_model(), x0, x1, generator=_gen())


def test_label_aware_unknown_method_raises():
    with pytest.raises(ValueError, match="exact"):
        LabelAwareCoupling(method="hungarian")


# --- 7. the protocol -------------------------------------------------------------------------------
@pytest.mark.parametrize("coupling", STATELESS, ids=STATELESS_IDS)
def test_builtin_couplings_satisfy_the_protocol(coupling):
    assert isinstance(coupling, Coupling)
    assert isinstance(coupling, IndexCoupling)


def test_protocol_is_runtime_checkable():
    assert isinstance(ExactOTCoupling(), Coupling)
    assert isinstance(ReverseX1(), Coupling)
    assert isinstance(CyclicShift(), Coupling)

    class NoState:
        def __call__(self, x0, x1, generator=None):
            return x0, x1

    assert not isinstance(NoState(), Coupling)
    assert not isinstance(3, Coupling)


# --- 8. non-finite inputs name the batch -------------------------------------------------------------
NAN_COUPLINGS = [ExactOTCoupling(), SinkhornCoupling(), SinkhornCoupling(eps=0.5), UnbalancedCoupling(),
                 ExactOTCoupling(replace=True), SinkhornCoupling(replace=True)]
NAN_IDS = ["exact", "sinkhorn", "sinkhorn-eps", "unbalanced", "exact-replace", "sinkhorn-replace"]


@pytest.mark.parametrize("coupling", NAN_COUPLINGS, ids=NAN_IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["x0", "x1"])
def test_non_finite_input_is_named(coupling, bad, dtype, where):
    x0, x1 = _clouds(dtype=dtype)
    other = "x1" if where == "x0" else "x0"
    target = x0 if where == "x0" else x1
    target[5, 1] = bad
    with pytest.raises(ValueError) as info:
        coupling(x0, x1, _gen())
    msg = str(info.value)
    assert where in msg, msg
    assert other not in msg, f"the message should name only {where}: {msg}"
