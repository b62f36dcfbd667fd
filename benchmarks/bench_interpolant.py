#!/usr/bin/env python
"""Benchmark: one conditional-flow-matching loss step, fused kernels vs eager torch vs torchcfm.

One step = draw t ~ U[0, 1] and the path noise, form x_t, evaluate the MSE regression loss against
the conditional velocity u_t given the model output v, and backpropagate to dL/dv. The model itself
is left out: v is a fixed tensor that requires grad (prepared outside the timed region), so only the
path + loss part that the fused kernels replace is timed. Implementations, on identical x0, x1, v:

- **ff fused**: ``flowfast.ops.interpolant.sample`` (x_t, Philox noise drawn in the kernel, no
  noise tensor) + ``flowfast.ops.interpolant.mean_loss`` (recomputes u_t and the noise) + its backward,
  the same calls ``IndependentCFM.loss(fused=True)`` makes, minus the coupling and the model call
  (in eager mode they call the kernels directly; under torch.compile they are the custom ops).
- **eager**: the same path in plain torch ops (``torch.rand`` t, ``torch.randn_like`` noise, x_t,
  u_t, ``mean((v - u_t)**2)``, ``torch.autograd.grad``): the formulas of ``flowfast.paths`` and torchcfm.
- **torchcfm**: ``ConditionalFlowMatcher.sample_location_and_conditional_flow`` (the SB-CFM class
  without its OT coupling, see the notes) + MSE + backward.
- **compile**: ``torch.compile`` of the eager forward (AOTAutograd compiles the backward too);
  a failure is recorded in the table, never fatal.

Correctness first: on the first rows of each case, the fused x_t, loss and dL/dv must equal the
eager formulas evaluated in float64 with the kernel's own noise
(``flowfast.reference.interpolant.noise(..., dtype=)``) within 1e-5 relative (float32; 1e-2 for bf16 storage).

    python benchmarks/bench_interpolant.py                  # full grid, every available device
    python benchmarks/bench_interpolant.py --quick          # smoke run
    python benchmarks/bench_interpolant.py --device cuda --batches 4096 --shapes 3x64x64 --dtypes fp32
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)
from _timing import free_memory, short_error  # noqa: E402

import flowfast  # noqa: E402
from flowfast import reference  # noqa: E402
from flowfast._rng import draw_seed  # noqa: E402
from flowfast.ops import interpolant as iops  # noqa: E402

FAMILY = "interpolant"
SEED = 0
BATCHES = (256, 4096)
SHAPES = ("2", "3x32x32", "3x64x64")
DTYPES = ("fp32", "bf16")
PATHS = ("linear", "bridge")
DTYPE_MAP = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
# sigma per path: I-CFM's usual 0.1; torchcfm's SB-CFM default 1.0 (the timings do not depend on it).
SIGMA = {"linear": 0.1, "bridge": 1.0}
PATH_LABEL = {"linear": "I-CFM (linear)", "bridge": "SB-CFM (bridge)"}
BRIDGE_GUARD = 1e-8  # torchcfm's / flowfast's guard in (1 - 2t) / (2t(1-t) + guard)
CHECK_ROWS = 256  # correctness check on the first rows of each case (the noise is counter-based)
CHECK_SEED, CHECK_OFFSET = 123456789, 2**33 + 7
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 2e-3}
UNSUPPORTED = "not supported by the fused kernel yet"


# ---------------------------------------------------------------- device peak bandwidth

def peak_bandwidth_gbs(name: str) -> Optional[float]:
    """Nominal DRAM bandwidth (GB/s, 1e9) of a few common GPUs, from the device name; None if unknown."""
    n = name.lower()
    if "gh200" in n:
        return 4000.0
    if "h200" in n:
        return 4800.0
    if "h100" in n:
        if "pcie" in n:
            return 2000.0
        if "nvl" in n:
            return 3900.0
        return 3350.0  # SXM5, HBM3 80 GB ("NVIDIA H100 80GB HBM3")
    if "h800" in n:
        return 3350.0
    if "b200" in n:
        return 8000.0
    if "a100" in n:
        if "80gb" in n:
            return 1935.0 if "pcie" in n else 2039.0
        return 1555.0
    if "a800" in n:
        return 2039.0
    if "l40s" in n or "l40" in n:
        return 864.0
    if "l4" in n.split():
        return 300.0
    if "a10g" in n or n.endswith(" a10"):
        return 600.0
    if "4090" in n:
        return 1008.0
    if "3090" in n:
        return 936.0
    if "v100" in n:
        return 900.0
    if "t4" in n.split():
        return 320.0
    return None


# ---------------------------------------------------------------- cases and inputs

@dataclass(frozen=True)
class Case:
    path: str
    shape: tuple
    B: int
    dtype: str

    @property
    def D(self) -> int:
        return math.prod(self.shape)

    @property
    def shape_label(self) -> str:
        return "×".join(str(s) for s in self.shape) if len(self.shape) > 1 else f"d={self.shape[0]}"

    @property
    def key(self) -> str:
        return f"{self.path}-{'x'.join(map(str, self.shape))}-B{self.B}-{self.dtype}"


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(s) for s in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use e.g. 2 or 3x32x32") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}")
    return shape


def make_inputs(case: Case, device: torch.device):
    g = torch.Generator().manual_seed(SEED)
    full = (case.B, *case.shape)
    dt = DTYPE_MAP[case.dtype]
    x0 = torch.randn(full, generator=g).to(device=device, dtype=dt)
    x1 = (torch.randn(full, generator=g) + 1).to(device=device, dtype=dt)
    v = torch.randn(full, generator=g).to(device=device, dtype=dt).requires_grad_(True)
    return x0, x1, v


def bytes_moved(case: Case) -> tuple[int, int]:
    """(unique, kernel passes) bytes of one fused step.

    unique: every tensor the step must touch, once: read x0, x1, v, t; write x_t, dL/dv (no noise
    tensor, no u_t). kernel passes: what the three kernels actually read and write (sample reads
    x0, x1, t and writes x_t; the loss forward reads v, x0, x1, t and writes the per-sample loss;
    the backward reads the upstream (B,) grad, v, x0, x1, t and writes dL/dv).
    """
    es = DTYPE_MAP[case.dtype].itemsize
    B, D = case.B, case.D
    unique = (5 * B * D + B) * es
    passes = (10 * B * D + 5 * B) * es
    return unique, passes


# ---------------------------------------------------------------- the implementations

def eager_terms(kind: str, sigma: float, x0, x1, t, eps):
    """x_t and u_t in plain torch (flowfast.paths / torchcfm formulas)."""
    tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
    mu = tt * x1 + (1 - tt) * x0
    if kind == "linear":
        xt = mu + sigma * eps
        ut = x1 - x0
    else:
        xt = mu + sigma * torch.sqrt(tt * (1 - tt)) * eps
        ut = (1 - 2 * tt) / (2 * tt * (1 - tt) + BRIDGE_GUARD) * (xt - mu) + x1 - x0
    return xt, ut


def make_fused_step(case: Case, x0, x1, v) -> Callable[[], Any]:
    kind, sigma = iops.KINDS[case.path], SIGMA[case.path]
    seed_gen = torch.Generator().manual_seed(SEED + 1)  # CPU generator: no device sync for the seed
    t_gen = torch.Generator(device=x0.device).manual_seed(SEED + 2)

    def step():
        t = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype, generator=t_gen)
        seed, offset = draw_seed(seed_gen)
        # What flowfast.paths calls: the kernels directly in eager mode (the torch.library custom ops,
        # which torch.compile uses, add ~0.1 ms of dispatcher overhead per call on CPU).
        xt, _ = iops.sample(x0, x1, t, None, kind, sigma, seed, offset)
        loss = iops.mean_loss(v, x0, x1, t, None, None, kind, sigma, seed, offset)
        (grad,) = torch.autograd.grad(loss, v)
        return xt, loss, grad

    return step


def make_eager_forward(case: Case, x0, x1, v) -> Callable[[], Any]:
    kind, sigma = case.path, SIGMA[case.path]

    def forward():
        t = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype)
        eps = torch.randn_like(x0)
        xt, ut = eager_terms(kind, sigma, x0, x1, t, eps)
        return xt, torch.mean((v - ut) ** 2)

    return forward


def with_backward(forward: Callable[[], Any], v) -> Callable[[], Any]:
    def step():
        xt, loss = forward()
        (grad,) = torch.autograd.grad(loss, v)
        return xt, loss, grad

    return step


def make_torchcfm_step(case: Case, tcfm, x0, x1, v) -> Callable[[], Any]:
    fm = make_torchcfm_matcher(case, tcfm)
    base = tcfm.ConditionalFlowMatcher.sample_location_and_conditional_flow

    def step():
        t, xt, ut = base(fm, x0, x1)
        loss = torch.mean((v - ut) ** 2)
        (grad,) = torch.autograd.grad(loss, v)
        return xt, loss, grad

    return step


def make_torchcfm_matcher(case: Case, tcfm):
    if case.path == "linear":
        return tcfm.ConditionalFlowMatcher(sigma=SIGMA["linear"])
    return tcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=SIGMA["bridge"])


# ---------------------------------------------------------------- correctness

class CorrectnessError(AssertionError):
    pass


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, tiny), in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def kernel_noise(rows: int, D: int, device, dtype: torch.dtype) -> torch.Tensor:
    """The noise the fused kernels draw for (CHECK_SEED, CHECK_OFFSET), as float64 (rows, D).

    The kernels draw it in double for float64 batches and in float for every other dtype;
    ``reference.interpolant.noise(..., dtype=...)`` reproduces both (older references had no dtype)."""
    try:
        eps = reference.interpolant.noise(CHECK_SEED, CHECK_OFFSET, rows, D, device, dtype=dtype)
    except TypeError:
        eps = reference.interpolant.noise(CHECK_SEED, CHECK_OFFSET, rows, D, device)
    return eps.double()


def check_case(case: Case, x0, x1, v, tcfm) -> dict:
    """Fused vs the float64 eager formulas with the kernel's noise, on the first rows. Raises on mismatch.

    Returns the measured deviations (fused, and eager / torchcfm in the benchmark dtype) for the table.
    """
    rows = min(case.B, CHECK_ROWS)
    dt = DTYPE_MAP[case.dtype]
    kind, sigma = iops.KINDS[case.path], SIGMA[case.path]
    x0c, x1c = x0[:rows].contiguous(), x1[:rows].contiguous()
    vc = v.detach()[:rows].clone().requires_grad_(True)
    g = torch.Generator().manual_seed(SEED + 3)
    t = (torch.rand(rows, generator=g, dtype=torch.float64) * 0.98 + 0.01).to(device=x0.device, dtype=dt)
    numel = vc.numel()

    xt_f, _ = iops.interpolant_sample(x0c, x1c, t, None, kind, sigma, CHECK_SEED, CHECK_OFFSET, False)
    loss_f = iops.interpolant_loss(vc, x0c, x1c, t, None, None, kind, sigma, CHECK_SEED, CHECK_OFFSET).sum() / numel
    (grad_f,) = torch.autograd.grad(loss_f, vc)

    eps64 = kernel_noise(rows, case.D, x0.device, dt).reshape(x0c.shape)
    v64 = vc.detach().double()
    xt64, ut64 = eager_terms(case.path, sigma, x0c.double(), x1c.double(), t.double(), eps64)
    loss64 = torch.mean((v64 - ut64) ** 2)
    grad64 = 2 * (v64 - ut64) / numel

    rtol = RTOL[dt]
    out = {
        "rows": rows,
        "loss_rel_err": abs(float(loss_f.detach()) - float(loss64)) / abs(float(loss64)),
        "xt_rel_err": _rel(xt_f, xt64),
        "grad_rel_err": _rel(grad_f, grad64),
    }
    for name in ("loss_rel_err", "xt_rel_err", "grad_rel_err"):
        if not out[name] <= rtol:
            raise CorrectnessError(f"{case.key}: fused {name.replace('_rel_err', '')} deviates from the float64 "
                                   f"eager formulas by {out[name]:.3g} (> rtol {rtol:g}) with the same noise")

    # Informational: the eager formulas in the benchmark dtype, and torchcfm, with the same t and noise.
    eps_dt = eps64.to(dt)
    xt_e, ut_e = eager_terms(case.path, sigma, x0c, x1c, t, eps_dt)
    loss_e = torch.mean((vc.detach() - ut_e) ** 2)
    out["eager_loss_rel_err"] = abs(float(loss_e) - float(loss64)) / abs(float(loss64))
    if tcfm is not None:
        fm = make_torchcfm_matcher(case, tcfm)
        fm.sample_noise_like = lambda x: eps_dt  # same noise (instance attribute shadows the method)
        _, _, ut_c = tcfm.ConditionalFlowMatcher.sample_location_and_conditional_flow(fm, x0c, x1c, t)
        loss_c = torch.mean((vc.detach() - ut_c) ** 2)
        out["torchcfm_loss_rel_err"] = abs(float(loss_c) - float(loss64)) / abs(float(loss64))
    return out


# ---------------------------------------------------------------- measuring

# is_oom, free_memory, short_error: benchmarks/_timing.py


def measure(fn: Callable[[], Any], device: torch.device, args, first_call_note: Optional[list] = None):
    """First call (untimed: pays compilation / one-time costs), then the timed repeats.
    Returns a timing dict or a status string. Exceptions become the status."""
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        first = time.perf_counter() - t0
        if first_call_note is not None:
            first_call_note.append(first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _timing.time_fn(fn, device=device, warmup=1, min_time=args.min_time, max_time=args.max_time)
    except Exception as exc:  # noqa: BLE001 - a failing implementation is recorded, never fatal
        text = short_error(exc)
        del exc
        free_memory()
        return text
    free_memory()
    return res


def fmt(v: Any) -> str:
    return _timing.fmt_ms(v["median_s"]) if isinstance(v, dict) else str(v)


def fmt_gbs(x: Optional[float]) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def ratio(num: Any, den: Any) -> Optional[float]:
    if isinstance(num, dict) and isinstance(den, dict) and den["median_s"] > 0:
        return num["median_s"] / den["median_s"]
    return None


class Runner:
    def __init__(self, args):
        self.args = args
        self.peers, self.missing = _timing.import_optional({"torchcfm": _timing.load_torchcfm_matchers})
        self.tcfm = self.peers.get("torchcfm")
        self.compile_failures: dict[str, str] = {}
        self.unsupported: set[str] = set()

    def run_case(self, case: Case, device: torch.device) -> tuple[dict, dict]:
        args = self.args
        notes: list[str] = []
        m: dict[str, Any] = {}
        try:
            x0, x1, v = make_inputs(case, device)
        except Exception as exc:  # noqa: BLE001
            status = short_error(exc)
            del exc
            free_memory()
            return {k: status for k in ("ff", "eager", "torchcfm", "compile")}, {"notes": [f"inputs: {status}"]}

        # flowfast fused (correctness first; an unsupported dtype is a status, not a failure)
        check: dict = {}
        try:
            check = check_case(case, x0, x1, v, self.tcfm)
            ff_ok = True
        except CorrectnessError:
            raise
        except Exception as exc:  # noqa: BLE001
            ff_ok = False
            text = short_error(exc)
            lowp = DTYPE_MAP[case.dtype] in (torch.float16, torch.bfloat16)
            m["ff"] = UNSUPPORTED if lowp and text != "OOM" else text
            if lowp and text != "OOM":
                notes.append(f"fused op raised {text[len('failed: '):]}")
                self.unsupported.add(case.dtype)
            del exc
            free_memory()
        if ff_ok:
            m["ff"] = measure(make_fused_step(case, x0, x1, v), device, args)

        m["eager"] = measure(with_backward(make_eager_forward(case, x0, x1, v), v), device, args)

        if self.tcfm is None:
            m["torchcfm"] = "not installed"
        else:
            m["torchcfm"] = measure(make_torchcfm_step(case, self.tcfm, x0, x1, v), device, args)

        if not args.compile:
            m["compile"] = "off (--no-compile)"
        else:
            first: list[float] = []
            try:
                import torch._dynamo

                torch._dynamo.reset()  # fresh cache per case: no recompile limit, no stale graphs
                compiled = torch.compile(make_eager_forward(case, x0, x1, v), dynamic=False)
            except Exception as exc:  # noqa: BLE001
                m["compile"] = short_error(exc)
                del exc
            else:
                m["compile"] = measure(with_backward(compiled, v), device, args, first)
            if isinstance(m["compile"], str) and m["compile"] != "OOM":
                self.compile_failures[case.key] = m["compile"]
            if first:
                notes.append(f"compile: first call {first[0]:.1f} s")

        del x0, x1, v
        free_memory()

        unique, passes = bytes_moved(case)
        raw = {"case": case.key, "path": case.path, "shape": list(case.shape), "B": case.B, "dtype": case.dtype,
               "D": case.D, "times": m, "check": check, "bytes_unique": unique, "bytes_kernel_passes": passes,
               "notes": notes}
        ff = m.get("ff")
        if isinstance(ff, dict):
            raw["gbs_unique"] = unique / ff["median_s"] / 1e9
            raw["gbs_passes"] = passes / ff["median_s"] / 1e9
        for k in ("eager", "torchcfm", "compile"):
            raw[f"ratio_{k}_over_ff"] = ratio(m.get(k), ff)
        return m, raw


def build_row(case: Case, raw: dict, device: torch.device, peak: Optional[float]) -> dict:
    m = raw["times"]
    row = {
        "path": PATH_LABEL[case.path], "shape": case.shape_label, "B": case.B, "dtype": case.dtype,
        "ff fused": fmt(m["ff"]), "eager": fmt(m["eager"]), "torchcfm": fmt(m["torchcfm"]),
        "compile": fmt(m["compile"]),
        "eager / ff": _timing.fmt_ratio(raw["ratio_eager_over_ff"]),
        "torchcfm / ff": _timing.fmt_ratio(raw["ratio_torchcfm_over_ff"]),
        "compile / ff": _timing.fmt_ratio(raw["ratio_compile_over_ff"]),
        "ff GB/s": fmt_gbs(raw.get("gbs_unique")),
        "ff GB/s (passes)": fmt_gbs(raw.get("gbs_passes")),
    }
    if device.type == "cuda":
        if peak and "gbs_unique" in raw:
            raw["pct_peak_unique"] = 100 * raw["gbs_unique"] / peak
            raw["pct_peak_passes"] = 100 * raw["gbs_passes"] / peak
            row["% peak"] = f"{raw['pct_peak_unique']:.0f}%"
            row["% peak (passes)"] = f"{raw['pct_peak_passes']:.0f}%"
        else:
            row["% peak"] = row["% peak (passes)"] = "—"
    check = raw.get("check") or {}
    row["Δloss"] = f"{check['loss_rel_err']:.1e}" if "loss_rel_err" in check else "—"
    row["notes"] = "; ".join(raw["notes"])
    return row


def global_notes(runner: Runner, device: torch.device, env: dict, peak: Optional[float]) -> list[str]:
    out = [
        "One step = draw t ~ U[0,1] and the noise, x_t, the MSE against u_t given the model output v, and "
        "dL/dv (`torch.autograd.grad`). v is a fixed tensor requiring grad (no model), x0 ~ N(0, I), "
        f"x1 ~ N(0, I) + 1, seed {SEED}; every implementation returns x_t so nothing is dead code. Times: "
        "median ms per step (adaptive repeats, `benchmarks/_timing.py`; CUDA events on a GPU). Ratios: "
        "row time / ff fused time (> 1: flowfast faster).",
        "ff fused: `sample(x0, x1, t, None, kind, sigma, seed, offset)` + `mean_loss(v, ...)` (the loss kernel's "
        "per-sample sums, summed and divided by numel, as one autograd node) + "
        "backward (`flowfast.ops.interpolant`, the calls `flowfast.paths` makes: the kernels directly in eager "
        "mode, the torch.library custom ops under torch.compile; Philox noise from (seed, offset), no noise "
        "tensor, u_t recomputed in the loss kernels). (seed, offset) come from a CPU generator "
        "(`draw_seed`), t from `torch.rand` on the device.",
        "eager: t = `torch.rand`, eps = `torch.randn_like(x0)`, mu = t x1 + (1-t) x0, x_t = mu + sigma_t eps, "
        "u_t = x1 - x0 (I-CFM) or (1-2t)/(2t(1-t)+1e-8) (x_t - mu) + x1 - x0 (SB-CFM, sigma_t = sigma "
        "sqrt(t(1-t))), `torch.mean((v - u_t)**2)`. compile: `torch.compile(forward, dynamic=False)` of that "
        "forward (backward by AOTAutograd), compiled once per case outside the timed region.",
        "torchcfm: `ConditionalFlowMatcher.sample_location_and_conditional_flow(fm, x0, x1)` with fm = "
        f"`ConditionalFlowMatcher(sigma={SIGMA['linear']})` or `SchrodingerBridgeConditionalFlowMatcher("
        f"sigma={SIGMA['bridge']})` (the base-class method, i.e. SB-CFM's path and target without its OT "
        "re-pairing, which is not part of this kernel), then `torch.mean((v - ut)**2)` and backward. "
        "torchcfm draws t on the CPU and copies it to the device (`torch.rand(B).type_as(x0)`), as in training.",
        f"sigma: I-CFM {SIGMA['linear']}, SB-CFM {SIGMA['bridge']}.",
        "ff GB/s: unique bytes / time, counting one read of x0, x1, v, t and one write of x_t and dL/dv "
        "(5 B·D + B elements; no noise, no u_t). ff GB/s (passes): the bytes the three kernels really move "
        "(sample: x0, x1, t -> x_t; loss: v, x0, x1, t -> (B,); backward: (B,), v, x0, x1, t -> dL/dv; "
        "10 B·D + 5 B elements).",
        f"Correctness first: on the first {CHECK_ROWS} rows of each case (t ∈ [0.01, 0.99]), the fused x_t, "
        "loss and dL/dv equal the eager formulas evaluated in float64 with the kernel's noise "
        "(`flowfast.reference.interpolant.noise(seed, offset, B, D, dtype=dtype)`) within rtol "
        f"{RTOL[torch.float32]:g} (float32) / {RTOL[torch.bfloat16]:g} (bf16 storage); the script aborts "
        "otherwise. Δloss = that relative loss error. The JSON also has the eager-in-dtype and torchcfm "
        "loss errors against the same float64 value.",
    ]
    if device.type == "cuda":
        if peak:
            out.append(f"% peak: of {peak:.0f} GB/s, the nominal DRAM bandwidth of {env.get('device_name')} "
                       "(table in the script; override with --peak-gbs).")
        else:
            out.append(f"% peak: unknown peak bandwidth for {env.get('device_name')} (pass --peak-gbs).")
    else:
        out.append("CPU run: GB/s only (no % of peak). flowfast's CPU kernels run OpenMP threads, torch's "
                   "eager ops its intra-op threads.")
        if not flowfast.cuda_available():
            out.append("flowfast CUDA: not measured (no usable CUDA device or CPU-only build).")
    if runner.unsupported:
        out.append(f"ff fused '{UNSUPPORTED}' ({', '.join(sorted(runner.unsupported))}): the fused ops raised for "
                   "that storage dtype; `path.loss(fused=True)` then runs the eager formulas.")
    if runner.compile_failures:
        first = next(iter(runner.compile_failures.values()))
        out.append(f"torch.compile failed on {len(runner.compile_failures)} case(s) on this device; first: {first}")
    for key, why in runner.missing.items():
        out.append(f"{key}: {why}")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="device(s) to benchmark (default: all available)")
    p.add_argument("--batches", type=int, nargs="+", help=f"batch sizes B (default {list(BATCHES)})")
    p.add_argument("--shapes", type=parse_shape, nargs="+",
                   help=f"per-sample shapes, e.g. 2 3x32x32 (default {list(SHAPES)})")
    p.add_argument("--dtypes", choices=sorted(DTYPE_MAP), nargs="+", help=f"storage dtypes (default {list(DTYPES)})")
    p.add_argument("--paths", choices=PATHS, nargs="+", help=f"interpolant paths (default {list(PATHS)})")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile of the eager step (default: on; off with --quick)")
    p.add_argument("--peak-gbs", type=float, default=None, help="device peak bandwidth for the %% column (GB/s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: B=256, shapes 2 and 3x32x32, no compile, short timing; files interpolant-quick-*")
    _timing.add_run_args(p, tag_prefix="interpolant")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = args.batches or [256]
        args.shapes = args.shapes or [(2,), (3, 32, 32)]
        args.compile = False if args.compile is None else args.compile
        args.min_time = 0.2 if args.min_time is None else args.min_time
        args.max_time = 1.0 if args.max_time is None else args.max_time
    args.batches = args.batches or list(BATCHES)
    args.shapes = args.shapes or [parse_shape(s) for s in SHAPES]
    args.dtypes = args.dtypes or list(DTYPES)
    args.paths = args.paths or list(PATHS)
    args.compile = True if args.compile is None else args.compile
    args.min_time = 0.5 if args.min_time is None else args.min_time
    args.max_time = 5.0 if args.max_time is None else args.max_time
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = _timing.resolve_devices("bench_interpolant", args.device)
    if devices is None:
        return 2

    cases = [Case(path, shape, B, dt) for path in args.paths for shape in args.shapes
             for B in args.batches for dt in args.dtypes]
    runner = Runner(args)
    t_start = time.perf_counter()
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        env = _timing.environment(device)
        peak = args.peak_gbs or (peak_bandwidth_gbs(env["device_name"]) if device.type == "cuda" else None)
        rows, raws = [], []
        for case in cases:
            t0 = time.perf_counter()
            print(f"[{dev_name}] {case.key} ...", end=" ", file=sys.stderr, flush=True)
            _, raw = runner.run_case(case, device)
            rows.append(build_row(case, raw, device, peak))
            raws.append(raw)
            print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        _timing.write_results(
            FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else "")
            + (f"-{args.tag}" if args.tag else ""),
            rows, env, args.out,
            notes=global_notes(runner, device, env, peak),
            extra={"raw": raws, "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
                   "peak_gbs": peak, "sigma": SIGMA},
            title=f"interpolant — fused CFM loss step (fwd+bwd) vs eager torch / torchcfm / torch.compile "
                  f"on {env['device_name']} ({dev_name})",
        )
    print(f"bench_interpolant: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
