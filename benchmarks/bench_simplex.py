#!/usr/bin/env python
"""Benchmark: the `simplex` kernels (categorical flow maps) vs eager torch / torch.compile.

Two public ops of ``flowfast.ops.simplex``, on (B, L, V) rows (B sequences of L positions over a
vocabulary of V classes; one softmax over V per position):

- **step** (the sampler step): ``flow_map_step(logits, x, gamma, validate=False)`` =
  x + gamma (softmax(logits) - x), with and without ``return_argmax``, against eager
  ``(x + gamma[:, None, None] * (torch.softmax(logits.float(), -1) - x)).to(x.dtype)`` (+ ``logits.argmax(-1)``).
- **ECLD / CSD loss, forward + backward**: ``distill_loss(kind, logits, logits_dot, target_logits, s, t,
  validate=False)`` (the gradients in logits and logits_dot are computed by the forward launch),
  ``.mean()`` and the gradients in logits and logits_dot, against the eager formulas (softmax, its
  JVP p * (zdot - <p, zdot>), log_softmax CE against softmax(target), mean, autograd backward).
- **compile**: ``torch.compile`` of the eager version (AOTAutograd compiles the backward too); a
  failure is recorded in the table, never fatal.

Correctness first: before timing a case, the fused step (x_new, argmax) and losses (per-position loss,
both gradients) must match the eager version on the same inputs (max |a - b| / max |b| <= 1e-4 for
float32 rows, 2e-2 for bf16 gradients / states; the per-position loss is float32 in both, 1e-4);
otherwise that case is not timed, the row says why and the script exits with status 1.

    python benchmarks/bench_simplex.py                 # default grid on CUDA if available, else CPU
    python benchmarks/bench_simplex.py --quick         # smoke run (tiny shapes, no compile)
    python benchmarks/bench_simplex.py --device cuda   # full grid: (256,128,32) and (64,128,30522)
    python benchmarks/bench_simplex.py --device cpu --shapes 4x128x30522 --dtypes fp32 --ops ecld csd
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)
from _timing import free_memory, short_error  # noqa: E402

import flowfast  # noqa: E402
from flowfast.ops import simplex as sops  # noqa: E402

FAMILY = "simplex"
SEED = 0
L_DEFAULT = 128
# Default grids. The CPU default runs the LLM-vocabulary case at B=8 instead of 64: at B=64 one
# float32 (B, L, V) tensor is 1 GB and the eager loss keeps a dozen of them alive (24 GiB host).
SHAPES_CUDA = ((256, 128, 32), (64, 128, 30522))
SHAPES_CPU = ((256, 128, 32), (8, 128, 30522))
SHAPES_QUICK = ((8, 16, 32), (2, 8, 3000))
DTYPES = ("fp32", "bf16")
DTYPE_MAP = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
OPS = ("step", "step-argmax", "ecld", "csd")
OP_LABEL = {"step": "step", "step-argmax": "step + argmax", "ecld": "ECLD fwd+bwd", "csd": "CSD fwd+bwd"}
CE_WEIGHT, TD_WEIGHT, MIN_ONE_MINUS_S = 4.0, 2.0, 0.05
# max |a - b| / max |b| of the states / gradients (storage dtype) and of the per-position loss.
RTOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 5e-3}
LOSS_RTOL = {torch.float64: 1e-10}
LOSS_RTOL_DEFAULT = 1e-4
H100_PEAK_GBS = 3350.0  # H100 SXM5 HBM3: the fallback when the device name is not in the table
COMPILE_BUDGET_S = 60.0  # make gpu-check gives all benchmarks 240 s


# ---------------------------------------------------------------- cases and inputs

@dataclass(frozen=True)
class Case:
    B: int
    L: int
    V: int
    dtype: str

    @property
    def rows(self) -> int:
        return self.B * self.L

    @property
    def numel(self) -> int:
        return self.B * self.L * self.V

    @property
    def key(self) -> str:
        return f"{self.B}x{self.L}x{self.V}-{self.dtype}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_MAP[self.dtype]

    @property
    def acc(self) -> torch.dtype:
        return sops.accumulation_dtype(self.torch_dtype)


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(s) for s in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use BxLxV, e.g. 8x128x30522") from None
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use BxLxV with positive sizes")
    return shape


@dataclass
class Inputs:
    logits: torch.Tensor  # (B, L, V), storage dtype, no grad
    logits_dot: torch.Tensor
    target: torch.Tensor
    x: torch.Tensor  # a state on the simplex (the step's x, CSD's x_s)
    gamma: torch.Tensor  # (B,) accumulation dtype: one step weight per sequence
    s: torch.Tensor  # (B,) accumulation dtype, 0 <= s < t < 1
    t: torch.Tensor
    z_leaf: torch.Tensor  # logits / logits_dot as leaves that require grad (same storage)
    zdot_leaf: torch.Tensor


def make_inputs(case: Case, device: torch.device) -> Inputs:
    g = torch.Generator(device=device).manual_seed(SEED)
    shape, dt, acc = (case.B, case.L, case.V), case.torch_dtype, case.acc

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device, dtype=acc)

    logits = (2 * randn()).to(dt)
    logits_dot = randn().to(dt)
    target = (logits.to(acc) + randn()).to(dt)  # the target is a perturbed copy of the student
    x = torch.softmax(randn(), -1).to(dt)
    gamma = torch.rand(case.B, generator=g, device=device, dtype=acc)
    s = 0.9 * torch.rand(case.B, generator=g, device=device, dtype=acc)
    t = s + (1 - s) * torch.rand(case.B, generator=g, device=device, dtype=acc)
    return Inputs(logits, logits_dot, target, x, gamma, s, t,
                  logits.detach().requires_grad_(True), logits_dot.detach().requires_grad_(True))


def must_move_bytes(case: Case, op: str) -> int:
    """Bytes one fused call must move at least: step reads logits, x and writes x_new (+ the int64
    argmax); the losses read logits, logits_dot, target (CSD: and x) and write both gradients."""
    es, n = case.torch_dtype.itemsize, case.numel
    if op == "step":
        return 3 * n * es
    if op == "step-argmax":
        return 3 * n * es + 8 * case.rows
    return (5 if op == "ecld" else 6) * n * es


# ---------------------------------------------------------------- the implementations

def eager_step(logits, x, gamma, argmax: bool):
    acc = gamma.dtype
    x_new = (x + gamma[:, None, None] * (torch.softmax(logits.to(acc), -1) - x)).to(x.dtype)
    return x_new, (logits.argmax(-1) if argmax else None)


def eager_loss(kind: str, logits, logits_dot, target, s, t, x):
    """The per-position (B, L) loss written the obvious way (the formulas of distill_loss)."""
    acc = s.dtype
    z, zdot = logits.to(acc), logits_dot.to(acc)
    p = torch.softmax(z, -1)
    pdot = p * (zdot - (p * zdot).sum(-1, keepdim=True))  # the JVP of softmax in t
    q = torch.softmax(target.detach().to(acc), -1)  # stop-gradient target
    one_minus_s = (1 - s).clamp_min(MIN_ONE_MINUS_S)
    gamma = ((t - s) / one_minus_s)[:, None]  # (B, 1): one time pair per sequence
    if kind == "ecld":
        ce = -(q * torch.log_softmax(z, -1)).sum(-1)
        return CE_WEIGHT * ce + TD_WEIGHT * gamma**2 * (pdot**2).sum(-1)
    xs = x.detach().to(acc)
    g3 = gamma[..., None]
    landing = xs + g3 * (p - xs)  # X = x + gamma (p - x), a stop-gradient in the residual (as the kernel)
    velocity = (p - xs) / one_minus_s[:, None, None] + g3 * pdot
    residual = (1 - t)[:, None, None] * velocity - (q - landing.detach())
    return (residual**2).sum(-1)


def make_step(impl: str, inp: Inputs, argmax: bool, compiled: Optional[Callable] = None) -> Callable[[], Any]:
    logits, x, gamma = inp.logits, inp.x, inp.gamma
    if impl == "ff":
        def step():
            r = sops.flow_map_step(logits, x, gamma, return_argmax=argmax, validate=False)
            return r.x, r.argmax
        return step
    fn = compiled if compiled is not None else eager_step
    return lambda: fn(logits, x, gamma, argmax)


def make_loss_forward(impl: str, kind: str, inp: Inputs) -> Callable[[], torch.Tensor]:
    z, zdot, target, s, t = inp.z_leaf, inp.zdot_leaf, inp.target, inp.s, inp.t
    x = inp.x if kind == "csd" else None
    if impl == "ff":
        return lambda: sops.distill_loss(kind, z, zdot, target, s, t, x=x, ce_weight=CE_WEIGHT,
                                         td_weight=TD_WEIGHT, min_one_minus_s=MIN_ONE_MINUS_S, validate=False)
    return lambda: eager_loss(kind, z, zdot, target, s, t, x)


def with_backward(forward: Callable[[], torch.Tensor], inp: Inputs) -> Callable[[], Any]:
    """loss = forward(); d loss.mean() / d (logits, logits_dot). autograd.grad, not .backward(): the
    same work as .backward() on fresh leaves, without accumulating into .grad across repeats."""
    leaves = (inp.z_leaf, inp.zdot_leaf)

    def run():
        loss = forward()
        grad_z, grad_zdot = torch.autograd.grad(loss.mean(), leaves)
        return loss, grad_z, grad_zdot

    return run


def make_loss_kernel(kind: str, inp: Inputs, case: Case) -> Callable[[], Any]:
    """The single fused launch alone (``flowfast::simplex_distill_loss`` with need_grad=True on
    pre-flattened rows and per-row times): what fwd+bwd costs minus the autograd plumbing."""
    V, L = case.V, case.L
    z, zdot, target = (a.reshape(-1, V) for a in (inp.logits, inp.logits_dot, inp.target))
    x = inp.x.reshape(-1, V) if kind == "csd" else None
    s, t = inp.s.repeat_interleave(L).contiguous(), inp.t.repeat_interleave(L).contiguous()
    code = sops.DISTILL_KINDS[kind]

    def run():
        with torch.no_grad():
            return sops.simplex_distill_loss(code, z, zdot, target, x, s, t, CE_WEIGHT, TD_WEIGHT,
                                             MIN_ONE_MINUS_S, True)

    return run


# ---------------------------------------------------------------- memory: B·L·V temporaries and peak

class AllocTracker(TorchDispatchMode):
    """Counts the tensors the ops (aten and flowfast's custom ops, forward and autograd backward)
    newly allocate while active: ``big`` = those with B·L·V elements, and the peak of the bytes
    they hold alive at once (``peak_bytes``; storages freed later are subtracted when freed).
    Allocations inside one op (a kernel's own scratch) are not seen; its outputs are."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel = numel
        self.big = 0
        self.big_ops: Counter = Counter()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}

    def _free(self, ptr: int, nbytes: int) -> None:
        if self._live.pop(ptr, None) is not None:
            self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        out = func(*args, **kwargs)
        for o in tree_flatten(out)[0]:
            if not isinstance(o, torch.Tensor):
                continue
            storage = o.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr == 0 or nbytes == 0 or ptr in inputs or ptr in self._live:
                continue  # a view / in-place result / already counted
            self._live[ptr] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._free, ptr, nbytes)
            if o.numel() == self.numel:
                self.big += 1
                self.big_ops[func.__name__.split(".")[0]] += 1
        return out


def run_measured(fn: Callable[[], Any], device: torch.device, numel: int) -> tuple[Any, dict]:
    """One call of fn under the tracker (and, on CUDA, torch.cuda's peak-memory counters)."""
    free_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    tracker = AllocTracker(numel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tracker:
            out = fn()
    mem = {"blv_tensors": tracker.big, "blv_tensors_by_op": dict(tracker.big_ops),
           "tracked_peak_bytes": tracker.peak_bytes}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        mem["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base
    mem["peak_bytes"] = mem.get("cuda_peak_bytes", tracker.peak_bytes)
    return out, mem


# ---------------------------------------------------------------- correctness

class CorrectnessError(AssertionError):
    pass


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, tiny), in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check_op(case: Case, op: str, inp: Inputs, device: torch.device) -> tuple[dict, dict]:
    """Fused vs eager on the case's inputs; raises CorrectnessError on a mismatch. Returns the
    deviations and the memory measurements of one fused and one eager call."""
    dt, numel = case.torch_dtype, case.numel
    rtol = RTOL[dt]
    loss_rtol = LOSS_RTOL.get(dt, LOSS_RTOL_DEFAULT)
    errs: dict[str, Any] = {}
    if op.startswith("step"):
        argmax = op == "step-argmax"
        (xf, af), mem_ff = run_measured(make_step("ff", inp, argmax), device, numel)
        (xe, ae), mem_eager = run_measured(make_step("eager", inp, argmax), device, numel)
        if xf.dtype != xe.dtype or xf.shape != xe.shape:
            raise CorrectnessError(f"{case.key} {op}: fused x_new is {xf.dtype} {tuple(xf.shape)}, "
                                   f"eager {xe.dtype} {tuple(xe.shape)}")
        errs["x_new"] = _rel(xf, xe)
        checks = [("x_new", rtol)]
        if argmax:
            errs["argmax_mismatches"] = int((af != ae).sum())
            if errs["argmax_mismatches"]:
                raise CorrectnessError(f"{case.key} {op}: fused argmax differs from torch.argmax at "
                                       f"{errs['argmax_mismatches']} of {case.rows} positions")
    else:
        (lf, gzf, gdf), mem_ff = run_measured(with_backward(make_loss_forward("ff", op, inp), inp), device, numel)
        (le, gze, gde), mem_eager = run_measured(with_backward(make_loss_forward("eager", op, inp), inp), device,
                                                 numel)
        errs["loss"], errs["grad_logits"], errs["grad_logits_dot"] = _rel(lf, le), _rel(gzf, gze), _rel(gdf, gde)
        checks = [("loss", loss_rtol), ("grad_logits", rtol), ("grad_logits_dot", rtol)]
    for name, tol in checks:
        if not errs[name] <= tol:  # also catches NaN
            raise CorrectnessError(f"{case.key} {op}: fused {name} deviates from the eager version by "
                                   f"{errs[name]:.3g} (max |a-b| / max |b| > rtol {tol:g})")
    errs["max_rel_err"] = max(errs[name] for name, _ in checks)
    return errs, {"ff": mem_ff, "eager": mem_eager}


# ---------------------------------------------------------------- timing

# is_oom, free_memory, short_error: benchmarks/_timing.py


def measure(fn: Callable[[], Any], device: torch.device, args, first_call: Optional[list] = None):
    """One untimed first call (compilation / one-time costs; its duration goes to first_call), then
    the timed repeats. Returns a timing dict, or a status string if fn raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if first_call is not None:
                first_call.append(time.perf_counter() - t0)
            res = _timing.time_fn(fn, device=device, warmup=1, min_time=args.min_time, max_time=args.max_time)
    except Exception as exc:  # noqa: BLE001 - a failing implementation is recorded, never fatal
        text = short_error(exc)
        del exc
        free_memory()
        return text
    return res


def ratio(num: Any, den: Any) -> Optional[float]:
    if isinstance(num, dict) and isinstance(den, dict) and den["median_s"] > 0:
        return num["median_s"] / den["median_s"]
    return None


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    return _timing.fmt_ms(v["median_s"]) if isinstance(v, dict) else str(v)


def fmt_gbs(x: Optional[float]) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_mib(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "—"
    mib = nbytes / 2**20
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.3g}"


def peak_bandwidth(env: dict, override: Optional[float]) -> tuple[float, str]:
    """(GB/s, where it came from): --peak-gbs, else the device-name table of bench_interpolant.py,
    else the H100 SXM figure."""
    if override:
        return override, "--peak-gbs"
    try:
        from bench_interpolant import peak_bandwidth_gbs

        found = peak_bandwidth_gbs(env.get("device_name", ""))
    except Exception:  # noqa: BLE001 - the table is a convenience
        found = None
    if found:
        return found, f"nominal DRAM bandwidth of {env.get('device_name')}"
    return H100_PEAK_GBS, f"H100 SXM default ({env.get('device_name')} not in the table; pass --peak-gbs)"


class CompileBudget:
    """torch.compile's first calls are slow (seconds each, per case and op): once ``budget_s``
    seconds of first calls are spent, the remaining compile cells are skipped."""

    def __init__(self, budget_s: float):
        self.budget_s, self.spent_s, self.skipped = budget_s, 0.0, 0

    @property
    def exhausted(self) -> bool:
        return self.spent_s >= self.budget_s


# ---------------------------------------------------------------- one case

class Runner:
    def __init__(self, args):
        self.args = args
        self.compile_failures: dict[str, str] = {}
        self.compile_mismatches: dict[str, str] = {}
        self.correctness_failures: list[str] = []
        self.budget = CompileBudget(args.compile_budget)

    def compiled_fn(self, op: str, inp: Inputs, case: Case) -> tuple[Optional[Callable[[], Any]], str]:
        """The torch.compile'd eager callable for op, or (None, why not)."""
        if not self.args.compile:
            return None, "off"
        if self.budget.exhausted:
            self.budget.skipped += 1
            return None, "skipped (compile budget)"
        try:
            if op.startswith("step"):
                cstep = torch.compile(eager_step, dynamic=False)  # argmax: a constant, specialized on
                return make_step("compile", inp, op == "step-argmax", compiled=cstep), ""
            closs = torch.compile(eager_loss, dynamic=False)
            z, zdot, target, s, t = inp.z_leaf, inp.zdot_leaf, inp.target, inp.s, inp.t
            x = inp.x if op == "csd" else None
            return with_backward(lambda: closs(op, z, zdot, target, s, t, x), inp), ""
        except Exception as exc:  # noqa: BLE001
            return None, short_error(exc)

    def run_compile(self, op: str, inp: Inputs, case: Case, device: torch.device, notes: list) -> Any:
        fn, why = self.compiled_fn(op, inp, case)
        if fn is None:
            if why.startswith("failed"):
                self.compile_failures[f"{case.key} {op}"] = why
            return why
        first: list[float] = []
        res = measure(fn, device, self.args, first)
        if first:
            self.budget.spent_s += first[0]
            notes.append(f"compile first call {first[0]:.1f} s")
        if isinstance(res, str):
            if res != "OOM":
                self.compile_failures[f"{case.key} {op}"] = res
            return res
        # Informational: the compiled program computes what the eager one does.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = fn()
                if op.startswith("step"):
                    want = make_step("eager", inp, op == "step-argmax")()
                    err = _rel(got[0], want[0])
                else:
                    want = with_backward(make_loss_forward("eager", op, inp), inp)()
                    err = max(_rel(a, b) for a, b in zip(got, want))
            if not err <= RTOL[case.torch_dtype]:
                self.compile_mismatches[f"{case.key} {op}"] = f"{err:.3g}"
                notes.append(f"compile result deviates from eager by {err:.2g}")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"compile re-check {short_error(exc)}")
        return res

    @staticmethod
    def failed_row(case: Case, op: str, status: str) -> dict:
        return {"case": case.key, "op": op, "B": case.B, "L": case.L, "V": case.V, "dtype": case.dtype,
                "status": status, "times": {}, "notes": []}

    def run_case(self, case: Case, ops: list[str], device: torch.device) -> list[dict]:
        args = self.args
        try:
            inp = make_inputs(case, device)
        except Exception as exc:  # noqa: BLE001
            status = short_error(exc)
            del exc
            free_memory()
            return [self.failed_row(case, op, f"inputs: {status}") for op in ops]
        if args.compile:
            import torch._dynamo as dynamo  # binds only `dynamo`: `torch` stays the module global

            dynamo.reset()  # fresh cache per case: no recompile limit, no stale graphs

        # Correctness first (and the memory measurements, from the same calls): every op of the case.
        checks: dict[str, tuple[dict, dict]] = {}
        failure = None
        for op in ops:
            try:
                checks[op] = check_op(case, op, inp, device)
            except CorrectnessError as exc:
                failure = str(exc)
                break
            except Exception as exc:  # noqa: BLE001 - e.g. OOM of the eager version: report it
                failure = f"{case.key} {op}: check {short_error(exc)}"
                del exc
                break
        if failure is not None:
            print(f"\nbench_simplex: CORRECTNESS FAILURE, case {case.key} not timed: {failure}",
                  file=sys.stderr, flush=True)
            self.correctness_failures.append(failure)
            return [self.failed_row(case, op, f"correctness FAILED: {failure}") for op in ops]

        softmax = measure(lambda: torch.softmax(inp.logits.to(case.acc), -1), device, args)
        raws = []
        for op in ops:
            notes: list[str] = []
            m: dict[str, Any] = {}
            if op.startswith("step"):
                argmax = op == "step-argmax"
                m["ff"] = measure(make_step("ff", inp, argmax), device, args)
                m["eager"] = measure(make_step("eager", inp, argmax), device, args)
                m["kernel"] = None
            else:
                m["ff"] = measure(with_backward(make_loss_forward("ff", op, inp), inp), device, args)
                m["eager"] = measure(with_backward(make_loss_forward("eager", op, inp), inp), device, args)
                m["kernel"] = measure(make_loss_kernel(op, inp, case), device, args)
            m["compile"] = self.run_compile(op, inp, case, device, notes)
            free_memory()
            errs, mem = checks[op]
            nbytes = must_move_bytes(case, op)
            raw = {"case": case.key, "op": op, "B": case.B, "L": case.L, "V": case.V, "dtype": case.dtype,
                   "status": "ok", "times": m, "softmax_only": softmax, "check": errs, "memory": mem,
                   "bytes_must_move": nbytes, "notes": notes}
            for k in ("ff", "kernel"):
                if isinstance(m.get(k), dict):
                    raw[f"gbs_{k}"] = nbytes / m[k]["median_s"] / 1e9
            for k in ("eager", "compile"):
                raw[f"ratio_{k}_over_ff"] = ratio(m.get(k), m.get("ff"))
            raw["ratio_ff_over_softmax"] = ratio(m.get("ff"), softmax) if op.startswith("step") else None
            raws.append(raw)
        inp = None  # release the case's tensors before the next one
        free_memory()
        return raws


def build_row(raw: dict, device: torch.device, peak: Optional[float]) -> dict:
    m = raw.get("times", {})
    row = {"op": OP_LABEL[raw["op"]], "B×L×V": f"{raw['B']}×{raw['L']}×{raw['V']}", "dtype": raw["dtype"]}
    if raw.get("status", "ok") != "ok":
        row["ff fused"] = raw["status"]
        row["notes"] = "; ".join(raw.get("notes", []))
        return row
    mem = raw["memory"]
    row.update({
        "ff fused": fmt(m["ff"]), "eager": fmt(m["eager"]), "compile": fmt(m["compile"]),
        "eager / ff": _timing.fmt_ratio(raw["ratio_eager_over_ff"]),
        "compile / ff": _timing.fmt_ratio(raw["ratio_compile_over_ff"]),
        "ff kernel": fmt(m["kernel"]),
        "torch.softmax": fmt(raw["softmax_only"]) if raw["op"].startswith("step") else "—",
        "ff GB/s": fmt_gbs(raw.get("gbs_ff")),
        "kernel GB/s": fmt_gbs(raw.get("gbs_kernel")),
    })
    if device.type == "cuda":
        for k, col in (("ff", "% peak"), ("kernel", "kernel % peak")):
            gbs = raw.get(f"gbs_{k}")
            if peak and gbs is not None:
                raw[f"pct_peak_{k}"] = 100 * gbs / peak
                row[col] = f"{raw[f'pct_peak_{k}']:.0f}%"
            else:
                row[col] = "—"
    row["BLV tensors ff / eager"] = f"{mem['ff']['blv_tensors']} / {mem['eager']['blv_tensors']}"
    row["peak MiB ff / eager"] = f"{fmt_mib(mem['ff']['peak_bytes'])} / {fmt_mib(mem['eager']['peak_bytes'])}"
    row["max err"] = f"{raw['check']['max_rel_err']:.1e}"
    row["notes"] = "; ".join(raw["notes"])
    return row


def fmt_ns(seconds: float) -> str:
    ns = seconds * 1e9
    return f"{ns:.0f}" if ns >= 10 else f"{ns:.2g}"


def per_element_notes(raws: list[dict]) -> list[str]:
    """Computed from this run: ns per B·L·V element of the fused calls next to torch.softmax, and
    which ops allocate the fused loss's B·L·V tensors."""
    out, by_case = [], {}
    for r in raws:
        if r.get("status") == "ok":
            by_case.setdefault(r["case"], []).append(r)
    for key, rs in by_case.items():
        n = rs[0]["B"] * rs[0]["L"] * rs[0]["V"]
        parts = []
        sm = rs[0]["softmax_only"]
        if isinstance(sm, dict):
            parts.append(f"torch.softmax {fmt_ns(sm['median_s'] / n)}")
        for r in rs:
            for k, label in (("ff", "fused"), ("kernel", "kernel"), ("eager", "eager"), ("compile", "compile")):
                v = r["times"].get(k)
                if isinstance(v, dict):
                    parts.append(f"{OP_LABEL[r['op']]} {label} {fmt_ns(v['median_s'] / n)}")
        out.append(f"ns per element, {key}: " + ", ".join(parts) + ".")
    for r in raws:
        if r.get("status") == "ok" and r["op"] in ("ecld", "csd"):
            ff = r["memory"]["ff"]["blv_tensors_by_op"]
            out.append(f"B·L·V tensors of one fused {OP_LABEL[r['op']]} call ({r['case']}), by op: {ff} "
                       "(simplex_distill_loss: the kernel's two gradients; zeros: the gradients autograd "
                       "materializes for the custom op's two unused gradient outputs; mul (+ _to_copy for 16-bit "
                       "rows): the backward's scaling by the upstream gradient). Eager, by op: "
                       f"{r['memory']['eager']['blv_tensors_by_op']}.")
            break
    return out


def global_notes(runner: Runner, args, device: torch.device, env: dict, peak: Optional[float], peak_src: str,
                 shapes: list, raws: list[dict]) -> list[str]:
    out = [
        "Times: median ms per call (adaptive repeats, `benchmarks/_timing.py`; CUDA events on a GPU). Ratios: "
        "eager (or compile) time / ff fused time (> 1: flowfast faster). Inputs: logits = 2 N(0,1), logits_dot "
        f"~ N(0,1), target = logits + N(0,1), x = softmax(N(0,1)); gamma, s ~ 0.9 U, t ~ U(s, 1) one per "
        f"sequence (B,), in the accumulation dtype (float32 for 16/32-bit rows); seed {SEED}.",
        "step: `flow_map_step(logits, x, gamma, return_argmax=..., validate=False)` (the public op: the "
        "`flowfast::simplex_step` custom op) vs eager `(x + gamma[:,None,None] * (torch.softmax(logits.float(), -1) "
        "- x)).to(x.dtype)` (+ `logits.argmax(-1)`); no gradients. torch.softmax: that softmax alone, the floor "
        "of any softmax-based step in torch.",
        f"ECLD / CSD fwd+bwd: `distill_loss(kind, logits, logits_dot, target, s, t, x=(CSD), ce_weight={CE_WEIGHT:g}, "
        f"td_weight={TD_WEIGHT:g}, validate=False)`, `.mean()`, then `torch.autograd.grad` in logits and "
        "logits_dot (the work of `.backward()` on fresh leaves, without .grad accumulation across repeats). "
        "eager: p = softmax(z), pdot = p (zdot - <p, zdot>), q = softmax(target) (constant), ECLD = "
        "4 CE(q, p) (log_softmax) + 2 gamma^2 |pdot|^2, CSD = |(1-t) dX/dt - (q - X)|^2 with X a stop-gradient "
        "(as the kernel and flowfast.reference.simplex), in float32 for bf16 rows; same mean and backward. "
        "ff kernel: the single `flowfast::simplex_distill_loss` launch (need_grad=True, pre-flattened rows) "
        "without autograd: fwd+bwd minus the wrapper and the backward's scaling pass.",
        "compile: `torch.compile(eager, dynamic=False)` (for the losses AOTAutograd compiles the backward), "
        "compiled once per case and op outside the timed region (first-call time in the notes); "
        f"first calls stop after {args.compile_budget:g} s in all (--compile-budget)."
        + (" Off in this run." if not args.compile else ""),
        "GB/s: bytes that must move / time: step 3 B·L·V elements (read logits, x; write x_new; + 8 B per "
        "position for the argmax), ECLD 5 (read logits, logits_dot, target; write both gradients), CSD 6 "
        "(and read x). ff GB/s uses the fwd+bwd time, kernel GB/s the single launch.",
        "Memory: BLV tensors = how many tensors of B·L·V elements the ops of one call newly allocate "
        "(forward and backward, outputs included; a `TorchDispatchMode` sees every aten op and flowfast's "
        "custom ops, not a kernel's internal scratch). peak MiB = "
        + ("`torch.cuda.max_memory_allocated()` minus the allocation at the start of the call"
           if device.type == "cuda" else
           "the peak of the bytes those newly allocated tensors hold alive at once (tracked per storage)")
        + "; both measured on the correctness-check calls.",
        f"Correctness first: fused vs eager on the full inputs of each case (max |a-b| / max |b| <= "
        f"{RTOL[torch.float32]:g} float32, {RTOL[torch.bfloat16]:g} bf16 for x_new and the gradients; "
        f"{LOSS_RTOL_DEFAULT:g} for the float32 per-position loss; argmax exactly); max err = the largest "
        "of those deviations. A failing case is not timed and the script exits 1.",
    ]
    if device.type == "cuda":
        out.append(f"% peak: of {peak:.0f} GB/s ({peak_src}).")
    else:
        out.append("CPU run: GB/s only (no % of peak). flowfast's CPU kernels run OpenMP threads over rows, "
                   "torch's eager ops its intra-op threads.")
        if any(V >= 4096 and B < 64 for B, _, V in shapes) and not args.shapes_given:
            out.append("CPU default grid: the V = 30522 case runs at B = 8 (the CUDA default is B = 64: 1 GB per "
                       "float32 tensor, too much for the eager loss's temporaries on a 24 GiB host and for a "
                       "10-minute run).")
        if not flowfast.cuda_available():
            out.append("flowfast CUDA: not measured (no usable CUDA device or CPU-only build).")
    out += per_element_notes(raws)
    if runner.budget.skipped:
        out.append(f"compile: {runner.budget.skipped} cell(s) skipped after {runner.budget.spent_s:.0f} s of "
                   "first calls (--compile-budget).")
    if runner.compile_failures:
        first = next(iter(runner.compile_failures.values()))
        out.append(f"torch.compile failed on {len(runner.compile_failures)} cell(s); first: {first}")
    if runner.compile_mismatches:
        out.append(f"torch.compile results deviating from eager: {runner.compile_mismatches}")
    if runner.correctness_failures:
        out.append("CORRECTNESS FAILURES (not timed): " + " | ".join(runner.correctness_failures))
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="auto",
                   help="auto (default): cuda when flowfast can use it, else cpu; all: cpu then cuda")
    p.add_argument("--shapes", type=parse_shape, nargs="+",
                   help="BxLxV cases (default: " + " ".join("x".join(map(str, s)) for s in SHAPES_CUDA)
                   + " on CUDA, " + " ".join("x".join(map(str, s)) for s in SHAPES_CPU) + " on CPU)")
    p.add_argument("--dtypes", choices=sorted(DTYPE_MAP), nargs="+", help=f"storage dtypes (default {list(DTYPES)})")
    p.add_argument("--ops", choices=OPS, nargs="+", help=f"what to time (default {list(OPS)})")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile of the eager versions (default: on; off with --quick)")
    p.add_argument("--compile-budget", type=float, default=COMPILE_BUDGET_S,
                   help="seconds of torch.compile first calls, in all, before the remaining compile cells are "
                        f"skipped (default {COMPILE_BUDGET_S:g})")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="device peak bandwidth for the %% columns, GB/s (default: from the device name, else "
                        f"{H100_PEAK_GBS:g}, the H100 SXM figure)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: shapes " + " ".join("x".join(map(str, s)) for s in SHAPES_QUICK)
                   + ", no compile, short timing; files simplex-quick-*")
    _timing.add_run_args(p, tag_prefix=FAMILY)
    args = p.parse_args(argv)
    args.shapes_given = args.shapes is not None
    if args.quick:
        args.shapes = args.shapes or [tuple(s) for s in SHAPES_QUICK]
        args.compile = False if args.compile is None else args.compile
        args.min_time = 0.05 if args.min_time is None else args.min_time
        args.max_time = 0.3 if args.max_time is None else args.max_time
    args.dtypes = args.dtypes or list(DTYPES)
    args.ops = args.ops or list(OPS)
    args.compile = True if args.compile is None else args.compile
    args.min_time = 0.5 if args.min_time is None else args.min_time
    args.max_time = 5.0 if args.max_time is None else args.max_time
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    requested = args.device
    if requested == "auto":
        requested = "cuda" if flowfast.cuda_available() else "cpu"
    devices = _timing.resolve_devices("bench_simplex", requested)
    if devices is None:
        return 2

    runner = Runner(args)
    t_start = time.perf_counter()
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        shapes = args.shapes or list(SHAPES_CUDA if device.type == "cuda" else SHAPES_CPU)
        cases = [Case(B, L, V, dt) for (B, L, V) in shapes for dt in args.dtypes]
        env = _timing.environment(device)
        peak, peak_src = peak_bandwidth(env, args.peak_gbs) if device.type == "cuda" else (None, "")
        rows, raws = [], []
        for case in cases:
            t0 = time.perf_counter()
            print(f"[{dev_name}] {case.key} ...", end=" ", file=sys.stderr, flush=True)
            for raw in runner.run_case(case, args.ops, device):
                rows.append(build_row(raw, device, peak))
                raws.append(raw)
            print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        _timing.write_results(
            FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else "")
            + (f"-{args.tag}" if args.tag else ""),
            rows, env, args.out,
            notes=global_notes(runner, args, device, env, peak, peak_src, shapes, raws),
            extra={"raw": raws, "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
                   "peak_gbs": peak, "peak_gbs_source": peak_src,
                   "weights": {"ce_weight": CE_WEIGHT, "td_weight": TD_WEIGHT, "min_one_minus_s": MIN_ONE_MINUS_S}},
            title=f"simplex — fused flow-map step and ECLD/CSD loss (fwd+bwd) vs eager torch / torch.compile "
                  f"on {env['device_name']} ({dev_name})",
        )
    print(f"bench_simplex: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if runner.correctness_failures:
        print(f"bench_simplex: {len(runner.correctness_failures)} case(s) failed the correctness check",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
