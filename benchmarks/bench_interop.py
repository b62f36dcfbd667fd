#!/usr/bin/env python
"""Benchmark: per-call overhead of the array-interop layer (``flowfast._interop.accepts_arrays``).

The same entry point on identical data, called three ways in one run: with torch tensors (the
fast path, one type check per argument), with numpy arrays (numpy in, numpy out) and with JAX
arrays (JAX in, JAX out; skipped cleanly when JAX cannot be imported). The table gives the median
time per call, the added time (library − torch) and the ratio, plus the layer measured alone: the
same decorator around a stub that returns the precomputed torch result, so the conversion cost is
resolved even where the call itself takes milliseconds and the difference of two medians is
noise. JAX's own DLPack costs (``torch.from_dlpack`` of a JAX array in, ``jax.dlpack.from_dlpack``
of a torch tensor out) are timed on their own too: they are the JAX libraries' cost, not
flowfast's.

Cases: ``linear_assignment`` on a (32, 128, 128) float32 batch (the issue's anchor: at most 10 µs
added per call for numpy on the CPU) and on a (1, 4, 4) batch (overhead dominates);
``sinkhorn(cost, eps=0.1).f`` on (8, 64, 64); ``IndependentCFM(0.1).sample_paired(x0, x1, t)``
with (256, 2) points. CPU only: the layer runs on the host.

    python benchmarks/bench_interop.py            # full run (about 2 minutes on 2 busy cores)
    python benchmarks/bench_interop.py --quick    # smoke run (< 30 s); files named interop-quick-*
    python benchmarks/bench_interop.py --threads 1 --rounds 9
"""

from __future__ import annotations

import argparse
import importlib.metadata as _metadata
import inspect
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

import flowfast  # noqa: E402
import flowfast.paths  # noqa: E402
from flowfast._interop import accepts_arrays  # noqa: E402

FAMILY = "interop"
SEED = 0
SIGMA = 0.1
EPS = 0.1
GOAL_US = 10.0  # the goal: numpy adds at most this per linear_assignment call on the CPU
METHODS = ("torch", "numpy", "jax")


# ---------------------------------------------------------------- optional JAX

def _load_jax():
    import jax
    import jax.dlpack
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # backend start-up outside every timed region
    return jax


def _interop_fingerprint() -> dict:
    """Which ``flowfast/_interop.py`` was timed (sha256 prefix, mtime): the layer is pure Python, so
    the extension's fingerprint in the header does not tell its versions apart."""
    import datetime as _dt
    import hashlib

    import flowfast._interop as mod

    path = Path(mod.__file__)
    mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).replace(microsecond=0)
    return {"file": path.name, "sha256_12": hashlib.sha256(path.read_bytes()).hexdigest()[:12],
            "mtime_utc": mtime.isoformat()}


def _dist_version(name: str) -> str:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return _timing.NOT_INSTALLED


# ---------------------------------------------------------------- stubs: the layer alone

class _StubPath:
    """The decorator of ``paths.*.sample_paired`` around a method that returns a fixed result."""

    def __init__(self, result):
        self.result = result

    @accepts_arrays("x0", "x1", "t")
    def sample_paired(self, x0, x1, t=None, return_noise=False, generator=None, check_finite=None):
        return self.result


def stub_linear_assignment(result):
    @accepts_arrays("cost")
    def linear_assignment(cost, maximize=False, *, backend="auto"):
        return result
    return linear_assignment


def stub_sinkhorn(result):
    @accepts_arrays("cost", "x", "y", "a", "b", sequences=("init",))
    def sinkhorn(cost=None, *, x=None, y=None, a=None, b=None, eps, reg_m=None, max_iter=1000, tol=1e-6,
                 eps_scaling=True, check_every=5, backend="auto", generator=None, init=None):
        return result
    return sinkhorn


def _same_parameters(stub: Callable, real: Callable) -> bool:
    """The stub mirrors the real entry point's parameters (names and kinds), so the decorator sees
    the same slots."""
    def params(fn):
        return [(p.name, p.kind) for p in inspect.signature(inspect.unwrap(fn)).parameters.values()]
    return params(stub) == params(real)


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    key: str
    label: str
    torch_in: dict  # argument name -> torch tensor (CPU, float32)
    call: Callable[..., Any]  # call(**inputs) -> result in the inputs' library (the timed call)
    stub: Callable[..., Any]  # the same call on the decorator around a stub returning `torch_result`
    stub_raw: Callable[..., Any]  # the stub without the decorator
    check: Callable[[Any, Any, str], None]  # check(result, torch_result, library)
    outputs: Callable[[Any], list]  # torch tensors the layer exports for a torch result
    seeded: Callable[[dict], Any] | None = None  # deterministic version of `call` for the check
    notes: list = field(default_factory=list)


def _arrays_equal(got, want: torch.Tensor, what: str, exact: bool = True) -> None:
    g = np.asarray(got)
    w = want.detach().cpu().numpy()
    ok = np.array_equal(g, w) if exact else np.allclose(g, w, rtol=1e-6, atol=1e-6)
    if g.shape != w.shape or not ok:
        raise AssertionError(f"{what}: result differs from the torch entry point's (shape {g.shape} vs {w.shape})")


def _check_type(value, library: str, jax, what: str) -> None:
    want = {"torch": torch.Tensor, "numpy": np.ndarray, "jax": getattr(jax, "Array", ())}[library]
    if not isinstance(value, want):
        raise AssertionError(f"{what}: {library} call returned {type(value).__module__}.{type(value).__name__}")


def make_cases(jax) -> list[Case]:
    g = torch.Generator().manual_seed(SEED)
    cases = []

    def assignment_cost(B, n, d=2):
        x0 = torch.randn(B, n, d, generator=g)
        x1 = torch.randn(B, n, d, generator=g)
        return torch.cdist(x0, x1).square_().contiguous()

    def la_check(res, ref, library):
        _check_type(res, library, jax, "linear_assignment")
        _arrays_equal(res, ref, "linear_assignment")

    for B, n, label in ((32, 128, "linear_assignment (32, 128, 128) — anchor"),
                        (1, 4, "linear_assignment (1, 4, 4)")):
        cost = assignment_cost(B, n)
        ref = flowfast.linear_assignment(cost)
        stub = stub_linear_assignment(ref)
        case = Case(f"linear_assignment-B{B}-n{n}", label, {"cost": cost},
                    call=lambda cost: flowfast.linear_assignment(cost),
                    stub=stub, stub_raw=stub.__wrapped__, check=la_check, outputs=lambda r: [r])
        if not _same_parameters(stub, flowfast.linear_assignment):
            case.notes.append("stub parameters differ from flowfast.linear_assignment's")
        cases.append(case)

    cost = torch.rand(8, 64, 64, generator=g)
    ref = flowfast.sinkhorn(cost, eps=EPS)
    sk_stub = stub_sinkhorn(ref)

    def sk_check(res, ref, library):
        _check_type(res, library, jax, "sinkhorn(...).f")
        _arrays_equal(res, ref, "sinkhorn(...).f", exact=False)

    case = Case("sinkhorn-B8-n64", "sinkhorn(cost, eps=0.1).f (8, 64, 64)", {"cost": cost},
                call=lambda cost: flowfast.sinkhorn(cost, eps=EPS).f,
                stub=lambda cost: sk_stub(cost, eps=EPS).f,
                stub_raw=lambda cost: sk_stub.__wrapped__(cost, eps=EPS).f,
                check=sk_check, outputs=lambda r: [r])
    if not _same_parameters(sk_stub, flowfast.sinkhorn):
        case.notes.append("stub parameters differ from flowfast.sinkhorn's")
    cases.append(case)

    path = flowfast.paths.IndependentCFM(SIGMA)
    x0 = torch.randn(256, 2, generator=g)
    x1 = torch.randn(256, 2, generator=g) * 0.5 + 3.0
    t = torch.rand(256, generator=g)
    ref = path.sample_paired(x0, x1, t)
    sp = _StubPath(ref)

    def sp_check(res, ref, library):
        if not isinstance(res, tuple) or len(res) != len(ref):
            raise AssertionError(f"sample_paired: {library} call returned {type(res).__name__}")
        for i, (r, w) in enumerate(zip(res, ref)):
            _check_type(r, library, jax, f"sample_paired[{i}]")
            _arrays_equal(r, w, f"sample_paired[{i}]")

    case = Case("sample_paired-icfm-256x2", "IndependentCFM(0.1).sample_paired (256, 2)",
                {"x0": x0, "x1": x1, "t": t},
                call=lambda x0, x1, t: path.sample_paired(x0, x1, t),
                stub=lambda x0, x1, t: sp.sample_paired(x0, x1, t),
                stub_raw=lambda x0, x1, t: _StubPath.sample_paired.__wrapped__(sp, x0, x1, t),
                check=sp_check, outputs=lambda r: list(r),
                seeded=lambda inp: path.sample_paired(**inp, generator=torch.Generator().manual_seed(1)))
    if not _same_parameters(_StubPath.sample_paired, type(path).sample_paired):
        case.notes.append("stub parameters differ from IndependentCFM.sample_paired's")
    cases.append(case)
    return cases


def library_inputs(case: Case, jax) -> dict[str, dict]:
    """The same data for every library: numpy copies, and JAX arrays made from them (ready)."""
    out = {"torch": case.torch_in, "numpy": {k: v.numpy().copy() for k, v in case.torch_in.items()}}
    if jax is not None:
        out["jax"] = {k: jax.numpy.asarray(v).block_until_ready() for k, v in out["numpy"].items()}
    return out


# ---------------------------------------------------------------- timing

class Timer:
    """Interleaved rounds: every round times each function once with :func:`_timing.time_fn`
    (rotating the order); a function's time is the median of its round medians."""

    def __init__(self, args):
        self.rounds = args.rounds
        self.pause = args.settle
        self.kw = dict(min_time=args.min_time, max_time=args.max_time, max_repeats=1_000_000, warmup=args.warmup)

    def settle(self) -> None:
        time.sleep(self.pause)

    def run(self, fns: dict[str, Callable[[], Any]]) -> dict[str, dict]:
        names = list(fns)
        per: dict[str, list[dict]] = {k: [] for k in names}
        for r in range(self.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    per[k].append(_timing.time_fn(fns[k], device="cpu", **self.kw))
        out = {}
        for k, stats in per.items():
            meds = [s["median_s"] for s in stats]
            out[k] = {"median_s": statistics.median(meds), "min_s": min(s["min_s"] for s in stats),
                      "round_medians_s": meds, "repeats": sum(s["repeats"] for s in stats)}
        return out


def run_case(case: Case, jax, timer: Timer) -> dict:
    inputs = library_inputs(case, jax)
    libs = [m for m in METHODS if m in inputs]
    seeded_ref = case.seeded(case.torch_in) if case.seeded else case.call(**case.torch_in)
    for lib in libs:  # correctness first; also pays each route's one-time costs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.check(case.seeded(inputs[lib]) if case.seeded else case.call(**inputs[lib]), seeded_ref, lib)
            case.check(case.stub(**inputs[lib]), case.stub(**case.torch_in), lib)

    calls = {lib: (lambda inp: lambda: case.call(**inp))(inputs[lib]) for lib in libs}
    fns: dict[str, Callable[[], Any]] = {}  # the micro-benchmarks: the layer and JAX's DLPack calls alone
    for lib in libs:
        fns[f"layer_{lib}"] = (lambda inp: lambda: case.stub(**inp))(inputs[lib])
    fns["layer_raw"] = lambda: case.stub_raw(**case.torch_in)
    if jax is not None:
        jin = list(inputs["jax"].values())
        fns["jax_dlpack_in"] = lambda: [torch.from_dlpack(a) for a in jin]
        # what the layer hands jax.dlpack.from_dlpack: the result, int64 / float64 narrowed first when
        # jax_enable_x64 is off (that narrowing is flowfast's work, done here outside the timed call)
        outs = [_jax_ready(o, jax) for o in case.outputs(case.stub(**case.torch_in))]
        # a fresh tensor each call, as in the real call (JAX's import of a new buffer, and the release of
        # the previous call's, costs more than re-importing one tensor): minus the time of the clones
        fns["jax_dlpack_out_fresh"] = lambda: [jax.dlpack.from_dlpack(o.clone()) for o in outs]
        fns["clone_out"] = lambda: [o.clone() for o in outs]
    times = timer.run(calls)
    # apart from the real calls, after a pause: right after a multi-threaded solve, torch's and
    # flowfast's OpenMP workers still spin-wait for a while and slow a µs-scale loop on a 2-core machine
    timer.settle()
    times.update(timer.run(fns))
    return times


def _jax_ready(t: torch.Tensor, jax) -> torch.Tensor:
    if not jax.config.jax_enable_x64 and t.dtype in (torch.int64, torch.float64):
        t = t.to(torch.int32 if t.dtype == torch.int64 else torch.float32)
    return t.detach().contiguous()


def primitive_rows(jax, timer: Timer) -> tuple[list[dict], list[dict]]:
    """JAX's own DLPack calls alone, one array each (the footnote rows)."""
    if jax is None:
        return [], []
    g = torch.Generator().manual_seed(SEED)
    i32 = torch.randint(0, 128, (32, 128), generator=g, dtype=torch.int32)
    f32 = torch.randn(256, 2, generator=g)
    prims = {  # name -> (column, timed fn, fn whose time is subtracted or None, note)
        "jax.dlpack.from_dlpack(torch (32, 128) int32) alone": (
            "out", lambda: jax.dlpack.from_dlpack(i32), None, "the same tensor every call"),
        "jax.dlpack.from_dlpack(torch (32, 128) int32), fresh tensor": (
            "out", lambda: jax.dlpack.from_dlpack(i32.clone()), lambda: i32.clone(),
            "a new tensor every call (as flowfast's results are), clone time subtracted"),
        "jax.dlpack.from_dlpack(torch (256, 2) float32) alone": (
            "out", lambda: jax.dlpack.from_dlpack(f32), None, "the same tensor every call"),
        "jax.dlpack.from_dlpack(torch (256, 2) float32), fresh tensor": (
            "out", lambda: jax.dlpack.from_dlpack(f32.clone()), lambda: f32.clone(),
            "a new tensor every call, clone time subtracted"),
    }
    for shape in ((32, 128, 128), (256, 2)):
        a = jax.numpy.asarray(torch.randn(*shape, generator=g).numpy()).block_until_ready()
        prims[f"torch.from_dlpack(jax {shape} float32) alone"] = (
            "in", (lambda a: lambda: torch.from_dlpack(a))(a), None, "the same array every call")
    fns = {}
    for name, (_, fn, base, _) in prims.items():
        fns[name] = fn
        if base is not None:
            fns[name + " [base]"] = base
    times = timer.run(fns)
    rows, raws = [], []
    for name, (side, _, base, note) in prims.items():
        t = times[name]["median_s"] - (times[name + " [base]"]["median_s"] if base is not None else 0.0)
        col = "of which JAX out µs" if side == "out" else "of which JAX in µs"
        rows.append({"case": name, col: fmt_us(t), "notes": f"JAX / DLPack alone, no flowfast: {note}"})
        raws.append({"case": name, "median_s": t, "times": times[name],
                     "base_times": times.get(name + " [base]")})
    return rows, raws


# ---------------------------------------------------------------- table

def fmt_us(seconds: float | None, signed: bool = False) -> str:
    if seconds is None:
        return "—"
    us = seconds * 1e6
    a = abs(us)
    text = f"{us:.0f}" if a >= 100 else f"{us:.1f}" if a >= 10 else f"{us:.2f}"
    return ("+" + text if signed and us >= 0 else text)


def build_row(case: Case, m: dict, jax) -> tuple[dict, dict]:
    med = {k: v["median_s"] for k, v in m.items()}
    t_torch = med["torch"]
    row = {"case": case.label, "torch µs": fmt_us(t_torch), "numpy µs": fmt_us(med["numpy"]),
           "numpy added µs": fmt_us(med["numpy"] - t_torch, signed=True),
           "numpy / torch": _timing.fmt_ratio(med["numpy"] / t_torch),
           "numpy layer alone µs": fmt_us(med["layer_numpy"] - med["layer_raw"], signed=True)}
    raw = {"case": case.key, "label": case.label, "times": m,
           "numpy_added_s": med["numpy"] - t_torch,
           "numpy_layer_alone_s": med["layer_numpy"] - med["layer_raw"],
           "torch_fast_path_s": med["layer_torch"] - med["layer_raw"]}
    if jax is not None:
        row.update({"JAX µs": fmt_us(med["jax"]), "JAX added µs": fmt_us(med["jax"] - t_torch, signed=True),
                    "JAX / torch": _timing.fmt_ratio(med["jax"] / t_torch),
                    "JAX layer alone µs": fmt_us(med["layer_jax"] - med["layer_raw"], signed=True),
                    "of which JAX in µs": fmt_us(med["jax_dlpack_in"]),
                    "of which JAX out µs": fmt_us(med["jax_dlpack_out_fresh"] - med["clone_out"])})
        out = med["jax_dlpack_out_fresh"] - med["clone_out"]
        raw.update({"jax_added_s": med["jax"] - t_torch, "jax_layer_alone_s": med["layer_jax"] - med["layer_raw"],
                    "jax_dlpack_in_s": med["jax_dlpack_in"], "jax_dlpack_out_s": out,
                    "jax_flowfast_part_s": med["layer_jax"] - med["layer_raw"] - med["jax_dlpack_in"] - out})
    row["torch fast path µs"] = fmt_us(med["layer_torch"] - med["layer_raw"], signed=True)
    row["notes"] = "; ".join(case.notes)
    return row, raw


def columns(jax) -> list[str]:
    cols = ["case", "torch µs", "numpy µs", "numpy added µs", "numpy / torch"]
    if jax is not None:
        cols += ["JAX µs", "JAX added µs", "JAX / torch"]
    cols += ["numpy layer alone µs"]
    if jax is not None:
        cols += ["JAX layer alone µs", "of which JAX in µs", "of which JAX out µs"]
    return cols + ["torch fast path µs", "notes"]


def global_notes(args, jax, why: dict, raws: list[dict]) -> list[str]:
    out = [
        f"Median time per call in µs; each method timed in {args.rounds} interleaved round(s) of "
        f"`_timing.time_fn` (min_time {args.min_time} s, max_time {args.max_time} s per round, one call per "
        "repeat), the median of the round medians. `added` = library time − torch time, same data, same run; "
        "ratio = library / torch.",
        "Same data for every route: torch tensors (seed 0), numpy copies of them, JAX arrays made from the numpy "
        "copies outside the timed region (`jnp.asarray`, ready). Results are checked equal to the torch entry "
        "point's before timing (sample_paired: with one seeded generator), and of the caller's type.",
        "`layer alone`: the same `accepts_arrays(...)` decorator around a stub with the entry point's parameters "
        "that returns the precomputed torch result, minus the bare stub: the conversion in and out, without the "
        "solve. It resolves the cost where the call itself takes milliseconds and `added` (a difference of two "
        "noisy medians) is within the noise. `torch fast path` is the same for torch tensors (the type checks). "
        f"These micro-benchmarks run after the case's real calls and a {args.settle} s pause (right after a "
        "multi-threaded solve, spinning OpenMP workers slow a µs-scale loop on a 2-core machine).",
    ]
    if jax is not None:
        out.append(
            "`of which JAX in` = `torch.from_dlpack(jax_array)` for every input array, `of which JAX out` = "
            "`jax.dlpack.from_dlpack(torch_tensor)` for every result array, a new tensor each call as in the real call "
            "(`from_dlpack(t.clone())` minus `t.clone()`; int64 results narrowed to int32 first, as JAX without "
            "`jax_enable_x64` wants; the narrowing is flowfast's and not in this column), timed alone: "
            "the JAX / DLPack libraries' own cost, part of `JAX layer alone`. flowfast's own part of the JAX route "
            "≈ JAX layer alone − in − out.")
    out += [
        f"Goal (issue): the numpy route adds ≤ {GOAL_US:.0f} µs per `linear_assignment` call on the CPU.",
        "Inputs: linear_assignment costs are squared Euclidean distances of standard Gaussian 2-D clouds "
        "(`torch.cdist(x0, x1)**2`, float32), as in bench_assignment; sinkhorn cost `torch.rand(8, 64, 64)`, "
        f"eps = {EPS}; sample_paired x0 ~ N(0, I), x1 ~ N(3, 0.25 I), t ~ U[0, 1], sigma {SIGMA} (the call draws "
        "its noise from torch's global generator).",
        "Timings on a shared machine are noisy (see the load average in the header); nothing is asserted on them.",
    ]
    anchor = next((r for r in raws if r["case"] == "linear_assignment-B32-n128"), None)
    if anchor is not None:
        rm = anchor["times"]["torch"]["round_medians_s"]
        out.append(f"Anchor noise: the torch call's round medians span {fmt_us(min(rm))}–{fmt_us(max(rm))} µs, so "
                   "`added` there is not resolved; read `numpy layer alone` "
                   f"({fmt_us(anchor['numpy_layer_alone_s'], signed=True)} µs) against the goal.")
    fp = _interop_fingerprint()
    out.append(f"Layer timed: `flowfast/_interop.py` sha256 {fp['sha256_12']} (modified {fp['mtime_utc']}).")
    if jax is None:
        out.append(f"JAX columns skipped: jax {why.get('jax', 'not importable')}")
    else:
        out.append(f"JAX {jax.__version__} on {jax.devices()[0].platform}, jax_enable_x64="
                   f"{bool(jax.config.jax_enable_x64)}.")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="accepted for run_all.py; the layer runs on the host, so only the CPU is measured "
                        "(--device cuda: nothing to do, exit 0)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds per method (default 5; quick 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each round's repeats")
    p.add_argument("--settle", type=float, default=None,
                   help="seconds of pause between a case's real calls and its micro-benchmarks (default 1; quick 0.2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, short timing; files named interop-quick-*")
    _timing.add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = args.rounds or 1
        args.min_time = 0.05 if args.min_time is None else args.min_time
        args.max_time = 0.3 if args.max_time is None else args.max_time
        args.settle = 0.2 if args.settle is None else args.settle
    args.rounds = args.rounds or 5
    args.settle = 1.0 if args.settle is None else args.settle
    args.min_time = 0.4 if args.min_time is None else args.min_time
    args.max_time = 3.0 if args.max_time is None else args.max_time
    args.max_time = max(args.max_time, args.min_time)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        print("bench_interop: measures the host-side array layer only; nothing to do for --device cuda",
              file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    mods, why = _timing.import_optional({"jax": _load_jax})
    jax = mods.get("jax")
    timer = Timer(args)
    env = _timing.environment("cpu")
    env["versions"] = {**env["versions"], "jax": _dist_version("jax"), "jaxlib": _dist_version("jaxlib")}
    env["flowfast_interop"] = _interop_fingerprint()

    rows, raws = [], []
    for case in make_cases(jax):
        t0 = time.perf_counter()
        print(f"[cpu] {case.key} ...", end=" ", file=sys.stderr, flush=True)
        row, raw = build_row(case, run_case(case, jax, timer), jax)
        rows.append(row)
        raws.append(raw)
        print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    timer.settle()
    prow, praw = primitive_rows(jax, timer)
    rows += prow
    family = FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else "")
    _timing.write_results(
        family, rows, env, args.out, columns=columns(jax),
        notes=global_notes(args, jax, why, raws),
        extra={"raw": raws + praw, "args": vars(args)},
        title=f"interop — per-call overhead of numpy / JAX arrays vs torch tensors on {env['device_name']} (cpu)",
    )
    print(f"bench_interop: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
