#!/usr/bin/env python
"""Benchmark: exact linear assignment and exact minibatch-OT pairing.

flowfast (CPU kernel, CUDA kernel when available, ``ot_pairing``) against the status quo on
identical inputs: ``scipy.optimize.linear_sum_assignment``, ``lap.lapjv``, POT ``ot.emd`` and
torchcfm's ``OTPlanSampler(method="exact").sample_plan``. Every peer is optional: a missing one is
reported as "not installed". Correctness is checked before any case is timed.

Cases: standard Gaussian clouds x0, x1 (n x d, single problems and a batch), plus OT-CFM-like
structured 2-D couplings (``flowfast.data`` gaussian -> 8gaussians / moons), the batches OT-CFM
re-pairs every training step: there the optimal dual potentials are far from the zero or
row/column-minimum potentials that shortest-augmenting-path solvers start from.

    python benchmarks/bench_assignment.py                 # full grid, every available device
    python benchmarks/bench_assignment.py --quick         # smoke run (make demo)
    python benchmarks/bench_assignment.py --device cpu --sizes 256 1024 --dims 2
    python benchmarks/bench_assignment.py --device cpu --sizes 128 --batch 0 --cfm-sizes 512 1024
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

import flowfast  # noqa: E402
import flowfast.data  # noqa: E402

FAMILY = "assignment"
SEED = 0
SIZES = (128, 256, 512, 1024, 2048)
DIMS = (2, 784)
BATCH_N = 128
CFM_SIZES = (256, 512, 1024)
CFM_PAIRS = (("gaussian", "8gaussians"), ("gaussian", "moons"))  # (source, target) in flowfast.data
CFM_LABEL = {"gaussian": "N"}  # as in the toy2d table: N→8gaussians
POT_MAX_ITER = 10_000_000  # POT's default (100_000) stops early, non-optimal, at n=2048, d=784
RTOL = 1e-5  # flowfast's optimal total vs scipy's, on the same float32 costs
RTOL_PAIRING = 1e-4  # ot_pairing builds its own (matmul-form) costs, so ties may break differently


# ---------------------------------------------------------------- optional peers

def _import_peers() -> tuple[dict, dict]:
    """-> (modules, why_missing). A peer that fails to import is "not installed", never a crash."""
    return _timing.import_optional({
        "scipy": _timing.load_scipy_lsa,
        "lapjv": _timing.load_lap,
        "pot": _timing.load_pot,
        "torchcfm": _timing.load_torchcfm_plan_sampler,
    })


# ---------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    n: int
    d: int
    B: int | None = None  # None: one (n, n) problem; otherwise a (B, n, n) batch
    data: tuple[str, str] | None = None  # (source, target) flowfast.data samplers; None: N(0, I) clouds

    @property
    def key(self) -> str:
        if self.data:
            return f"{self.data[0]}-{self.data[1]}-n{self.n}"
        return f"B{self.B}-n{self.n}-d{self.d}" if self.B else f"n{self.n}-d{self.d}"

    @property
    def label(self) -> str:
        if self.data:
            src, dst = (CFM_LABEL.get(name, name) for name in self.data)
            return f"{src}→{dst}"
        return f"B={self.B} x n={self.n}" if self.B else "single"


@dataclass
class Inputs:
    x0: torch.Tensor  # (n, d) or (B, n, d) float32, CPU
    x1: torch.Tensor
    cost: torch.Tensor  # (n, n) or (B, n, n) float32, CPU: squared Euclidean
    cost64: np.ndarray  # float64 copy for the peers that need it (made outside every timed region)


def make_inputs(case: Case) -> Inputs:
    g = torch.Generator().manual_seed(SEED)
    if case.data:
        x0 = flowfast.data.get_sampler(case.data[0])(case.n, g)
        x1 = flowfast.data.get_sampler(case.data[1])(case.n, g)
    else:
        shape = (case.B, case.n, case.d) if case.B else (case.n, case.d)
        x0 = torch.randn(shape, generator=g)
        x1 = torch.randn(shape, generator=g)
    cost = torch.cdist(x0, x1).square_().contiguous()
    return Inputs(x0, x1, cost, cost.double().numpy().copy())


def _batch(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[None]


def totals(cost64: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per-problem total cost of column assignments cols (B, n) under cost64 (B, n, n)."""
    c = _batch(cost64)
    cols = np.asarray(cols).reshape(c.shape[0], c.shape[1])
    return np.take_along_axis(c, cols[..., None], axis=2)[..., 0].sum(axis=1)


def is_permutation(cols: np.ndarray, m: int) -> bool:
    cols = np.asarray(cols)
    cols = cols.reshape(-1, cols.shape[-1])
    return all(np.array_equal(np.sort(r), np.arange(m)) for r in cols)


class CorrectnessError(AssertionError):
    pass


def check_flowfast(name: str, cost64: np.ndarray, cols: Any, ref: np.ndarray, rtol: float = RTOL) -> None:
    cols = cols.cpu().numpy() if isinstance(cols, torch.Tensor) else np.asarray(cols)
    n = _batch(cost64).shape[-1]
    if not is_permutation(cols, n):
        raise CorrectnessError(f"{name}: the assignment is not a permutation")
    got = totals(cost64, cols)
    if not np.allclose(got, ref, rtol=rtol, atol=0.0):
        worst = int(np.argmax(np.abs(got - ref) / np.abs(ref)))
        raise CorrectnessError(
            f"{name}: total cost {got[worst]!r} != reference optimum {ref[worst]!r} "
            f"(problem {worst}, rtol {rtol})"
        )


# ---------------------------------------------------------------- one case

def fmt_status(v: Any) -> str:
    return _timing.fmt_ms(v["median_s"]) if isinstance(v, dict) else str(v)


def ratio(num: Any, den: Any) -> float | None:
    if isinstance(num, dict) and isinstance(den, dict) and den["median_s"] > 0:
        return num["median_s"] / den["median_s"]
    return None


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.peers, self.missing = _import_peers()
        self.timing_kw = dict(min_time=args.min_time, max_time=args.max_time)
        self.cache: dict[tuple[str, str], Any] = {}  # (case, method) -> timing or status, host-side methods
        self.ref: dict[str, np.ndarray] = {}
        self.notes: dict[str, list[str]] = {}

    # --- helpers
    def note(self, case: Case, text: str) -> None:
        lst = self.notes.setdefault(case.key, [])
        if text not in lst:
            lst.append(text)

    def time(self, fn: Callable[[], Any], device: str) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _timing.time_fn(fn, device=device, **self.timing_kw)

    def run_checked(self, case: Case, label: str, fn: Callable[[], Any]) -> Any:
        """One untimed call (also pays one-time costs); its warnings go into the case notes."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
        for w in caught:
            msg = str(w.message).split("\n")[0]
            self.note(case, f"{label} warned: {msg[:90]}")
        return out

    def reference(self, case: Case, inp: Inputs) -> np.ndarray:
        """Optimal totals per problem, from scipy (else lapjv, else flowfast's torch reference)."""
        if case.key in self.ref:
            return self.ref[case.key]
        c = _batch(inp.cost64)
        if "scipy" in self.peers:
            lsa = self.peers["scipy"]
            ref = np.array([ci[lsa(ci)].sum() for ci in c])
        elif "lapjv" in self.peers:
            ref = np.array([ci[np.arange(len(ci)), self.peers["lapjv"].lapjv(ci)[1]].sum() for ci in c])
            self.note(case, "reference optimum from lapjv (scipy not installed)")
        else:
            cols = flowfast.linear_assignment(torch.from_numpy(_batch(inp.cost64)), backend="torch")
            ref = totals(inp.cost64, cols.numpy())
            self.note(case, "reference optimum from flowfast's pure-torch solver (scipy, lap not installed)")
        self.ref[case.key] = ref
        return ref

    # --- host-side methods (identical for every device pass: measured once per process)
    def host_methods(self, case: Case, inp: Inputs) -> dict[str, Any]:
        ref = self.reference(case, inp)
        c64 = _batch(inp.cost64)
        n = case.n
        out: dict[str, Any] = {}

        # flowfast CPU kernel on a float32 CPU tensor
        key = (case.key, "ff_cpu")
        if key not in self.cache:
            cols = self.run_checked(case, "flowfast", lambda: flowfast.linear_assignment(inp.cost))
            check_flowfast("flowfast CPU", inp.cost64, cols, ref)
            self.cache[key] = self.time(lambda: flowfast.linear_assignment(inp.cost), "cpu")
        out["ff_cpu"] = self.cache[key]

        # scipy
        key = (case.key, "scipy")
        if key not in self.cache:
            if "scipy" not in self.peers:
                self.cache[key] = "not installed"
            else:
                lsa = self.peers["scipy"]
                if case.B:
                    fn = lambda: [lsa(ci) for ci in c64]  # noqa: E731
                else:
                    fn = lambda: lsa(inp.cost64)  # noqa: E731
                self.cache[key] = self.time(fn, "cpu")
        out["scipy"] = self.cache[key]

        # lap.lapjv (square problems only)
        key = (case.key, "lapjv")
        if key not in self.cache:
            if "lapjv" not in self.peers:
                self.cache[key] = "not installed"
            else:
                lapjv = self.peers["lapjv"].lapjv
                got = np.stack([lapjv(ci)[1] for ci in c64])
                if not np.allclose(totals(inp.cost64, got), ref, rtol=RTOL, atol=0.0):
                    self.note(case, "lapjv total differs from scipy's optimum")
                if case.B:
                    fn = lambda: [lapjv(ci) for ci in c64]  # noqa: E731
                else:
                    fn = lambda: lapjv(inp.cost64)  # noqa: E731
                self.cache[key] = self.time(fn, "cpu")
        out["lapjv"] = self.cache[key]

        # POT ot.emd (uniform weights)
        key = (case.key, "pot")
        if key not in self.cache:
            limit = self.args.pot_max_n
            if "pot" not in self.peers:
                self.cache[key] = "not installed"
            elif limit and n > limit:
                self.cache[key] = f"skipped (n>{limit})"
            else:
                ot = self.peers["pot"]
                a = ot.unif(n)
                emd = lambda ci: ot.emd(a, a, ci, numItermax=POT_MAX_ITER)  # noqa: E731
                plans = self.run_checked(case, "POT", lambda: [emd(ci) for ci in c64])
                pot_tot = np.array([(p * ci).sum() * n for p, ci in zip(plans, c64)])
                if not np.allclose(pot_tot, ref, rtol=RTOL, atol=0.0):
                    self.note(case, "POT emd total differs from scipy's optimum")
                if case.B:
                    fn = lambda: [emd(ci) for ci in c64]  # noqa: E731
                else:
                    fn = lambda: emd(inp.cost64)  # noqa: E731
                self.cache[key] = self.time(fn, "cpu")
        out["pot"] = self.cache[key]
        return out

    # --- device-side methods
    def device_methods(self, case: Case, inp: Inputs, device: str) -> dict[str, Any]:
        ref = self.reference(case, inp)
        out: dict[str, Any] = {}
        if device == "cuda":
            cost_gpu = inp.cost.to(device)
            cols = self.run_checked(case, "flowfast CUDA", lambda: flowfast.linear_assignment(cost_gpu))
            check_flowfast("flowfast CUDA", inp.cost64, cols, ref)
            out["ff_cuda"] = self.time(lambda: flowfast.linear_assignment(cost_gpu), device)

        if case.B:
            out["torchcfm"] = "n/a (batched)"
            out["ot_pairing"] = "n/a (batched)"
            return out
        x0, x1 = inp.x0.to(device), inp.x1.to(device)

        x0p, x1p = self.run_checked(case, "ot_pairing", lambda: flowfast.ot_pairing(x0, x1))
        if not torch.equal(x0p, x0):
            raise CorrectnessError("ot_pairing changed x0")
        pair_total = ((x0p.double() - x1p.double()) ** 2).sum().item()
        if not math.isclose(pair_total, float(ref[0]), rel_tol=RTOL_PAIRING):
            raise CorrectnessError(f"ot_pairing total {pair_total!r} != optimum {float(ref[0])!r} (rtol {RTOL_PAIRING})")
        out["ot_pairing"] = self.time(lambda: flowfast.ot_pairing(x0, x1), device)

        limit = self.args.torchcfm_max_n
        if "torchcfm" not in self.peers:
            out["torchcfm"] = "not installed"
        elif limit and case.n > limit:
            out["torchcfm"] = f"skipped (n>{limit})"
        else:
            sampler = self.peers["torchcfm"](method="exact")
            self.run_checked(case, "torchcfm", lambda: sampler.sample_plan(x0, x1))
            out["torchcfm"] = self.time(lambda: sampler.sample_plan(x0, x1), device)
        return out


# ---------------------------------------------------------------- table

def build_row(case: Case, m: dict[str, Any], device: str, notes: list[str]) -> tuple[dict, dict]:
    anchors = [m[k] for k in ("scipy", "lapjv") if isinstance(m.get(k), dict)]
    anchor = min(anchors, key=lambda t: t["median_s"]) if anchors else None
    raw = {
        "case": case.key, "B": case.B, "n": case.n, "d": case.d, "device": device,
        "data": "->".join(case.data) if case.data else "normal",
        "times": m,
        "ratio_anchor_over_ff_cpu": ratio(anchor, m["ff_cpu"]),
        "ratio_scipy_over_ff_cpu": ratio(m.get("scipy"), m["ff_cpu"]),
        "ratio_torchcfm_over_ot_pairing": ratio(m.get("torchcfm"), m.get("ot_pairing")),
        "notes": notes,
    }
    row = {
        "case": case.label, "n": case.n, "d": case.d,
        "ff CPU": fmt_status(m["ff_cpu"]),
    }
    if device == "cuda":
        raw["ratio_anchor_over_ff_cuda"] = ratio(anchor, m.get("ff_cuda"))
        raw["ratio_scipy_over_ff_cuda"] = ratio(m.get("scipy"), m.get("ff_cuda"))
        row["ff CUDA"] = fmt_status(m["ff_cuda"])
    row.update({
        "scipy": fmt_status(m["scipy"]),
        "lapjv": fmt_status(m["lapjv"]),
        "POT emd": fmt_status(m["pot"]),
        "best(scipy,lapjv) / ff CPU": _timing.fmt_ratio(raw["ratio_anchor_over_ff_cpu"]),
        "scipy / ff CPU": _timing.fmt_ratio(raw["ratio_scipy_over_ff_cpu"]),
    })
    if device == "cuda":
        row["best(scipy,lapjv) / ff CUDA"] = _timing.fmt_ratio(raw["ratio_anchor_over_ff_cuda"])
        row["scipy / ff CUDA"] = _timing.fmt_ratio(raw["ratio_scipy_over_ff_cuda"])
    row.update({
        "torchcfm": fmt_status(m["torchcfm"]),
        "ot_pairing": fmt_status(m["ot_pairing"]),
        "torchcfm / ot_pairing": _timing.fmt_ratio(raw["ratio_torchcfm_over_ot_pairing"]),
        "notes": "; ".join(notes),
    })
    return row, raw


def global_notes(runner: Runner, device: str) -> list[str]:
    args = runner.args
    out = [
        "Times are medians in ms (adaptive repeats, see `benchmarks/_timing.py`). Ratios are "
        "peer time / flowfast time: > 1 means flowfast is faster.",
        f"Inputs (single and batched rows): x0, x1 standard Gaussian (seed {SEED}), cost = squared Euclidean distance (float32, "
        "`torch.cdist(x0, x1)**2`). flowfast gets the float32 tensor; scipy, lapjv and POT get a "
        "float64 numpy copy made outside the timed region (they need float64).",
        "Before timing, each case checks that flowfast's total cost equals scipy's optimum "
        f"(rtol {RTOL}) and that ot_pairing's total is optimal (rtol {RTOL_PAIRING}).",
        f"POT: `ot.emd(unif, unif, C, numItermax={POT_MAX_ITER:.0e})` (the default 1e5 stops early, "
        "non-optimal, at n=2048). torchcfm: `OTPlanSampler(method=\"exact\").sample_plan(x0, x1)` "
        f"timed from the point clouds on `{device}` (cdist + host copy + POT emd + sampling), "
        "against `flowfast.ot_pairing(x0, x1)` from the same point clouds on the same device.",
        "Batched rows: flowfast solves the (B, n, n) batch in one call (OpenMP over the batch on the "
        "CPU); scipy / lapjv / POT columns are a Python loop over the B problems (single-threaded).",
    ]
    if args.cfm_sizes:
        labels = ", ".join(Case(0, 2, data=pair).label for pair in CFM_PAIRS)
        samplers = " / ".join(f'`get_sampler("{b}")`' for _, b in CFM_PAIRS)
        out.insert(2, f"Structured rows ({labels}; d = 2): x0 = `flowfast.data.get_sampler(\"gaussian\")(n, g)`, "
                      f"x1 = {samplers} (same generator, seed {SEED}), same cost: the batches OT-CFM re-pairs "
                      "every training step on the 2-D toy tasks. Between two differently shaped clouds the "
                      "optimal dual potentials are far from zero.")
    if device == "cuda":
        out.append("CPU columns (ff CPU, scipy, lapjv, POT) are measured on this machine's host CPU "
                   "in the same process; ff CUDA gets the cost already on the GPU (CUDA events).")
    elif not flowfast.cuda_available():
        out.append("flowfast CUDA: not measured (no usable CUDA device or CPU-only build).")
    if args.pot_max_n:
        out.append(f"POT emd skipped for n > {args.pot_max_n} (run time).")
    if args.torchcfm_max_n:
        out.append(f"torchcfm skipped for n > {args.torchcfm_max_n} (run time).")
    for key, why in runner.missing.items():
        out.append(f"{key}: {why}")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="device for flowfast (default: all available)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"override the n grid (default {list(SIZES)})")
    p.add_argument("--dims", type=int, nargs="+", help=f"override the d grid (default {list(DIMS)})")
    p.add_argument("--batch", type=int, default=None, help=f"B of the batched case (n={BATCH_N}; default 32; 0 = none)")
    p.add_argument("--cfm-sizes", type=int, nargs="+",
                   help=f"n of the structured OT-CFM-like cases ({', '.join(f'{a}->{b}' for a, b in CFM_PAIRS)}) "
                        f"(d=2; default {list(CFM_SIZES)}; 0 = none)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: n in {128, 256}, d=2, batched B=8, structured n=256; "
                        "files named assignment-quick-*")
    p.add_argument("--pot-max-n", type=int, default=None, help="skip POT emd above this n (default: never)")
    p.add_argument("--torchcfm-max-n", type=int, default=None, help="skip torchcfm above this n (default: never)")
    _timing.add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [128, 256]
        args.dims = args.dims or [2]
        args.batch = 8 if args.batch is None else args.batch
        args.cfm_sizes = args.cfm_sizes or [256]
        args.min_time = 0.2 if args.min_time is None else args.min_time
        args.max_time = 2.0 if args.max_time is None else args.max_time
    args.sizes = args.sizes or list(SIZES)
    args.dims = args.dims or list(DIMS)
    args.batch = 32 if args.batch is None else args.batch
    args.cfm_sizes = [n for n in (args.cfm_sizes or CFM_SIZES) if n > 0]
    args.min_time = 0.5 if args.min_time is None else args.min_time
    args.max_time = 8.0 if args.max_time is None else args.max_time
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = _timing.resolve_devices("bench_assignment", args.device)
    if devices is None:
        return 2

    cases = [Case(n, d) for d in args.dims for n in args.sizes]
    if args.batch:
        cases += [Case(BATCH_N, d, args.batch) for d in args.dims]
    cases += [Case(n, 2, data=pair) for pair in CFM_PAIRS for n in args.cfm_sizes]

    runner = Runner(args)
    t_start = time.perf_counter()
    for device in devices:
        env = _timing.environment(device)
        rows, raws = [], []
        for case in cases:
            t0 = time.perf_counter()
            print(f"[{device}] {case.key} ...", end=" ", file=sys.stderr, flush=True)
            inp = make_inputs(case)
            m = runner.host_methods(case, inp)
            m.update(runner.device_methods(case, inp, device))
            row, raw = build_row(case, m, device, runner.notes.get(case.key, []))
            rows.append(row)
            raws.append(raw)
            print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        _timing.write_results(
            FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else ""),
            rows, env, args.out,
            notes=global_notes(runner, device),
            extra={"raw": raws, "args": vars(args)},
            title=f"assignment — flowfast vs scipy / lapjv / POT / torchcfm on {env['device_name']} ({device})",
        )
    print(f"bench_assignment: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
