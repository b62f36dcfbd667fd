#!/usr/bin/env python
"""Benchmark: entropic OT (log-domain Sinkhorn) and the OT-CFM coupling step.

Two tables per device:

1. ``sinkhorn``: ``flowfast.sinkhorn`` on a precomputed dense cost and on point clouds (online
   cost, no n x n matrix) against POT's ``ot.sinkhorn(method="sinkhorn_log")`` (float64 numpy and
   the torch backend on the same device), ``ot.batch.solve_batch`` (batched rows) and GeomLoss
   ``SamplesLoss("sinkhorn", backend="tensorized")``: time per solve, iterations, time per
   iteration, peak GPU memory, final marginal error, transport cost agreement.
2. ``coupling-step``: the coupling of one OT-CFM training step, ``flowfast.couplings.pair``
   against torchcfm's ``OTPlanSampler.sample_plan`` (sinkhorn and exact), from the same point clouds.

Every peer is optional ("not installed", never a crash); a peer that runs out of memory is
recorded as "OOM". flowfast's transport cost is checked against POT's float64 solver before each
case is timed; the script aborts if they disagree.

    python benchmarks/bench_sinkhorn.py                  # full grid, every available device
    python benchmarks/bench_sinkhorn.py --quick          # smoke run (about a minute on 2 cores)
    python benchmarks/bench_sinkhorn.py --device cuda --sizes 4096 16384 65536 --dims 64
"""

from __future__ import annotations

import argparse
import importlib.metadata as _metadata
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)
from _timing import free_memory, is_oom  # noqa: E402

import flowfast  # noqa: E402
from flowfast.couplings import pair  # noqa: E402
from flowfast.couplings.pairing import entropic_coupling  # noqa: E402

FAMILY = "sinkhorn"
COUPLING_FAMILY = "coupling-step"
SEED = 0
SHIFT = 1.0  # y = N(0, I) + SHIFT (every coordinate)
SIZES = (256, 1024, 4096, 16384, 65536)
DIMS = (2, 64)
BATCHES = (1, 32)
BATCH_MAX_N = 1024  # batched (B > 1) cases only up to this n
REG = 0.05  # eps = REG * max cost
TOL = 1e-5  # L1 marginal error (flowfast); POT / solve_batch use it on their own (L2) criterion
MAX_ITER = 1000
CHECK_N = 256  # size of the small instance the correctness check solves
CHECK_RTOL = 1e-3  # flowfast transport cost vs POT float64 on that instance
CPU_DENSE_MAX_N = 4096  # default caps on a CPU pass (n x n costs / run time); none on CUDA
CPU_ONLINE_MAX_N = 16384
CPU_POT_MAX_N = 4096
CALL_BUDGET_S = 60.0  # skip a method whose estimated single call is longer than this
COUPLING_SIZES = (256, 1024, 4096)
COUPLING_DIMS_CPU = (2, 64)
COUPLING_DIMS_CUDA = (2, 64, 3072)
COUPLING_BUDGET_S = 20.0
COUPLING_CHECK_N = 512
EMD_MAX_ITER = 10_000_000

# (key, table label): the order of the rows in the sinkhorn table
SOLVERS = (
    ("ff_dense", "flowfast dense"),
    ("ff_online", "flowfast online"),
    ("pot_np", "POT numpy f64"),
    ("pot_torch", "POT torch"),
    ("pot_batch", "POT solve_batch"),
    ("geomloss", "GeomLoss tensorized"),
)
LABEL = dict(SOLVERS)
FLOWFAST_KEYS = ("ff_dense", "ff_online")


class CorrectnessError(AssertionError):
    pass


# ---------------------------------------------------------------- optional peers

def _import_peers() -> tuple[dict, dict]:
    """-> (modules, why_missing). A peer that fails to import is "not installed", never a crash."""
    def solve_batch():
        from ot.batch import solve_batch  # POT >= 0.9.6

        return solve_batch

    def geomloss():
        from geomloss import SamplesLoss

        schedule = None
        for mod in ("geomloss._legacy.sinkhorn_divergence", "geomloss.sinkhorn_divergence"):
            try:
                m = __import__(mod, fromlist=["epsilon_schedule", "max_diameter"])
                schedule = (m.epsilon_schedule, m.max_diameter)
                break
            except (ImportError, AttributeError):
                continue
        return SamplesLoss, schedule

    return _timing.import_optional({
        "pot": _timing.load_pot,
        "pot_batch": solve_batch,
        "geomloss": geomloss,
        "torchcfm": _timing.load_torchcfm_plan_sampler,
        "scipy": _timing.load_scipy_lsa,
    })


def _version(dist: str) -> str:
    try:
        return _metadata.version(dist)
    except _metadata.PackageNotFoundError:
        return _timing.NOT_INSTALLED


# ---------------------------------------------------------------- inputs and helpers

@dataclass(frozen=True)
class Case:
    n: int
    d: int
    B: int = 1  # 1: one (n, d) problem (unbatched API); > 1: a (B, n, d) batch

    @property
    def key(self) -> str:
        return f"B{self.B}-n{self.n}-d{self.d}"


def make_points(n: int, d: int, B: int = 1, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y ~ N(0, I) + SHIFT, float32 on the CPU (moved to a device by the caller)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, n, d) if B > 1 else (n, d)
    x = torch.randn(shape, generator=g)
    y = torch.randn(shape, generator=g) + SHIFT
    return x, y


def batched(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t if t.dim() == ndim + 1 else t.unsqueeze(0)


def sq_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense squared-Euclidean cost, float32, same batch layout as x."""
    return torch.cdist(x, y).square_().contiguous()


def _chunk_rows(m: int, device: torch.device) -> int:
    budget = 2**26 if device.type == "cuda" else 2**23  # elements per float64 temporary
    return max(1, budget // max(1, m))


def max_sq_dist(x: torch.Tensor, y: torch.Tensor) -> float:
    """max_ij ||x_i - y_j||^2 over every problem, by row blocks (no n x n matrix)."""
    xb, yb = batched(x, 2), batched(y, 2)
    rows = _chunk_rows(yb.shape[1], xb.device)
    best = 0.0
    for b in range(xb.shape[0]):
        for i0 in range(0, xb.shape[1], rows):
            best = max(best, float(torch.cdist(xb[b, i0:i0 + rows], yb[b]).square_().amax()))
    return best


def _cost_block(C: Optional[torch.Tensor], x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                i0: int, i1: int) -> torch.Tensor:
    if C is not None:
        return C[i0:i1].double()
    xc, yd = x[i0:i1].double(), y.double()
    return ((xc * xc).sum(1)[:, None] + (yd * yd).sum(1)[None, :] - 2.0 * xc @ yd.T).clamp_min_(0.0)


@torch.no_grad()
def potential_stats(f: torch.Tensor, g: torch.Tensor, eps: float, C: Optional[torch.Tensor] = None,
                    x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None) -> tuple[float, float, float]:
    """One problem, uniform weights, P_ij = exp((f_i + g_j - C_ij) / eps) / (n m), in float64 by
    row blocks. Returns (L1 row-marginal error, L1 column-marginal error, <P, C>)."""
    n, m = f.shape[0], g.shape[0]
    rows = _chunk_rows(m, f.device)
    fd, gd = f.double(), g.double()
    shift = -math.log(n) - math.log(m)
    row = torch.empty(n, dtype=torch.float64, device=f.device)
    col = torch.zeros(m, dtype=torch.float64, device=f.device)
    cost = torch.zeros((), dtype=torch.float64, device=f.device)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        Cc = _cost_block(C, x, y, i0, i1)
        P = ((fd[i0:i1, None] + gd[None, :] - Cc) / eps + shift).exp_()
        row[i0:i1] = P.sum(1)
        col += P.sum(0)
        cost += (P * Cc).sum()
    return float((row - 1.0 / n).abs().sum()), float((col - 1.0 / m).abs().sum()), float(cost)


@torch.no_grad()
def plan_stats(P: Any, C: Any) -> tuple[float, float, float]:
    """One dense plan (numpy or torch), uniform weights: (row L1 error, column L1 error, <P, C>)."""
    P = torch.from_numpy(P) if isinstance(P, np.ndarray) else P
    C = torch.from_numpy(C) if isinstance(C, np.ndarray) else C
    n, m = P.shape
    rows = _chunk_rows(m, P.device)
    row = torch.empty(n, dtype=torch.float64, device=P.device)
    col = torch.zeros(m, dtype=torch.float64, device=P.device)
    cost = torch.zeros((), dtype=torch.float64, device=P.device)
    for i0 in range(0, n, rows):
        Pc = P[i0:i0 + rows].double()
        row[i0:i0 + rows] = Pc.sum(1)
        col += Pc.sum(0)
        cost += (Pc * C[i0:i0 + rows].double()).sum()
    return float((row - 1.0 / n).abs().sum()), float((col - 1.0 / m).abs().sum()), float(cost)


# is_oom, free_memory: benchmarks/_timing.py


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, Optional[int], list[str]]:
    """One untimed-harness call: (output, wall seconds, peak extra GPU bytes or None, warnings)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    msgs = []
    for w in caught:
        text = str(w.message).split("\n")[0][:100]
        if text not in msgs:
            msgs.append(text)
    return out, seconds, peak, msgs


def fmt_status(v: Any) -> str:
    return _timing.fmt_ms(v["median_s"]) if isinstance(v, dict) else str(v)


def fmt_sci(v: Optional[float]) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.1e}"


def fmt_iters(iters: Optional[list], tag: str = "") -> str:
    if not iters:
        return "n/a"
    lo, hi = min(iters), max(iters)
    s = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return s + (f" ({tag})" if tag else "")


def fmt_mib(b: Optional[int]) -> str:
    if b is None:
        return "n/a"
    mib = b / 2**20
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den <= 0:
        return None
    return num / den


# ---------------------------------------------------------------- one method's measurement

@dataclass
class Result:
    key: str
    status: Optional[str] = None  # None: measured; otherwise why not ("OOM", "not installed", ...)
    timing: Optional[dict] = None
    iters: Optional[list] = None  # iterations per problem
    iters_tag: str = ""
    peak_bytes: Optional[int] = None
    marg_err: Optional[float] = None  # max over problems of max(row L1, column L1) error
    costs: Optional[list] = None  # transport cost per problem
    extra: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is None and self.timing is not None

    @property
    def seconds(self) -> Optional[float]:
        return self.timing["median_s"] if self.ok else None

    @property
    def per_iter(self) -> Optional[float]:
        if not self.ok or not self.iters:
            return None
        return self.timing["median_s"] / (sum(self.iters) / len(self.iters))

    def as_json(self) -> dict:
        return {
            "status": self.status or "ok", "timing": self.timing, "iters": self.iters, "iters_tag": self.iters_tag,
            "time_per_iter_s": self.per_iter, "peak_extra_bytes": self.peak_bytes, "marginal_error": self.marg_err,
            "costs": self.costs, "extra": self.extra, "notes": self.notes,
        }


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.peers, self.missing = _import_peers()
        self.history: dict[tuple, list] = {}  # estimate key -> [(n, seconds of one call)]
        self.host_cache: dict[tuple, Result] = {}  # host-side results (POT numpy), reused across passes
        self.checked: set = set()
        self.failed: list[str] = []  # flowfast errors (recorded in the table, exit status 1 at the end)

    # --- budget estimates
    def estimate(self, key: tuple, n: int, power: float) -> Optional[float]:
        done = [(n0, t) for n0, t in self.history.get(key, []) if n0 <= n]
        if not done:
            return None
        n0, t = max(done)
        return t * (n / n0) ** power

    def within_budget(self, est_key: tuple, n: int, power: float = 2.0, budget: Optional[float] = None) -> bool:
        est = self.estimate(est_key, n, power)
        return est is None or est <= (self.args.call_budget if budget is None else budget)

    def measure(self, key: str, fn: Callable[[], Any], post: Callable[[Any], dict], device: torch.device,
                est_key: tuple, n: int, budget: float, power: float = 2.0, is_flowfast: bool = False,
                timed: Optional[Callable[[], Any]] = None) -> Result:
        """First call of ``fn`` (warnings, peak memory, ``post`` -> Result fields), then timed repeats of
        ``timed`` (default ``fn``); OOM -> status "OOM"; a first call slower than --max-time or the
        budget is the timing itself."""
        est = self.estimate(est_key, n, power)
        if est is not None and est > budget:
            return Result(key, status=f"skipped (est. {est:.3g} s/call > {budget:g} s budget)")
        res = Result(key)
        try:
            out, seconds, peak, msgs = first_call(fn, device)
            info = post(out)
            del out
        except CorrectnessError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of a peer is recorded, never fatal
            oom = is_oom(exc)
            first_line = str(exc).splitlines()[0][:120] if str(exc) else ""
            text = "OOM" if oom else f"error: {exc.__class__.__name__}: {first_line}"
            del exc
            free_memory()
            if is_flowfast and not oom:
                self.failed.append(f"{key} n={n}: {text}")
            return Result(key, status=text)
        self.history.setdefault(est_key, []).append((n, seconds))
        res.peak_bytes = peak
        res.notes += [f"warned: {m}" for m in msgs]
        for k, v in info.items():
            if k == "extra":
                res.extra.update(v)
            else:
                setattr(res, k, v)
        if seconds >= self.args.max_time or seconds >= budget:
            res.timing = {"median_s": seconds, "min_s": seconds, "max_s": seconds, "repeats": 1, "single_run": True}
            res.notes.append("one call timed (slow)")
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res.timing = _timing.time_fn(timed or fn, device=device, warmup=0,
                                                 min_time=self.args.min_time, max_time=self.args.max_time)
            except Exception as exc:  # noqa: BLE001
                text = "OOM" if is_oom(exc) else f"error while timing: {exc.__class__.__name__}"
                del exc
                free_memory()
                res.status = text
        free_memory()
        return res

    # --- correctness (abort loudly)
    def check_flowfast(self, case: Case, device: torch.device, run_dense: bool, run_online: bool) -> None:
        n_small = min(case.n, CHECK_N)
        key = (n_small, case.d, case.B, str(device), run_dense, run_online)
        if key in self.checked:
            return
        x, y = make_points(n_small, case.d, case.B, seed=SEED + 1)
        C64 = batched(sq_cost(x.double(), y.double()), 2).numpy()
        eps = REG * float(C64.max())
        if "pot" in self.peers:
            ot = self.peers["pot"]
            a = ot.unif(n_small)
            ref = []
            for Ck in C64:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    P = ot.sinkhorn(a, a, Ck, reg=eps, method="sinkhorn_log", stopThr=1e-10, numItermax=10_000)
                ref.append(float((P * Ck).sum()))
            ref_name = "POT numpy float64 sinkhorn_log"
        else:  # no POT: flowfast's float64 pure-torch reference solver
            r = flowfast.sinkhorn(torch.from_numpy(C64), eps=eps, tol=1e-10, max_iter=10_000, backend="torch")
            ref = [float(c) for c in r.cost.reshape(-1)]
            ref_name = "flowfast's float64 torch reference (POT not installed)"
        ref = np.array(ref)
        xd, yd = x.to(device), y.to(device)
        calls = []
        if run_dense:
            Cd = sq_cost(xd, yd)
            calls.append(("flowfast dense", lambda: flowfast.sinkhorn(Cd, eps=eps, tol=self.args.tol,
                                                                      max_iter=self.args.max_iter)))
        if run_online:
            calls.append(("flowfast online", lambda: flowfast.sinkhorn(x=xd, y=yd, eps=eps, tol=self.args.tol,
                                                                       max_iter=self.args.max_iter)))
        for label, call in calls:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = call().cost.double().reshape(-1).cpu().numpy()
            rel = np.abs(got - ref) / np.abs(ref)
            if not np.all(rel <= CHECK_RTOL):
                worst = int(np.argmax(rel))
                raise CorrectnessError(
                    f"{label} on {device}: transport cost {got[worst]!r} vs {ref_name} {ref[worst]!r} "
                    f"(rel. diff {rel[worst]:.2e} > {CHECK_RTOL}) on the check instance n={n_small}, d={case.d}, "
                    f"B={case.B}, problem {worst}, eps={eps:.4g}")
        self.checked.add(key)

    # --- one case of the sinkhorn table
    def solver_case(self, case: Case, device: torch.device) -> dict[str, Result]:
        args = self.args
        dev_s = device.type
        tol, max_iter, budget = args.tol, args.max_iter, args.call_budget
        B, n = case.B, case.n
        res: dict[str, Result] = {}

        def cap(limit: Optional[int]) -> Optional[str]:
            return f"skipped (n > {limit} on {dev_s})" if limit and n > limit else None

        dense_cap, online_cap = cap(args.dense_max_n_for[dev_s]), cap(args.online_max_n_for[dev_s])
        pot_cap = args.pot_max_n_for["host"]
        if dense_cap and online_cap and (case.key, "pot_np") not in self.host_cache and pot_cap and n > pot_cap:
            # nothing runs: don't even scan the n x n distances for eps
            res = {k: Result(k, status=dense_cap) for k in ("ff_dense", "pot_torch", "geomloss")}
            res["ff_online"] = Result("ff_online", status=online_cap)
            res["pot_batch"] = Result("pot_batch", status="n/a (B=1)" if B == 1 else dense_cap)
            res["pot_np"] = Result("pot_np", status=f"skipped (n > {pot_cap})")
            return res
        x_cpu, y_cpu = make_points(case.n, case.d, case.B)
        x, y = x_cpu.to(device), y_cpu.to(device)
        eps = REG * max_sq_dist(x, y)

        def within(k: str) -> bool:
            return self.within_budget((k, dev_s, case.d, B), n)

        run_dense = dense_cap is None and within("ff_dense")
        run_online = online_cap is None and within("ff_online")
        if run_dense or run_online:
            self.check_flowfast(case, device, run_dense, run_online)

        def ff_post(r) -> dict:
            f, g = batched(r.f, 1), batched(r.g, 1)
            stats = [potential_stats(f[k], g[k], eps, C=None if Cd is None else batched(Cd, 2)[k],
                                     x=batched(x, 2)[k], y=batched(y, 2)[k]) for k in range(B)]
            return {"iters": [int(i) for i in r.n_iter.reshape(-1)],
                    "marg_err": max(max(s[0], s[1]) for s in stats), "costs": [s[2] for s in stats],
                    "extra": {"flowfast_marginal_error": [float(e) for e in r.marginal_error.reshape(-1)],
                              "flowfast_cost": [float(c) for c in r.cost.reshape(-1)]}}

        # point-cloud methods first (no n x n matrix held while they run)
        Cd = None
        res["ff_online"] = Result("ff_online", status=online_cap) if online_cap else self.measure(
            "ff_online", lambda: flowfast.sinkhorn(x=x, y=y, eps=eps, tol=tol, max_iter=max_iter), ff_post, device,
            ("ff_online", dev_s, case.d, B), n, budget, is_flowfast=True)
        res["geomloss"] = self.geomloss(case, x, y, eps, device, cap(args.dense_max_n_for[dev_s]))

        # dense methods on the device
        dense_keys = ("ff_dense", "pot_torch", "pot_batch")
        want_dense = dense_cap is None and (
            run_dense or ("pot" in self.peers and within("pot_torch"))
            or (B > 1 and "pot_batch" in self.peers and within("pot_batch")))
        if want_dense:
            try:
                Cd = sq_cost(x, y)
            except Exception as exc:  # noqa: BLE001
                status = "OOM (cost matrix)" if is_oom(exc) else f"error: {exc.__class__.__name__}"
                del exc
                free_memory()
                for k in dense_keys:
                    res[k] = Result(k, status=status)
        if Cd is not None:
            res["ff_dense"] = self.measure(
                "ff_dense", lambda: flowfast.sinkhorn(Cd, eps=eps, tol=tol, max_iter=max_iter), ff_post, device,
                ("ff_dense", dev_s, case.d, B), n, budget, is_flowfast=True)
            res["pot_torch"] = self.pot_torch(case, Cd, eps, device)
            res["pot_batch"] = self.pot_batch(case, Cd, eps, device)
        for k in dense_keys:
            why = "n/a (B=1)" if k == "pot_batch" and B == 1 else dense_cap or f"skipped (est. > {budget:g} s budget)"
            res.setdefault(k, Result(k, status=why))
        Cd = None
        free_memory()

        # host-side POT numpy (float64), identical for every device pass
        res["pot_np"] = self.pot_numpy(case, x_cpu, y_cpu, eps)
        return res

    def pot_numpy(self, case: Case, x_cpu: torch.Tensor, y_cpu: torch.Tensor, eps: float) -> Result:
        hkey = (case.key, "pot_np")
        if hkey in self.host_cache:
            return self.host_cache[hkey]
        limit = self.args.pot_max_n_for["host"]
        if "pot" not in self.peers:
            r = Result("pot_np", status="not installed")
        elif limit and case.n > limit:
            r = Result("pot_np", status=f"skipped (n > {limit})")
        elif not self.within_budget(("pot_np", "cpu", case.d, case.B), case.n):
            est = self.estimate(("pot_np", "cpu", case.d, case.B), case.n, 2)
            r = Result("pot_np", status=f"skipped (est. {est:.3g} s/call > {self.args.call_budget:g} s budget)")
        else:
            ot = self.peers["pot"]
            try:
                M = batched(sq_cost(x_cpu, y_cpu), 2).double().numpy()  # made outside the timed region
            except Exception as exc:  # noqa: BLE001
                r = Result("pot_np", status="OOM (host cost matrix)" if is_oom(exc) else f"error: {exc!r}"[:120])
                del exc
                free_memory()
                self.host_cache[hkey] = r
                return r
            a = ot.unif(case.n)
            kw = dict(reg=eps, method="sinkhorn_log", stopThr=self.args.tol, numItermax=self.args.max_iter)

            def once(log: bool):
                return [ot.sinkhorn(a, a, Mk, log=log, **kw) for Mk in M]

            def post(out) -> dict:
                stats = [plan_stats(P, Mk) for (P, _), Mk in zip(out, M)]
                return {"iters": [int(lg["niter"]) + 1 for _, lg in out],
                        "marg_err": max(max(s[0], s[1]) for s in stats), "costs": [s[2] for s in stats]}

            # first call with log=True (iteration counts), timed calls without the log
            r = self.measure("pot_np", lambda: once(True), post, torch.device("cpu"),
                             ("pot_np", "cpu", case.d, case.B), case.n, self.args.call_budget,
                             timed=lambda: once(False))
            del M
        self.host_cache[hkey] = r
        return r

    def pot_torch(self, case: Case, Cd: torch.Tensor, eps: float, device: torch.device) -> Result:
        if "pot" not in self.peers:
            return Result("pot_torch", status="not installed")
        ot = self.peers["pot"]
        Cb = batched(Cd, 2)
        a = torch.full((case.n,), 1.0 / case.n, dtype=Cd.dtype, device=device)
        kw = dict(reg=eps, method="sinkhorn_log", stopThr=self.args.tol, numItermax=self.args.max_iter)

        def post(out) -> dict:
            stats = [plan_stats(P, Ck) for (P, _), Ck in zip(out, Cb)]
            return {"iters": [int(lg["niter"]) + 1 for _, lg in out],
                    "marg_err": max(max(s[0], s[1]) for s in stats), "costs": [s[2] for s in stats]}

        return self.measure("pot_torch", lambda: [ot.sinkhorn(a, a, Ck, log=True, **kw) for Ck in Cb], post,
                            device, ("pot_torch", device.type, case.d, case.B), case.n, self.args.call_budget,
                            timed=lambda: [ot.sinkhorn(a, a, Ck, **kw) for Ck in Cb])

    def pot_batch(self, case: Case, Cd: torch.Tensor, eps: float, device: torch.device) -> Result:
        if case.B == 1:
            return Result("pot_batch", status="n/a (B=1)")
        if "pot_batch" not in self.peers:
            return Result("pot_batch", status="not installed")
        solve_batch = self.peers["pot_batch"]

        def call():
            return solve_batch(Cd, reg=eps, max_iter=self.args.max_iter, tol=self.args.tol, method="log_sinkhorn",
                               grad="detach")

        def post(out) -> dict:
            stats = [plan_stats(out.plan[k], Cd[k]) for k in range(case.B)]
            it = int(out.log["n_iter"]) + 1 if getattr(out, "log", None) and "n_iter" in out.log else None
            return {"iters": [it] * case.B if it else None,
                    "marg_err": max(max(s[0], s[1]) for s in stats), "costs": [s[2] for s in stats]}

        return self.measure("pot_batch", call, post, device, ("pot_batch", device.type, case.d, case.B), case.n,
                            self.args.call_budget)

    def geomloss(self, case: Case, x: torch.Tensor, y: torch.Tensor, eps: float, device: torch.device,
                 capped: Optional[str]) -> Result:
        if "geomloss" not in self.peers:
            return Result("geomloss", status="not installed")
        if capped:  # tensorized = two dense n x n costs
            return Result("geomloss", status=capped)
        SamplesLoss, schedule = self.peers["geomloss"]
        blur = math.sqrt(eps / 2.0)  # geomloss: cost |x-y|^2 / 2, eps = blur^2  <=>  cost |x-y|^2, eps
        loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=self.args.geomloss_scaling, debias=False,
                           potentials=True, backend="tensorized")
        iters = None
        if schedule is not None:
            eps_list, max_diameter = schedule
            D = x.shape[-1]
            iters = len(eps_list(2, max_diameter(x.reshape(-1, D), y.reshape(-1, D)), blur,
                                 self.args.geomloss_scaling)) + 2  # + initialization + final extrapolation

        def post(out) -> dict:
            F, G = out
            F = F.reshape(case.B, case.n)
            G = G.reshape(case.B, case.n)
            xb, yb = batched(x, 2), batched(y, 2)
            stats = [potential_stats(2.0 * F[k], 2.0 * G[k], eps, x=xb[k], y=yb[k]) for k in range(case.B)]
            return {"iters": [iters] * case.B if iters else None, "iters_tag": "fixed schedule",
                    "marg_err": max(max(s[0], s[1]) for s in stats), "costs": [s[2] for s in stats]}

        return self.measure("geomloss", lambda: loss(x, y), post, device, ("geomloss", device.type, case.d, case.B),
                            case.n, self.args.call_budget)

    # --- one case of the coupling table
    def coupling_case(self, n: int, d: int, device: torch.device) -> list[dict]:
        args = self.args
        x0c, x1c = make_points(n, d)
        x0, x1 = x0c.to(device), x1c.to(device)
        self.check_coupling(n, d, device)
        budget = args.coupling_budget
        M = sq_cost(x0, x1)
        Mmax = float(M.max())
        cache: dict[str, float] = {}  # untimed optimum of the exact problem, shared by the exact rows
        rows = []

        def pairs_cost(out) -> float:
            a, b = out[0], out[1]
            return float(((a.double() - b.double()) ** 2).reshape(a.shape[0], -1).sum(1).mean())

        methods: list[tuple[str, str, str, Callable[[], Any]]] = [
            ("flowfast pair", "sinkhorn", "ff", lambda: pair(x0, x1, method="sinkhorn", reg=REG, replace=True)),
            ("flowfast pair", "exact", "ff", lambda: pair(x0, x1, method="exact", replace=True)),
        ]
        from flowfast.compat.torchcfm import OTPlanSampler as FFSampler

        ff_s = FFSampler(method="sinkhorn", reg=REG, normalize_cost=True)
        ff_e = FFSampler(method="exact")
        methods += [("flowfast.compat OTPlanSampler", "sinkhorn", "compat", lambda: ff_s.sample_plan(x0, x1)),
                    ("flowfast.compat OTPlanSampler", "exact", "compat", lambda: ff_e.sample_plan(x0, x1))]
        if "torchcfm" in self.peers:
            TS = self.peers["torchcfm"]
            t_s = TS(method="sinkhorn", reg=REG, normalize_cost=True)
            t_e = TS(method="exact")
            methods += [("torchcfm OTPlanSampler", "sinkhorn", "torchcfm", lambda: t_s.sample_plan(x0, x1)),
                        ("torchcfm OTPlanSampler", "exact", "torchcfm", lambda: t_e.sample_plan(x0, x1))]

        results: dict[tuple[str, str], Result] = {}
        for label, method, who, fn in methods:
            power = 3.0 if method == "exact" else 2.0
            r = self.measure(f"{who}:{method}", fn, lambda out: {"extra": {"pairs_cost": pairs_cost(out)}}, device,
                             ("coupling", who, method, device.type, d), n, budget, power=power,
                             is_flowfast=who != "torchcfm")
            # untimed: the plan behind the pairs (cost, iterations)
            if r.ok:
                try:
                    self.coupling_plan_info(r, who, method, x0, x1, M, Mmax, cache)
                except Exception as exc:  # noqa: BLE001
                    r.notes.append(f"plan info failed: {exc.__class__.__name__}")
                    del exc
                    free_memory()
            results[(who, method)] = r
        if "torchcfm" not in self.peers:
            for method in ("sinkhorn", "exact"):
                results[("torchcfm", method)] = Result(f"torchcfm:{method}", status="not installed")
                methods.append(("torchcfm OTPlanSampler", method, "torchcfm", None))
        del M
        free_memory()

        for label, method, who, _ in methods:
            r = results[(who, method)]
            base = results[("ff", method)]
            rows.append({"raw": r, "n": n, "d": d, "method": method, "implementation": label,
                         "ratio": ratio(r.seconds, base.seconds) if who != "ff" else None})
        return rows

    def coupling_plan_info(self, r: Result, who: str, method: str, x0, x1, M: torch.Tensor, Mmax: float,
                           cache: dict) -> None:
        n = M.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "exact":
                if "exact" not in cache:
                    cols = flowfast.linear_assignment(M)
                    cache["exact"] = float(M.double()[torch.arange(n, device=M.device), cols].sum() / n)
                r.extra["plan_cost"] = cache["exact"]
                if who == "torchcfm":
                    P = self.peers["torchcfm"](method="exact").get_map(x0, x1)
                    r.extra["plan_cost"] = float((torch.from_numpy(P) * M.double().cpu()).sum())
                return
            if who == "torchcfm":
                ot = self.peers["pot"]
                a = ot.unif(n)
                Mn = (M / M.max()).detach().cpu().numpy()
                P, log = ot.sinkhorn(a, a, Mn, reg=REG, log=True)
                r.iters, r.marg_err = [int(log["niter"]) + 1], max(plan_stats(P, Mn)[:2])
                r.extra["plan_cost"] = float((torch.from_numpy(P).double() * M.double().cpu()).sum())
                return
            if who == "compat":
                s = flowfast.sinkhorn(M / Mmax, eps=REG)
            else:
                s = entropic_coupling(x0, x1, REG, None)
            r.iters = [int(s.n_iter)]
            r.marg_err = float(s.marginal_error)
            r.extra["plan_cost"] = float(s.cost) * (Mmax if who == "compat" else 1.0)

    def check_coupling(self, n: int, d: int, device: torch.device) -> None:
        """flowfast's entropic plan cost vs POT float64 (rtol 1e-3) and its exact pairing vs the optimum
        (rtol 1e-4) on a small instance of the same kind; aborts loudly otherwise."""
        n_s = min(n, COUPLING_CHECK_N)
        key = ("coupling", n_s, d, str(device))
        if key in self.checked:
            return
        x0, x1 = make_points(n_s, d, seed=SEED + 2)
        M64 = sq_cost(x0.double(), x1.double()).numpy()
        x0d, x1d = x0.to(device), x1.to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got_s = float(entropic_coupling(x0d, x1d, REG, None).cost)
            _, _, (i, j) = pair(x0d, x1d, method="exact")
        got_e = float(M64[i.cpu().numpy(), j.cpu().numpy()].sum() / n_s)
        if "pot" in self.peers:
            ot = self.peers["pot"]
            a = ot.unif(n_s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                P = ot.sinkhorn(a, a, M64, reg=REG * M64.max(), method="sinkhorn_log", stopThr=1e-10,
                                numItermax=10_000)
                ref_s = float((P * M64).sum())
                ref_e = float((ot.emd(a, a, M64, numItermax=EMD_MAX_ITER) * M64).sum())
        else:
            r = flowfast.sinkhorn(torch.from_numpy(M64), eps=REG * float(M64.max()), tol=1e-10, max_iter=10_000,
                                  backend="torch")
            ref_s = float(r.cost)
            if "scipy" in self.peers:
                rr, cc = self.peers["scipy"](M64)
                ref_e = float(M64[rr, cc].sum() / n_s)
            else:
                ref_e = got_e  # no independent exact solver installed: nothing to compare with
        if abs(got_s - ref_s) > CHECK_RTOL * abs(ref_s):
            raise CorrectnessError(f"pair(method='sinkhorn') plan cost {got_s!r} vs POT float64 {ref_s!r} "
                                   f"(n={n_s}, d={d}, {device}; rtol {CHECK_RTOL})")
        if abs(got_e - ref_e) > 1e-4 * abs(ref_e):
            raise CorrectnessError(f"pair(method='exact') pairing cost {got_e!r} vs the optimum {ref_e!r} "
                                   f"(n={n_s}, d={d}, {device}; rtol 1e-4)")
        self.checked.add(key)


# ---------------------------------------------------------------- tables

SOLVER_COLUMNS = ["n", "d", "B", "solver", "ms / solve", "iters", "ms / iter", "peak MiB", "marg. err",
                  "Δcost", "/ ff dense (solve)", "/ ff dense (iter)", "/ ff online (solve)", "/ ff online (iter)",
                  "notes"]


def solver_rows(case: Case, res: dict[str, Result], device: torch.device) -> tuple[list[dict], list[dict]]:
    ref = None
    for k in ("pot_np", "ff_dense", "ff_online"):
        if res[k].ok and res[k].costs:
            ref = (k, np.array(res[k].costs))
            break
    dense, online = res["ff_dense"], res["ff_online"]
    rows, raws = [], []
    for key, label in SOLVERS:
        r = res[key]
        dcost = None
        if ref is not None and r.ok and r.costs and key != ref[0]:
            dcost = float(np.max(np.abs(np.array(r.costs) - ref[1]) / np.abs(ref[1])))
        notes = list(r.notes)
        if dcost is not None and ref[0] != "pot_np":
            notes.append(f"Δcost vs {LABEL[ref[0]]}")
        if key in FLOWFAST_KEYS and dcost is not None and dcost > CHECK_RTOL:
            notes.append(f"WARNING: flowfast cost off by more than {CHECK_RTOL:g}")
        if key == "pot_np" and device.type == "cuda" and r.ok:
            notes.append("host CPU")
        row = {
            "n": case.n, "d": case.d, "B": case.B, "solver": label,
            "ms / solve": fmt_status(r.timing) if r.ok else (r.status or "—"),
            "iters": fmt_iters(r.iters, r.iters_tag) if r.ok else "—",
            "ms / iter": _timing.fmt_ms(r.per_iter) if r.per_iter is not None else "—",
            "peak MiB": fmt_mib(r.peak_bytes) if r.ok else "—",
            "marg. err": fmt_sci(r.marg_err) if r.ok else "—",
            "Δcost": "ref" if ref is not None and key == ref[0] else fmt_sci(dcost),
            "/ ff dense (solve)": _timing.fmt_ratio(ratio(r.seconds, dense.seconds)),
            "/ ff dense (iter)": _timing.fmt_ratio(ratio(r.per_iter, dense.per_iter)),
            "/ ff online (solve)": _timing.fmt_ratio(ratio(r.seconds, online.seconds)),
            "/ ff online (iter)": _timing.fmt_ratio(ratio(r.per_iter, online.per_iter)),
            "notes": "; ".join(notes),
        }
        raw = {"n": case.n, "d": case.d, "B": case.B, "device": str(device), "solver": key, "label": label,
               **r.as_json(), "rel_cost_diff": dcost, "cost_reference": ref[0] if ref else None,
               "ratio_over_ff_dense_solve": ratio(r.seconds, dense.seconds),
               "ratio_over_ff_dense_iter": ratio(r.per_iter, dense.per_iter),
               "ratio_over_ff_online_solve": ratio(r.seconds, online.seconds),
               "ratio_over_ff_online_iter": ratio(r.per_iter, online.per_iter)}
        rows.append(row)
        raws.append(raw)
    return rows, raws


COUPLING_COLUMNS = ["n", "d", "method", "implementation", "ms / step", "/ ff pair", "iters", "marg. err",
                    "plan cost", "pairs E‖x0−x1‖²", "notes"]


def coupling_table_rows(items: list[dict], device: torch.device) -> tuple[list[dict], list[dict]]:
    rows, raws = [], []
    for it in items:
        r: Result = it["raw"]
        rows.append({
            "n": it["n"], "d": it["d"], "method": it["method"], "implementation": it["implementation"],
            "ms / step": fmt_status(r.timing) if r.ok else (r.status or "—"),
            "/ ff pair": _timing.fmt_ratio(it["ratio"]),
            "iters": fmt_iters(r.iters) if r.ok and r.iters else "—",
            "marg. err": fmt_sci(r.marg_err) if r.ok else "—",
            "plan cost": f"{r.extra['plan_cost']:.5g}" if r.ok and "plan_cost" in r.extra else "—",
            "pairs E‖x0−x1‖²": f"{r.extra['pairs_cost']:.5g}" if r.ok and "pairs_cost" in r.extra else "—",
            "notes": "; ".join(r.notes),
        })
        raws.append({"n": it["n"], "d": it["d"], "device": str(device), "method": it["method"],
                     "implementation": it["implementation"], "key": r.key, **r.as_json(),
                     "ratio_over_ff_pair": it["ratio"]})
    return rows, raws


def solver_notes(runner: Runner, device: torch.device) -> list[str]:
    a = runner.args
    out = [
        "Times are medians in ms (adaptive repeats, see `benchmarks/_timing.py`); a call slower than "
        f"`--max-time` ({a.max_time:g} s) is timed once. Ratios are row time / flowfast time: > 1 means flowfast "
        "is faster. `/ ff … (iter)` divides times per iteration (solvers need different iteration counts).",
        f"Inputs: x ~ N(0, I), y ~ N(0, I) + {SHIFT:g} (n × d, float32, seed {SEED}); uniform weights; "
        f"C = ‖x−y‖² (`torch.cdist(x, y)**2`); eps = {REG:g} · max C (one eps per case); tol = {a.tol:g}, "
        f"max_iter = {a.max_iter} for every solver.",
        "flowfast dense: `flowfast.sinkhorn(C, eps=eps, tol=tol, max_iter=max_iter)` with C precomputed outside "
        "the timed region (eps-scaling on, convergence checked every 5 iterations; stops when the L1 column-marginal error "
        "≤ tol). flowfast online: `flowfast.sinkhorn(x=x, y=y, ...)`, cost computed on the fly. Batched rows: "
        "one call on (B, n, n) / (B, n, d).",
        "POT numpy f64: `ot.sinkhorn(a, b, M, reg=eps, method=\"sinkhorn_log\", stopThr=tol, numItermax=max_iter)` "
        "on a float64 numpy copy of C (host CPU, single-threaded numpy); POT torch: the same on the float32 "
        "tensor on the device. POT stops when the L2 norm of its marginal error < tol, tested every 10 "
        "iterations, without eps-scaling. Batched rows: a Python loop over the B problems. Iterations = "
        "log['niter'] + 1, from a first call with log=True; timed calls run without the log.",
        "POT solve_batch (batched rows only): `ot.batch.solve_batch(C, reg=eps, max_iter, tol, "
        "method=\"log_sinkhorn\", grad=\"detach\")` on the (B, n, n) tensor (stops on the max over the batch "
        "of the L2 row-marginal error).",
        f"GeomLoss: `SamplesLoss(\"sinkhorn\", p=2, blur=sqrt(eps/2), scaling={a.geomloss_scaling:g}, "
        "debias=False, potentials=True, backend=\"tensorized\")(x, y)`. GeomLoss's cost is ‖x−y‖²/2, so "
        "blur² = eps/2 gives the same plan; its potentials are doubled to compare. It runs a fixed "
        "eps-annealing schedule (no tolerance), with symmetric (averaged) updates: its iteration count is "
        "the schedule length + 2 and its marginal error is whatever the schedule reaches; compare it per "
        "iteration. Tensorized = it builds C(x,y) and C(y,x) itself (counted in its peak memory).",
        "Batched rows (B > 1): ms / solve is one call solving all B problems (flowfast, solve_batch, GeomLoss: "
        "one batched call; POT numpy / torch: the loop). iters: iterations per problem (min–max over the "
        "batch); ms / iter = ms / solve ÷ mean iterations, i.e. one sweep over all B problems.",
        "marg. err: max over problems of max(L1 row error, L1 column error) of the returned plan, recomputed "
        "in float64 from each solver's output (potentials or plan) outside the timed region. Δcost: max "
        "relative difference of the transport cost <P, C> to POT numpy f64 (or to flowfast dense / online "
        "where POT was not run, as noted).",
        f"Correctness first: before each case, flowfast dense and online solve a small instance of the same "
        f"kind (n ≤ {CHECK_N}, same d and B) and their transport cost must match POT numpy float64 "
        f"(stopThr 1e-10) within rtol {CHECK_RTOL:g}; the script aborts otherwise.",
    ]
    if device.type == "cuda":
        out.append("peak MiB: `torch.cuda.max_memory_allocated` during the first call minus the memory allocated "
                   "before it (inputs x, y and C excluded; returned plans included). POT numpy runs on the host "
                   "CPU (ratios against the GPU kernels).")
    else:
        out.append("peak MiB: n/a on the CPU (allocations inside C++ kernels are not visible to tracemalloc).")
    caps = []
    dn, on, pn = a.dense_max_n_for[device.type], a.online_max_n_for[device.type], a.pot_max_n_for["host"]
    if dn:
        caps.append(f"dense-cost methods (flowfast dense, POT torch, solve_batch, GeomLoss tensorized) skipped for "
                    f"n > {dn}")
    if on:
        caps.append(f"flowfast online skipped for n > {on}")
    if pn:
        caps.append(f"POT numpy skipped for n > {pn}")
    if caps:
        out.append("On this device: " + "; ".join(caps) + " (memory / run time; override with --dense-max-n, "
                   "--online-max-n, --pot-max-n).")
    out.append(f"A method is skipped when its estimated single call (from its last smaller n, × (n/n')²) exceeds "
               f"{a.call_budget:g} s (`--call-budget`). OOM = out of memory on that call (recorded, not fatal).")
    for key, why in runner.missing.items():
        if key in ("pot", "pot_batch", "geomloss"):
            out.append(f"{key}: {why}")
    return out


def coupling_notes(runner: Runner, device: torch.device) -> list[str]:
    a = runner.args
    out = [
        "One OT-CFM training step's coupling, from the point clouds on the device to the re-paired batch: "
        f"x0 ~ N(0, I), x1 ~ N(0, I) + {SHIFT:g} (n × d float32). ms / step: median time; `/ ff pair` = row "
        "time / `flowfast pair` time of the same method (> 1: flowfast faster).",
        f"flowfast pair: `flowfast.couplings.pair(x0, x1, method=\"sinkhorn\", reg={REG:g}, replace=True)` "
        "(eps = reg · max cost, its defaults tol=1e-6, max_iter=1000) and `pair(x0, x1, method=\"exact\", "
        "replace=True)`: n pairs drawn with replacement from the plan, torchcfm's semantics.",
        f"torchcfm: `OTPlanSampler(method=\"sinkhorn\", reg={REG:g}, normalize_cost=True).sample_plan(x0, x1)` "
        "(cdist, host copy, POT's non-log `ot.sinkhorn`, numpy sampling) and `OTPlanSampler(method=\"exact\")"
        ".sample_plan(x0, x1)` (POT `ot.emd`, default numItermax 1e5). flowfast.compat OTPlanSampler: flowfast's "
        "drop-in class with the same arguments (dense plan materialized, sampled on the device).",
        "iters / marg. err / plan cost: from an untimed solve of the same problem (the plan behind the pairs; "
        "torchcfm's via `ot.sinkhorn(..., log=True)` / `get_map`). plan cost = <P, C> in the raw units; "
        "pairs E‖x0−x1‖² = mean squared distance of the pairs one timed call returned. Warnings from the "
        "first call are in the notes column.",
        f"Correctness first: on a small instance (n ≤ {COUPLING_CHECK_N}, same d) flowfast's entropic plan cost "
        f"must match POT float64 sinkhorn_log (rtol {CHECK_RTOL:g}) and its exact pairing the optimum "
        "(`ot.emd`, rtol 1e-4); the script aborts otherwise.",
        f"A method is skipped when its estimated call time (from its last smaller n, × (n/n')² for sinkhorn, "
        f"(n/n')³ for exact) exceeds {a.coupling_budget:g} s (`--coupling-budget`); a first call slower than "
        "that is reported as a single timed call.",
    ]
    if "torchcfm" in runner.missing:
        out.append(f"torchcfm: {runner.missing['torchcfm']}")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="device for flowfast and the torch peers (default: all available)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"n grid of the sinkhorn table (default {list(SIZES)})")
    p.add_argument("--dims", type=int, nargs="+", help=f"d grid of the sinkhorn table (default {list(DIMS)})")
    p.add_argument("--batches", type=int, nargs="+", help=f"B grid (default {list(BATCHES)}); B > 1 only for "
                   f"n <= --batch-max-n")
    p.add_argument("--batch-max-n", type=int, default=BATCH_MAX_N, help=f"largest n of a batched case ({BATCH_MAX_N})")
    p.add_argument("--tol", type=float, default=TOL, help=f"stopping tolerance for every solver ({TOL:g})")
    p.add_argument("--max-iter", type=int, default=MAX_ITER, help=f"iteration cap for every solver ({MAX_ITER})")
    p.add_argument("--dense-max-n", type=int, default=None,
                   help=f"skip dense-cost methods above this n "
                        f"(default: {CPU_DENSE_MAX_N} on CPU, none on CUDA; 0 = none)")
    p.add_argument("--online-max-n", type=int, default=None,
                   help=f"skip flowfast online above this n "
                        f"(default: {CPU_ONLINE_MAX_N} on CPU, none on CUDA; 0 = none)")
    p.add_argument("--pot-max-n", type=int, default=None,
                   help=f"skip POT numpy (host) above this n (default: {CPU_POT_MAX_N} on a CPU run, none when "
                        "CUDA is benchmarked; 0 = none)")
    p.add_argument("--call-budget", type=float, default=CALL_BUDGET_S,
                   help=f"skip a solver whose estimated single call exceeds this many seconds ({CALL_BUDGET_S:g})")
    p.add_argument("--geomloss-scaling", type=float, default=0.5, help="GeomLoss eps-scaling ratio (its default 0.5)")
    p.add_argument("--coupling-sizes", type=int, nargs="+",
                   help=f"batch sizes of the coupling-step table (default {list(COUPLING_SIZES)})")
    p.add_argument("--coupling-dims", type=int, nargs="+",
                   help=f"d of the coupling-step table (default {list(COUPLING_DIMS_CPU)} on CPU, "
                        f"{list(COUPLING_DIMS_CUDA)} on CUDA)")
    p.add_argument("--coupling-budget", type=float, default=COUPLING_BUDGET_S,
                   help=f"skip a coupling method whose estimated call exceeds this many seconds "
                        f"({COUPLING_BUDGET_S:g})")
    p.add_argument("--only", choices=("sinkhorn", "coupling"), default=None, help="run only one of the two tables")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: n in {256, 1024}, d=2, B in {1, 8}, coupling batch 256, d=2; files *-quick-*")
    _timing.add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [256, 1024]
        args.dims = args.dims or [2]
        args.batches = args.batches or [1, 8]
        args.coupling_sizes = args.coupling_sizes or [256]
        args.coupling_dims = args.coupling_dims or [2]
        args.min_time = 0.2 if args.min_time is None else args.min_time
        args.max_time = 2.0 if args.max_time is None else args.max_time
    args.sizes = sorted(args.sizes or SIZES)
    args.dims = args.dims or list(DIMS)
    args.batches = args.batches or list(BATCHES)
    args.coupling_sizes = sorted(args.coupling_sizes or COUPLING_SIZES)
    args.min_time = 0.5 if args.min_time is None else args.min_time
    args.max_time = 8.0 if args.max_time is None else args.max_time
    return args


def resolve_caps(args: argparse.Namespace, devices: list[str]) -> None:
    def pick(given: Optional[int], cpu_default: Optional[int], dev: str) -> Optional[int]:
        if given is not None:
            return given or None
        return cpu_default if dev == "cpu" else None

    args.dense_max_n_for = {d: pick(args.dense_max_n, CPU_DENSE_MAX_N, d) for d in ("cpu", "cuda")}
    args.online_max_n_for = {d: pick(args.online_max_n, CPU_ONLINE_MAX_N, d) for d in ("cpu", "cuda")}
    host = "cuda" if "cuda" in devices else "cpu"  # POT numpy runs on the host in every pass
    args.pot_max_n_for = {"host": pick(args.pot_max_n, CPU_POT_MAX_N, host)}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = _timing.resolve_devices("bench_sinkhorn", args.device)
    if devices is None:
        return 2
    resolve_caps(args, devices)

    cases = []
    for d in args.dims:
        for B in args.batches:
            for n in args.sizes:
                if B == 1 or n <= args.batch_max_n:
                    cases.append(Case(n, d, B))

    runner = Runner(args)
    suffix = "-quick" if args.quick else ""
    t_start = time.perf_counter()
    for dev_name in devices:
        device = torch.device(dev_name)
        # one-time costs (custom-op registration, CUDA context) out of every measurement
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xw, yw = make_points(16, 2)
            flowfast.sinkhorn(x=xw.to(device), y=yw.to(device), eps=1.0)
            flowfast.sinkhorn(sq_cost(xw, yw).to(device), eps=1.0)
        env = _timing.environment(device)
        env["versions"] = {**env["versions"], "geomloss": _version("geomloss")}

        if args.only in (None, "sinkhorn"):
            rows, raws = [], []
            for case in cases:
                t0 = time.perf_counter()
                print(f"[{dev_name}] sinkhorn {case.key} ...", end=" ", file=sys.stderr, flush=True)
                res = runner.solver_case(case, device)
                r, raw = solver_rows(case, res, device)
                rows += r
                raws += raw
                print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            _timing.write_results(
                FAMILY + suffix, rows, env, args.out, columns=SOLVER_COLUMNS, notes=solver_notes(runner, device),
                extra={"raw": raws, "args": vars(args)},
                title=f"sinkhorn — flowfast vs POT / POT torch / solve_batch / GeomLoss on {env['device_name']} "
                      f"({dev_name})")

        if args.only in (None, "coupling"):
            dims = args.coupling_dims or (COUPLING_DIMS_CUDA if dev_name == "cuda" else COUPLING_DIMS_CPU)
            items = []
            for d in dims:
                for n in args.coupling_sizes:
                    t0 = time.perf_counter()
                    print(f"[{dev_name}] coupling n{n}-d{d} ...", end=" ", file=sys.stderr, flush=True)
                    items += runner.coupling_case(n, d, device)
                    print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            rows, raws = coupling_table_rows(items, device)
            _timing.write_results(
                COUPLING_FAMILY + suffix, rows, env, args.out, columns=COUPLING_COLUMNS,
                notes=coupling_notes(runner, device), extra={"raw": raws, "args": vars(args)},
                title=f"coupling per OT-CFM step — flowfast.couplings.pair vs torchcfm OTPlanSampler on "
                      f"{env['device_name']} ({dev_name})")
    print(f"bench_sinkhorn: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if runner.failed:
        print("bench_sinkhorn: flowfast FAILED on: " + "; ".join(runner.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
