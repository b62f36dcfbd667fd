#!/usr/bin/env python
r"""Few-step flow maps, side by side with rectified-flow-pytorch: flowfast LSD / ESD vs the peer's
MeanFlow and LsdFlow, same network, same data, same optimizer, trained in one interleaved run.

The problem: source N(0, I) -> a 2D toy (``flowfast.data``: 8gaussians, moons, checkerboard), the
straight interpolant without noise, independent pairs. For each toy and seed every method trains its
own copy of the **same initial network** (one ``net(x, s, t)``, flowfast's convention; same
architecture, parameter count and init seed) on the **same pre-drawn batches** (source and data,
one stream per seed), with the same optimizer (Adam, lr 1e-3), batch size, number of steps and no
EMA. The methods only differ in their training objective (each with its own library's defaults):

- **flowfast LSD** ``flowfast.flowmaps.LSD().loss(FlowMap(net), x0, x1, generator)``: 75% of each
  batch on the diagonal s = t (flow matching of :math:`v_{t,t}`), the rest s < t uniform on the
  triangle with the Lagrangian term
  :math:`\|\partial_t X_{s,t}(I_s) - \mathrm{sg}\,v_{t,t}(\mathrm{sg}\,X_{s,t}(I_s))\|^2`.
- **flowfast ESD** ``flowfast.flowmaps.ESD()``: same split, Eulerian semigradient term in MeanFlow's placement (``stop_gradient="target"``)
  :math:`\|v_{s,t} - \mathrm{sg}(b + (t-s)(\partial_s v + \nabla v\,b))\|^2`, :math:`b = \mathrm{sg}\,v_{s,s}(I_s)`.
- **peer MeanFlow** ``rectified_flow_pytorch.mean_flow.MeanFlow(model)`` (defaults): per batch, with
  probability 0.5 plain flow matching, else (r, t) ~ sorted logit-normal(-0.4, 1) pairs and the
  MeanFlow target :math:`u = v_{\rm cond} - (t - r)\,\mathrm{sg}(\mathrm{d}u/\mathrm{d}t)` (one JVP along
  the *conditional* velocity), adaptive loss weight :math:`1/(\ell + 10^{-3})^{0.5}`.
- **peer LsdFlow** ``rectified_flow_pytorch.lsd_flow.LsdFlow(model)`` (defaults): the LSD objective
  (Bernoulli(0.75) diagonal mask per sample, times clamped to [1e-3, 1 - 1e-3]); it evaluates both
  the diagonal and the off-diagonal term on the whole batch and masks, so it does about twice the work.

Conventions (the part that makes both libraries train the same problem; checked by
``tests/test_flowmap_peer_parity.py``):

- flowfast and LsdFlow: t = 0 noise, t = 1 data, :math:`X_{s,t}(x) = x + (t - s)\,\mathrm{net}(x, s, t)`:
  LsdFlow gets ``net`` itself.
- MeanFlow: t = 0 data, t = 1 noise (``data.lerp(noise, t)``, velocity ``noise - data``); its model is
  ``model(z_t, t, t - r)`` = the average velocity u with :math:`z_r = z_t - (t - r)\,u`. With
  :math:`\tau = 1 - t` the jump :math:`z_t \to z_r` is the flowfast jump from :math:`s = 1 - t` to
  :math:`1 - r = s + (t - r)`, so MeanFlow gets the view ``model(z, t, d) = -net(z, 1 - t, 1 - t + d)``
  (:class:`MeanFlowView`) and the trained ``net`` is again a flowfast-convention two-time net.

Evaluation: every trained ``net`` is sampled as a flowfast ``FlowMap`` with 1, 2 and 4 uniform jumps
(``flowfast.flowmaps.sample``) from the same 2000 source points and scored by exact W2
(``flowfast.metrics.wasserstein2``) against the same 2000 data points. These are the peers' own
samplers (checked in the run, ``sampler_check`` in the JSON): LsdFlow's ``sample`` / ``slow_sample``
compose the map on the same grid, MeanFlow's 1-step ``sample`` is :math:`z_0 = z_1 - u(z_1, 1, 1)`.
MeanFlow's own ``sample(steps > 1)`` is *not* a map composition but Euler on the diagonal velocity
:math:`u(z, t, 0)`; it is reported as the extra row "peer MeanFlow (its sampler)".

Step time: the methods are interleaved step by step (the order rotates every step), so machine load
hits all of them alike; each optimizer step (loss, backward, Adam) is timed with
``time.perf_counter``, and the per-run median after a warm-up is reported, with torch on 1 thread.
MeanFlow's steps are bimodal (half its batches skip the JVP): its median is split by batch kind too.

The peer: ``rectified_flow_pytorch``'s package ``__init__`` imports modules that need torchdiffeq,
torchvision, x-transformers, ... . The two modules used here need only torch and einops, so they are
loaded directly from their files (``importlib.util.spec_from_file_location``, :func:`load_peer`),
without running the package ``__init__``. Only MeanFlow's module-level ``random`` is wrapped (to
record which batches were plain flow matching; the draws are unchanged).

    python benchmarks/bench_flowmap_peer.py                      # defaults: 20 min on a loaded 2-core CPU
    python benchmarks/bench_flowmap_peer.py --quick --out /tmp/x # smoke run, seconds
    python benchmarks/bench_flowmap_peer.py --toys checkerboard --seeds 0 1 2 3 4 --steps 5000
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import math
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

from flowfast import data, flowmaps  # noqa: E402
from flowfast.metrics import wasserstein2  # noqa: E402

FAMILY = "flowmap-peer"
PEER_DIST = "rectified-flow-pytorch"
PEER_PACKAGE = "rectified_flow_pytorch"

TOYS = ("8gaussians", "moons", "checkerboard")
DEFAULT_TOYS = ("8gaussians", "moons")
METHODS = {
    "ff-lsd": "flowfast LSD",
    "ff-esd": "flowfast ESD",
    "peer-meanflow": "peer MeanFlow",
    "peer-lsdflow": "peer LsdFlow",
}
PEER_METHODS = ("peer-meanflow", "peer-lsdflow")
MEANFLOW_OWN = "peer-meanflow-own-sampler"  # extra eval row: MeanFlow's own sample(steps > 1) = Euler

STEPS = 3000
BATCH = 256
LR = 1e-3
SEEDS = (0, 1, 2)
EVAL_N = 2000
SAMPLE_STEPS = (1, 2, 4)
# the network (flowfast.models.FlowMapMLP when present, else the local TwoTimeMLP of the same layout)
HIDDEN, DEPTH, TIME_FEATURES = 128, 3, 32
DATA_SEED_BASE = 2_000_000  # training stream of seed s: generator seeded DATA_SEED_BASE + s
EVAL_SEED_BASE = 1_000_000  # eval source / data points of seed s
FLOOR_SEED = 3_000_000  # a second, independent set of data points: W2(data, data') at EVAL_N
WARMUP_STEPS = 50  # per run, excluded from the step-time median (also at most steps // 5)


# ---------------------------------------------------------------- the peer

def load_peer() -> SimpleNamespace:
    """The peer's ``mean_flow`` and ``lsd_flow`` modules, loaded from their files (see the module
    docstring). Raises ImportError when the package or einops is missing."""
    spec = importlib.util.find_spec(PEER_PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PEER_PACKAGE} is not installed (pip install --no-deps {PEER_DIST} einops)")
    root = Path(list(spec.submodule_search_locations)[0])
    mods = {}
    for name in ("mean_flow", "lsd_flow"):
        path = root / f"{name}.py"
        if not path.exists():
            raise ImportError(f"{PEER_PACKAGE} has no {name}.py at {path}")
        sub_spec = importlib.util.spec_from_file_location(f"_flowfast_bench_peer_{name}", path)
        module = importlib.util.module_from_spec(sub_spec)
        sub_spec.loader.exec_module(module)  # ImportError if einops is missing
        mods[name] = module
    try:
        version = importlib.metadata.version(PEER_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        einops_version = importlib.metadata.version("einops")
    except importlib.metadata.PackageNotFoundError:
        einops_version = "unknown"
    return SimpleNamespace(mean_flow=mods["mean_flow"], lsd_flow=mods["lsd_flow"], version=version,
                           einops=einops_version, root=str(root))


class _DrawRecorder:
    """Stands in for ``random.random`` inside the peer's mean_flow module: the same draws, the last
    one kept (MeanFlow does plain flow matching on a batch when it is < prob_default_flow_obj)."""

    def __init__(self) -> None:
        self.last: Optional[float] = None

    def __call__(self) -> float:
        self.last = random.random()
        return self.last


class MeanFlowView(nn.Module):
    """The peer MeanFlow's ``model(z, t, t - r)`` over a flowfast-convention ``net(x, s, t)``.

    MeanFlow's time runs data (0) -> noise (1) and ``z_r = z_t - (t - r) u``; flowfast's runs noise (0)
    -> data (1) and ``X_{s,t}(x) = x + (t - s) net(x, s, t)``. With s = 1 - t and end 1 - r = s + delta
    the two jumps coincide for ``u = -net(z, s, s + delta)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, t: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        s = 1 - t
        return -self.net(z, s, s + delta)


# ---------------------------------------------------------------- the network

class TwoTimeMLP(nn.Module):
    """Local stand-in for ``flowfast.models.FlowMapMLP`` (used when that is missing or with
    ``--net local``): ``concat(x, fourier(s), fourier(t))`` -> Linear -> (GELU -> Linear) x depth.
    Fourier periods log-spaced from 8 down to 1/16, like FlowMapMLP's time embedding."""

    def __init__(self, dim: int = 2, hidden: int = HIDDEN, depth: int = DEPTH, time_features: int = TIME_FEATURES):
        super().__init__()
        periods = torch.logspace(math.log10(8.0), math.log10(1.0 / 16), time_features // 2, dtype=torch.float64)
        self.register_buffer("frequencies", 2 * math.pi / periods, persistent=False)
        layers: list[nn.Module] = [nn.Linear(dim + 2 * time_features, hidden)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        layers += [nn.GELU(), nn.Linear(hidden, dim)]
        self.net = nn.Sequential(*layers)

    def _fourier(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        angles = t.to(like.dtype).reshape(-1, 1) * self.frequencies.to(like.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self._fourier(s, x), self._fourier(t, x)], dim=1))


def net_factory(kind: str):
    """``(make_net, description)``: ``kind`` "auto" (FlowMapMLP if importable), "flowfast" or "local"."""
    if kind in ("auto", "flowfast"):
        try:
            from flowfast.models import FlowMapMLP

            def make() -> nn.Module:
                return FlowMapMLP(2, hidden=HIDDEN, depth=DEPTH, time_features=TIME_FEATURES, activation="gelu")

            make()  # the class is being written elsewhere: fail here, not mid-run
            return make, (f"flowfast.models.FlowMapMLP(2, hidden={HIDDEN}, depth={DEPTH}, "
                          f"time_features={TIME_FEATURES}, activation='gelu')")
        except (ImportError, TypeError, ValueError) as exc:
            if kind == "flowfast":
                raise SystemExit(f"bench_flowmap_peer.py: --net flowfast but FlowMapMLP is unusable: {exc}")

    def make_local() -> nn.Module:
        return TwoTimeMLP(2, HIDDEN, DEPTH, TIME_FEATURES)

    return make_local, (f"local TwoTimeMLP(2, hidden={HIDDEN}, depth={DEPTH}, time_features={TIME_FEATURES}) "
                        "(concat(x, fourier(s), fourier(t)), GELU)")


# ---------------------------------------------------------------- methods

class Method:
    """One method of a run: its copy of the net, its objective, its Adam."""

    def __init__(self, key: str, net: nn.Module, seed: int, peer, lr: float) -> None:
        self.key = key
        self.net = net
        self.flow_map = flowmaps.FlowMap(net)  # every method's net is a flowfast-convention net
        self.meanflow_fm_batch: Optional[bool] = None
        if key in ("ff-lsd", "ff-esd"):
            objective = flowmaps.LSD() if key == "ff-lsd" else flowmaps.ESD(stop_gradient="target")
            generator = torch.Generator().manual_seed(seed)
            self.wrapper = None

            def loss_fn(x0, x1):
                return objective.loss(self.flow_map, x0, x1, generator)
        elif key == "peer-meanflow":
            self.wrapper = peer.mean_flow.MeanFlow(MeanFlowView(net))
            self._draws = peer.draws

            def loss_fn(x0, x1):
                return self.wrapper(x1, noise=x0)
        elif key == "peer-lsdflow":
            self.wrapper = peer.lsd_flow.LsdFlow(net)

            def loss_fn(x0, x1):
                return self.wrapper(x1, noise=x0)
        else:
            raise ValueError(key)
        self.loss_fn = loss_fn
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.n_params = sum(p.numel() for p in net.parameters())

    def step(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if self.key == "peer-meanflow":
            self._draws.last = None
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(x0, x1)
        loss.backward()
        self.opt.step()
        if self.key == "peer-meanflow":
            p = self.wrapper.prob_default_flow_obj
            self.meanflow_fm_batch = p > 0 and self._draws.last is not None and self._draws.last < p
        return loss.detach()


# ---------------------------------------------------------------- one (toy, seed)

def train_run(toy: str, seed: int, args, peer, make_net) -> tuple[dict, dict]:
    """Trains every method on (toy, seed), interleaved. Returns ``(results, methods)``."""
    target = data.get_sampler(toy)
    g = torch.Generator().manual_seed(DATA_SEED_BASE + seed)
    n = args.steps * args.batch
    x0_all = data.gaussian(n, generator=g)
    x1_all = target(n, generator=g)
    torch.manual_seed(seed)
    base = make_net()
    methods = [Method(key, copy.deepcopy(base), seed, peer, args.lr) for key in args.methods]
    torch.manual_seed(seed)  # the peers draw their times and noise from torch's global RNG ...
    random.seed(seed)  # ... and MeanFlow its per-batch branch from Python's
    warmup = min(WARMUP_STEPS, args.steps // 5)
    times = {m.key: [] for m in methods}
    fm_batch: list[bool] = []
    tail = max(1, args.steps // 10)
    loss_sum = {m.key: torch.zeros(()) for m in methods}
    t_start = time.perf_counter()
    for i in range(args.steps):
        x0 = x0_all[i * args.batch:(i + 1) * args.batch]
        x1 = x1_all[i * args.batch:(i + 1) * args.batch]
        r = i % len(methods)
        for m in methods[r:] + methods[:r]:
            t0 = time.perf_counter()
            loss = m.step(x0, x1)
            dt = time.perf_counter() - t0
            times[m.key].append(dt)
            if m.key == "peer-meanflow":
                fm_batch.append(bool(m.meanflow_fm_batch))
            if i >= args.steps - tail:
                loss_sum[m.key] += loss
    wall = time.perf_counter() - t_start
    del x0_all, x1_all

    ge = torch.Generator().manual_seed(EVAL_SEED_BASE + seed)
    x0_eval = data.gaussian(args.eval_n, generator=ge)
    x1_eval = target(args.eval_n, generator=ge)
    results = {}
    for m in methods:
        ts = times[m.key][warmup:]
        res = {
            "toy": toy, "seed": seed, "method": m.key, "steps": args.steps,
            "final_loss": float(loss_sum[m.key]) / tail,
            "step_ms_median": 1e3 * statistics.median(ts) if ts else None,
            "step_ms_mean": 1e3 * statistics.fmean(ts) if ts else None,
            "step_ms_p10": 1e3 * _quantile(ts, 0.1) if ts else None,
            "step_ms_p90": 1e3 * _quantile(ts, 0.9) if ts else None,
            "timed_steps": len(ts),
            "w2": {},
        }
        if m.key == "peer-meanflow":
            flags = fm_batch[warmup:]
            jvp_t = [t for t, f in zip(ts, flags) if not f]
            fm_t = [t for t, f in zip(ts, flags) if f]
            res["step_ms_median_jvp_batches"] = 1e3 * statistics.median(jvp_t) if jvp_t else None
            res["step_ms_median_fm_batches"] = 1e3 * statistics.median(fm_t) if fm_t else None
            res["fm_batch_fraction"] = len(fm_t) / len(flags) if flags else None
        with torch.no_grad():
            for k in args.sample_steps:
                res["w2"][str(k)] = _w2(flowmaps.sample(m.flow_map, x0_eval, steps=k).x, x1_eval)
        res["sampler_check"] = sampler_check(m, x0_eval, args.sample_steps)
        results[m.key] = res
        if m.key == "peer-meanflow":
            own = {"toy": toy, "seed": seed, "method": MEANFLOW_OWN, "steps": args.steps, "w2": {}}
            with torch.no_grad():
                for k in args.sample_steps:
                    own["w2"][str(k)] = _w2(meanflow_own_sampler(m.flow_map, x0_eval, k), x1_eval)
            results[MEANFLOW_OWN] = own
    print(f"[cpu] {toy} seed {seed}: {args.steps} steps x {len(methods)} methods in {wall:.0f} s; "
          + "; ".join(f"{METHODS.get(k, k)} W2@1/2/4 " + "/".join(_f(v) for v in r["w2"].values())
                      + (f" {r['step_ms_median']:.2f} ms" if r.get("step_ms_median") else "")
                      for k, r in results.items()), file=sys.stderr, flush=True)
    return results, {m.key: m for m in methods}


def meanflow_own_sampler(flow_map, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """What ``MeanFlow.sample(steps=K)`` does for K > 1 (its ``slow_sample``): Euler on the diagonal,
    ``z <- z - (1/K) u(z, t, 0)`` for t = 1, 1 - 1/K, ...; in flowfast terms x <- x + (1/K) v_{s,s}(x),
    s = 0, 1/K, .... For K = 1 MeanFlow jumps with u(z, 1, 1), i.e. the map X_{0,1}."""
    if steps == 1:
        return flowmaps.sample(flow_map, x0, steps=1).x
    x = x0
    times = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    for t in times:
        s = torch.full((x.shape[0],), 1 - float(t), dtype=x.dtype)
        x = x + (1.0 / steps) * flow_map.v(x, s, s)
    return x


@torch.no_grad()
def sampler_check(m: Method, x0: torch.Tensor, sample_steps) -> dict:
    """Max |peer's own sampler - flowfast's map composition| on the eval points, where the peer's
    sampler takes our noise (LsdFlow: all K; MeanFlow: K = 1)."""
    out = {}
    if m.key == "peer-lsdflow":
        for k in sample_steps:
            if k == 1:
                theirs = m.wrapper.sample(batch_size=x0.shape[0], noise=x0, steps=1)
            else:
                theirs = m.wrapper.slow_sample(steps=k, batch_size=x0.shape[0], noise=x0)
            out[str(k)] = float((theirs - flowmaps.sample(m.flow_map, x0, steps=k).x).abs().max())
    elif m.key == "peer-meanflow":
        theirs = m.wrapper.sample(batch_size=x0.shape[0], noise=x0, steps=1)
        out["1"] = float((theirs - flowmaps.sample(m.flow_map, x0, steps=1).x).abs().max())
    return out


def source_fingerprints(peer) -> dict:
    """sha256 (12 hex) of the sources whose code is benchmarked: flowfast's flow maps and models
    (work in progress elsewhere: tells runs apart) and the peer's two modules."""
    import hashlib

    import flowfast

    pkg = Path(flowfast.__file__).resolve().parent
    files = sorted(pkg.glob("flowmaps/*.py")) + sorted(pkg.glob("models/*.py"))
    out = {str(f.relative_to(pkg.parent)): hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}
    root = getattr(peer, "root", None)
    for name in ("mean_flow.py", "lsd_flow.py"):
        if root and (Path(root) / name).exists():
            out[f"{PEER_PACKAGE}/{name}"] = hashlib.sha256((Path(root) / name).read_bytes()).hexdigest()[:12]
    return out


def _quantile(values, q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _w2(x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    if not bool(torch.isfinite(x).all()):
        return None  # diverged
    return wasserstein2(x, y)


def _f(v: Optional[float]) -> str:
    return "nan" if v is None else f"{v:.3f}"


# ---------------------------------------------------------------- tables

def mean_std(values) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pm(mean, std, digits: int = 3) -> str:
    if mean is None:
        return "diverged"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def summarize(runs: list[dict], args) -> dict:
    """Per (toy, method): W2 mean/std per step count and step-time statistics over seeds, plus the
    per-run time ratios (same run, interleaved) against flowfast LSD and ESD."""
    summary: dict = {}
    keys = list(args.methods) + ([MEANFLOW_OWN] if "peer-meanflow" in args.methods else [])
    for toy in args.toys:
        by_seed = {}
        for r in runs:
            if r["toy"] == toy:
                by_seed.setdefault(r["seed"], {})[r["method"]] = r
        for key in keys:
            rs = [by_seed[s][key] for s in sorted(by_seed) if key in by_seed[s]]
            if not rs:
                continue
            entry = {"toy": toy, "method": key, "seeds": [r["seed"] for r in rs], "w2": {}}
            for k in args.sample_steps:
                vals = [r["w2"].get(str(k)) for r in rs]
                m, s = mean_std(vals)
                entry["w2"][str(k)] = {"mean": m, "std": s, "per_seed": vals,
                                       "diverged": sum(v is None for v in vals)}
            if rs[0].get("step_ms_median") is not None:
                med = [r["step_ms_median"] for r in rs]
                entry["step_ms_median"] = mean_std(med)
                entry["step_ms_median_per_seed"] = med
                entry["step_ms_mean"] = mean_std([r["step_ms_mean"] for r in rs])
                for base in ("ff-lsd", "ff-esd"):
                    ratios = [by_seed[r["seed"]][key]["step_ms_median"] / by_seed[r["seed"]][base]["step_ms_median"]
                              for r in rs if base in by_seed[r["seed"]]]
                    entry[f"time_ratio_vs_{base}"] = mean_std(ratios) + (ratios,)
                if key == "peer-meanflow":
                    entry["step_ms_median_jvp_batches"] = mean_std([r["step_ms_median_jvp_batches"] for r in rs])
                    entry["step_ms_median_fm_batches"] = mean_std([r["step_ms_median_fm_batches"] for r in rs])
                    ratios = [r["step_ms_median_jvp_batches"] / by_seed[r["seed"]]["ff-lsd"]["step_ms_median"]
                              for r in rs if "ff-lsd" in by_seed[r["seed"]] and r["step_ms_median_jvp_batches"]]
                    entry["jvp_batch_time_ratio_vs_ff-lsd"] = mean_std(ratios) + (ratios,)
                entry["final_loss"] = mean_std([r["final_loss"] for r in rs])
            summary[(toy, key)] = entry
    return summary


def label(key: str) -> str:
    return "peer MeanFlow (its sampler: Euler for K > 1)" if key == MEANFLOW_OWN else METHODS[key]


def build_rows(summary: dict, args) -> list[dict]:
    rows = []
    for (toy, key), e in summary.items():
        row = {"toy": f"N→{toy}", "method": label(key)}
        for k in args.sample_steps:
            w = e["w2"][str(k)]
            cell = fmt_pm(w["mean"], w["std"])
            if w["diverged"] and w["mean"] is not None:
                cell += f" ({w['diverged']} diverged)"
            row[f"W2 {k} step" + ("s" if k > 1 else "")] = cell
        if "step_ms_median" in e:
            med, sd = e["step_ms_median"]
            row["ms/step (median)"] = f"{med:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
            row["ms/step (mean)"] = f"{e['step_ms_mean'][0]:.2f}"
            for base, col in (("ff-lsd", "time ÷ ff LSD"), ("ff-esd", "time ÷ ff ESD")):
                ratio = e.get(f"time_ratio_vs_{base}")
                row[col] = _timing.fmt_ratio(ratio[0]) if ratio and ratio[0] is not None else "—"
        else:
            row["ms/step (median)"] = row["ms/step (mean)"] = "(same training)"
            row["time ÷ ff LSD"] = row["time ÷ ff ESD"] = "—"
        row["seeds"] = len(e["seeds"])
        rows.append(row)
    return rows


def per_seed_markdown(summary: dict, args) -> str:
    rows = []
    for (toy, key), e in summary.items():
        for i, seed in enumerate(e["seeds"]):
            row = {"toy": toy, "method": label(key), "seed": seed}
            for k in args.sample_steps:
                row[f"W2 {k}"] = _f(e["w2"][str(k)]["per_seed"][i])
            rows.append(row)
    return _timing.markdown_table(rows)


def timing_markdown(summary: dict) -> str:
    rows = []
    for (toy, key), e in summary.items():
        if "step_ms_median" not in e:
            continue
        row = {"toy": toy, "method": label(key),
               "median ms per seed": ", ".join(f"{v:.2f}" for v in e["step_ms_median_per_seed"]),
               "÷ ff LSD per seed": ", ".join(f"{v:.2f}" for v in e.get("time_ratio_vs_ff-lsd", (None, None, []))[2]),
               "final loss": f"{e['final_loss'][0]:.4g}"}
        if key == "peer-meanflow":
            jvp_ratio = e.get("jvp_batch_time_ratio_vs_ff-lsd", (None,))[0]
            row["note"] = (f"JVP batches {e['step_ms_median_jvp_batches'][0]:.2f} ms"
                           + (f" ({jvp_ratio:.2f}x ff LSD)" if jvp_ratio else "")
                           + f", flow-matching batches {e['step_ms_median_fm_batches'][0]:.2f} ms (medians)"
                           if e["step_ms_median_jvp_batches"][0] and e["step_ms_median_fm_batches"][0] else "")
        rows.append(row)
    return _timing.markdown_table(rows)


def notes(args, net_desc: str, n_params: int, peer, floors: dict, checks: dict, interrupted: bool) -> list[str]:
    out = [
        f"Problem: N(0, I) → toy (`flowfast.data`), straight interpolant without noise, independent pairs. "
        f"{args.steps} steps, batch {args.batch}, Adam(lr={args.lr:g}), no EMA, no gradient clipping, float32, "
        f"CPU, torch threads {torch.get_num_threads()}; seeds {', '.join(map(str, args.seeds))}.",
        f"Same network for every method: {net_desc}, {n_params} parameters, initial weights from "
        "`torch.manual_seed(seed)` (one init deep-copied per method). Same training batches: one stream per seed "
        f"drawn up front (generator {DATA_SEED_BASE} + seed), fed to flowfast as (x0, x1) and to the peers as "
        "(noise=x0, data=x1). Each objective draws its own times (flowfast from a generator seeded with the seed, "
        "the peers from torch's / Python's global RNG, seeded with the seed).",
        "flowfast LSD / ESD: `flowmaps.LSD()` / `flowmaps.ESD(stop_gradient=\"target\")` defaults (exactly 75% of each batch on s = t, "
        "the rest uniform on s < t). Peer: `MeanFlow(MeanFlowView(net))` and `LsdFlow(net)` with their defaults "
        "(MeanFlow: 50% of batches plain flow matching, logit-normal(-0.4, 1) times, adaptive weight p = 0.5, "
        "conditional-velocity JVP target; LsdFlow: Bernoulli(0.75) diagonal per sample, both terms computed on "
        "the whole batch and masked, times clamped to [1e-3, 1 - 1e-3]).",
        "Conventions: flowfast and LsdFlow both use t=0 noise, t=1 data and X_{s,t}(x) = x + (t−s) net(x, s, t) "
        "(identity mapping). MeanFlow uses t=0 data, t=1 noise and z_r = z_t − (t−r) u(z_t, t, t−r): it trains "
        "`u(z, t, d) = −net(z, 1−t, 1−t+d)`, so all four train the same flowfast-convention net on the same "
        "problem (tests/test_flowmap_peer_parity.py checks the losses and gradients against flowfast's residuals).",
        f"W2: exact (`flowfast.metrics.wasserstein2`) between {args.eval_n} samples and {args.eval_n} data points, "
        f"the same source and data points for every method (generator {EVAL_SEED_BASE} + seed); K steps = K "
        "uniform jumps of the flow map (`flowmaps.sample`), the same computation as LsdFlow's `sample`/"
        "`slow_sample` and MeanFlow's 1-step `sample` (max |difference| on the eval points: "
        + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()) + "). "
        "'peer MeanFlow (its sampler)' is what `MeanFlow.sample(steps=K)` does: Euler on u(z, t, 0) for K > 1 "
        "(same trained nets as the row above).",
        "Reference W2 at this n: identity map W2(source, data) "
        + ", ".join(f"{t} {v['identity']:.3f}" for t, v in floors.items())
        + "; finite-sample floor W2(data, independent data) "
        + ", ".join(f"{t} {v['floor']:.3f}" for t, v in floors.items()) + ".",
        "Step time: loss + backward + Adam step, `time.perf_counter` around each step; methods interleaved "
        f"step by step (rotating order) in one process; median over the steps after the first "
        f"{min(WARMUP_STEPS, args.steps // 5)} of each run, then mean ± std over seeds. Ratios are per run "
        "(same run, same load), then averaged over seeds: > 1 means the peer is slower.",
        "Not like for like: LsdFlow computes both its diagonal and off-diagonal terms on the whole batch (about "
        "2× flowfast LSD's work for the same loss); MeanFlow's steps are bimodal (half its batches skip the JVP), "
        "so its median sits on one mode or the other: see the JVP / flow-matching split below. The objectives' "
        "time distributions and weights are each library's defaults, not matched; final losses are not "
        "comparable across objectives.",
        f"Peer: {PEER_DIST} {peer.version} (einops {peer.einops}), mean_flow.py and lsd_flow.py loaded from "
        f"their files (the package __init__ needs torchdiffeq / torchvision / x-transformers).",
    ]
    if interrupted:
        out.append("Interrupted: only the (toy, seed) runs listed finished.")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toys", nargs="+", choices=TOYS, help=f"targets (default {' '.join(DEFAULT_TOYS)})")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: all four")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per method (default {STEPS})")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {' '.join(map(str, SEEDS))})")
    p.add_argument("--eval-n", type=int, default=None, help=f"points for W2 (default {EVAL_N})")
    p.add_argument("--sample-steps", type=int, nargs="+", default=list(SAMPLE_STEPS))
    p.add_argument("--net", choices=("auto", "flowfast", "local"), default="auto",
                   help="auto: flowfast.models.FlowMapMLP when importable, else the local TwoTimeMLP")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (seconds): 60 steps, seed 0, eval-n 300; files flowmap-peer-quick-*")
    _timing.add_run_args(p, timing=False, tag_prefix=FAMILY)
    args = p.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 60
        args.seeds = args.seeds or [0]
        args.eval_n = args.eval_n or 300
    args.steps = args.steps or STEPS
    args.seeds = args.seeds or list(SEEDS)
    args.eval_n = args.eval_n or EVAL_N
    args.toys = args.toys or list(DEFAULT_TOYS)
    args.methods = args.methods or list(METHODS)
    args.threads = args.threads or 1
    if args.steps < 1 or args.batch < 4 or args.eval_n < 2 or min(args.sample_steps) < 1:
        p.error("--steps >= 1, --batch >= 4, --eval-n >= 2 and --sample-steps >= 1 required")
    return args


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        peer = load_peer()
    except ImportError as exc:
        if any(m in PEER_METHODS for m in args.methods):
            print(f"bench_flowmap_peer.py: the peer is unavailable ({exc}); running flowfast only",
                  file=sys.stderr)
            args.methods = [m for m in args.methods if m not in PEER_METHODS]
        peer = SimpleNamespace(version="not installed", einops="?", mean_flow=None, lsd_flow=None)
    else:
        peer.draws = _DrawRecorder()
        peer.mean_flow.random = peer.draws  # MeanFlow's `from random import random`: same draws, recorded
    make_net, net_desc = net_factory(args.net)
    n_params = sum(p.numel() for p in make_net().parameters())
    env = _timing.environment("cpu")
    env["versions"] = {**env.get("versions", {}), "rectified_flow_pytorch": peer.version, "einops": peer.einops}

    runs: list[dict] = []
    floors: dict = {}
    checks: dict = {}
    interrupted = False
    t_start = time.perf_counter()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for toy in args.toys:
            target = data.get_sampler(toy)
            ge = torch.Generator().manual_seed(EVAL_SEED_BASE + args.seeds[0])
            x0_eval, x1_eval = data.gaussian(args.eval_n, generator=ge), target(args.eval_n, generator=ge)
            x1_other = target(args.eval_n, generator=torch.Generator().manual_seed(FLOOR_SEED))
            floors[toy] = {"identity": wasserstein2(x0_eval, x1_eval), "floor": wasserstein2(x1_eval, x1_other)}
            for seed in args.seeds:
                results, _ = train_run(toy, seed, args, peer, make_net)
                runs.extend(results.values())
                for r in results.values():
                    for k, v in r.get("sampler_check", {}).items():
                        name = f"{'LsdFlow' if r['method'] == 'peer-lsdflow' else 'MeanFlow'} K={k}"
                        checks[name] = max(checks.get(name, 0.0), v)
    except KeyboardInterrupt:
        interrupted = True
        print("bench_flowmap_peer.py: interrupted; writing the runs finished so far", file=sys.stderr)
    if not runs:
        return 130 if interrupted else 1
    args.toys = [t for t in args.toys if any(r["toy"] == t for r in runs)]

    summary = summarize(runs, args)
    rows = build_rows(summary, args)
    family = FAMILY + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    out = _timing.write_results(
        family, rows, env, args.out,
        notes=notes(args, net_desc, n_params, peer, floors, checks, interrupted),
        extra={
            "args": vars(args),
            "settings": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "Adam", "ema": None,
                         "seeds": args.seeds, "eval_n": args.eval_n, "sample_steps": args.sample_steps,
                         "toys": args.toys, "source": "gaussian N(0, I)", "net": net_desc, "n_params": n_params,
                         "warmup_steps": min(WARMUP_STEPS, args.steps // 5), "torch_threads": torch.get_num_threads(),
                         "peer": {"dist": PEER_DIST, "version": peer.version,
                                  "loaded_from": getattr(peer, "root", None),
                                  "meanflow": "MeanFlow(MeanFlowView(net)) defaults",
                                  "lsdflow": "LsdFlow(net) defaults"}},
            "summary": list(summary.values()),
            "runs": runs,
            "reference_w2": floors,
            "source_sha256_12": source_fingerprints(peer),
            "sampler_check_max_abs_diff": checks,
            "wall_s": time.perf_counter() - t_start,
        },
        title=f"Flow maps (1/2/4 steps): flowfast LSD/ESD vs rectified-flow-pytorch MeanFlow/LsdFlow on "
              f"{env['device_name']}",
    )
    extra_md = ("\n#### W2 per seed\n\n" + per_seed_markdown(summary, args)
                + "\n\n#### Step time per seed (ms, median after warm-up)\n\n" + timing_markdown(summary) + "\n")
    with open(out["md"], "a", encoding="utf-8") as f:
        f.write(extra_md)
    print(extra_md, flush=True)
    print(f"bench_flowmap_peer.py: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
