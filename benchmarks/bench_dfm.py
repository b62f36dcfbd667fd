#!/usr/bin/env python
"""Benchmark: the `dfm` inversion kernel (one backward step of PairFlow's closed-form inversion)
vs the straightforward torch implementation that materialises the B x N match counts and weights.

What is timed, per case (N training sequences of D tokens over V symbols, B queries, time t):

- **flowfast**: ``flowfast.ops.dfm.inversion_step(keys, x, V, t, h, seed=1, offset=2,
  validate=False)`` on the device: the fused kernel (match counts by popcount over the packed
  words, online softmax over the keys, per-token posterior sums, Philox keep/jump draws); neither
  the B x N counts nor the weights are ever stored.
- **torch**: the same call with ``backend="torch"``, i.e. ``flowfast.reference.dfm.inversion_step``
  on the same device: it unpacks the keys to an (N, D) int64 tensor (a few % of its time), builds
  the B x N match counts and float64 weights (comparisons in chunks of 2^24 elements) and the
  posterior sums, then the same Philox draws. Ratio = torch time / flowfast time.

One step of size h = 0.05 (20 steps) at t = 1 (the first step: the posterior is uniform over the
exact nearest matches, the kernel skips every other key after counting) and t = 0.5 (weights
gamma^(m - M) with gamma = 1 + V: keys within about (36 + ln N) / ln(1 + V) matches of the best
one weigh). Data: 4 random prototypes, 15% of the tokens redrawn uniformly (seed 0), so
posteriors are neither flat nor point masses; the queries are the first B training rows. The keys
are packed once per (N, D, V) outside the timed region (``pack_tokens``, its time reported).

Reported: median ms of both, the ratio, token comparisons per second B*N*D / time and packed
64-bit words compared per second B*N*W / time (W = words per sequence) of flowfast; on CUDA also
% of the popcount peak: SMs x POPC/clock/SM (the CUDA C++ Programming Guide's arithmetic
instruction throughput table: 16 for compute capability 7.x, 8.x and 9.0; no peak for others
unless --popc-per-sm-clock) x the maximum SM clock (torch.cuda.get_device_properties().clock_rate,
else nvidia-smi, or --sm-clock-mhz) / 2 (a 64-bit popcount is two 32-bit POPCs): words/s the POPC
units alone could count, a ceiling (the kernel also xors, masks and sums), not a target. No peak on
the CPU.

Also one ``pairflow_pairs`` row: pairing a whole small data set end to end (every row inverted
against all of them over K steps), backend "auto" vs "torch", the same generator seed.

Correctness first: before a case is timed, flowfast's (x_new, posterior, best) must match the
torch version on the same inputs: best counts exactly, posteriors within 1e-5, x_new equal on at
least 99.9% of the tokens (the same Philox draws; a rounding difference at a threshold may flip
one). A reference too slow for the grid (B*N*D above --torch-max-elements) is not timed ("skipped
(too slow)") and the check runs on the first k queries only (k*N*D within the limit, at least 1;
the draws do not depend on the batch). A failing case is not timed, the row says why and the
script exits with status 1 after writing its files. The pairflow row runs the (slow) torch
pairing once, which is both its timing and its check; a failed check drops the row's timings.

    python benchmarks/bench_dfm.py                  # default grid on CUDA if available, else CPU
    python benchmarks/bench_dfm.py --quick          # smoke run, well under a minute
    python benchmarks/bench_dfm.py --device all     # CPU grid (B = 32), then the CUDA grid (B = 1024)
    python benchmarks/bench_dfm.py --device cpu --sizes 100000 --dims 784 --vocabs 2 --torch-max-elements 3e9
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)
from _timing import free_memory, is_oom, short_error  # noqa: E402

import flowfast  # noqa: E402
from flowfast.discrete.pairflow import pairflow_pairs  # noqa: E402
from flowfast.ops import dfm as ops  # noqa: E402

FAMILY = "dfm"
SEED = 0
PROTOTYPES, FLIP = 4, 0.15
H = 0.05  # the timed step: t -> t - H
STEP_SEED, STEP_OFFSET = 1, 2
# Default grids: the N, D, V on both devices; B = 1024 queries on CUDA, 32 on the CPU.
SIZES, DIMS, VOCABS, TIMES = (10_000, 100_000), (32, 64, 784), (2, 40, 256), (1.0, 0.5)
BATCH = {"cuda": 1024, "cpu": 32}
QUICK_SIZES, QUICK_DIMS, QUICK_VOCABS, QUICK_BATCH = (2000,), (32, 784), (2, 40), 16
# The torch reference costs about 20 ns per comparison on one loaded CPU core: 3e8 comparisons
# (~6 s a call) keeps a full CPU run within minutes; the CUDA grid peaks at 8e10.
TORCH_MAX_ELEMENTS = {"cuda": 1e11, "cpu": 3e8}
# pairflow_pairs row: N x D x V x K steps.
PAIRFLOW = {"cuda": (2000, 64, 40, 20), "cpu": (1000, 64, 40, 20)}
PAIRFLOW_QUICK = (300, 32, 40, 20)
POSTERIOR_ATOL = 1e-5
MIN_AGREEMENT = 0.999
# 32-bit POPC instructions per clock per SM by compute capability major (CUDA C++ Programming
# Guide, "Throughput of Native Arithmetic Instructions", population count: 7.x, 8.x and 9.0).
POPC_PER_SM_CLOCK = {7: 16, 8: 16, 9: 16}


# ---------------------------------------------------------------- inputs and the two implementations

def make_data(n: int, length: int, vocab: int) -> torch.Tensor:
    """(n, length) tokens on the CPU: PROTOTYPES random sequences, FLIP of the tokens redrawn."""
    g = torch.Generator().manual_seed(SEED)
    protos = torch.randint(0, vocab, (PROTOTYPES, length), generator=g)
    rows = protos[torch.randint(0, PROTOTYPES, (n,), generator=g)]
    noise = torch.randint(0, vocab, (n, length), generator=g)
    data = torch.where(torch.rand((n, length), generator=g) < FLIP, noise, rows)
    return data.to(torch.uint8 if vocab <= 256 else torch.int32)


def flowfast_step(keys: torch.Tensor, x: torch.Tensor, vocab: int, t: float):
    return ops.inversion_step(keys, x, vocab, t, H, seed=STEP_SEED, offset=STEP_OFFSET, validate=False)


def reference_step(keys: torch.Tensor, x: torch.Tensor, vocab: int, t: float):
    """The straightforward torch version (flowfast.reference.dfm through backend="torch")."""
    return ops.inversion_step(keys, x, vocab, t, H, seed=STEP_SEED, offset=STEP_OFFSET, validate=False,
                              backend="torch")


def reference_pairs(data: torch.Tensor, vocab: int, steps: int) -> torch.Tensor:
    return pairflow_pairs(data, vocab, steps=steps, generator=torch.Generator().manual_seed(SEED), backend="torch")


def flowfast_pairs(data: torch.Tensor, vocab: int, steps: int) -> torch.Tensor:
    return pairflow_pairs(data, vocab, steps=steps, generator=torch.Generator().manual_seed(SEED), backend="auto")


# ---------------------------------------------------------------- correctness

def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu().long() == b.cpu().long()).double().mean().item()


def check_step(got, want) -> tuple[Optional[str], dict]:
    """(problem or None, numbers) of flowfast's (x_new, posterior, best) against the reference's."""
    (x_new, post, best), (wx, wp, wb) = ([o.cpu() for o in r] for r in (got, want))
    if x_new.shape != wx.shape or post.shape != wp.shape or best.shape != wb.shape:
        return (f"shapes differ: flowfast {tuple(x_new.shape)}, {tuple(post.shape)}, {tuple(best.shape)} vs "
                f"torch {tuple(wx.shape)}, {tuple(wp.shape)}, {tuple(wb.shape)}"), {}
    stats = {"best_mismatches": int((best.long() != wb.long()).sum()),
             "posterior_max_err": (post.double() - wp.double()).abs().max().item(),
             "x_new_agreement": agreement(x_new, wx)}
    if stats["best_mismatches"]:
        return f"best match counts differ on {stats['best_mismatches']} of {best.numel()} queries", stats
    if not stats["posterior_max_err"] <= POSTERIOR_ATOL:  # also catches NaN
        return f"posterior differs by {stats['posterior_max_err']:.3g} > {POSTERIOR_ATOL:g}", stats
    if not stats["x_new_agreement"] >= MIN_AGREEMENT:
        return f"x_new equal on only {stats['x_new_agreement']:.4%} of the tokens (< {MIN_AGREEMENT:.1%})", stats
    return None, stats


# ---------------------------------------------------------------- the popcount peak (CUDA)

def sm_clock_hz(device: torch.device, override_mhz: Optional[float]) -> tuple[Optional[float], str]:
    """(maximum SM clock in Hz, where it came from) or (None, why not)."""
    if override_mhz:
        return override_mhz * 1e6, "--sm-clock-mhz"
    khz = getattr(torch.cuda.get_device_properties(device), "clock_rate", None)  # cudaDevAttrClockRate, kHz
    if khz and 1e5 <= khz <= 1e7:  # 0.1 to 10 GHz, else not trusted
        return float(khz) * 1e3, "torch.cuda.get_device_properties().clock_rate"
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(device.index or 0), "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0]) * 1e6, "nvidia-smi clocks.max.sm"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None, "no SM clock (torch gives no clock_rate, nvidia-smi failed; pass --sm-clock-mhz)"


def popcount_peak(device: torch.device, args) -> tuple[Optional[float], str]:
    """(64-bit words per second the SMs' POPC units can count, how it was computed) or (None, why)."""
    props = torch.cuda.get_device_properties(device)
    per_clock = args.popc_per_sm_clock or POPC_PER_SM_CLOCK.get(props.major)
    if props.major == 9 and props.minor != 0 and not args.popc_per_sm_clock:
        per_clock = None
    if not per_clock:
        return None, (f"no popcount peak: compute capability {props.major}.{props.minor} is not in the table "
                      "(7.x, 8.x, 9.0); pass --popc-per-sm-clock")
    clock, clock_src = sm_clock_hz(device, args.sm_clock_mhz)
    if clock is None:
        return None, f"no popcount peak: {clock_src}"
    src = "--popc-per-sm-clock" if args.popc_per_sm_clock else "CUDA C++ Programming Guide throughput table"
    peak = props.multi_processor_count * per_clock * clock / 2
    return peak, (f"popcount peak {peak / 1e9:.0f} Gwords/s = {props.multi_processor_count} SMs x {per_clock} "
                  f"POPC/clock/SM ({src}, compute capability {props.major}.{props.minor}) x {clock / 1e6:.0f} MHz "
                  f"({clock_src}) / 2 POPC per 64-bit word")


# ---------------------------------------------------------------- timing helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, args, **kw) -> dict:
    return _timing.time_fn(fn, device=device, min_time=args.min_time, max_time=args.max_time, **kw)


def fmt_rate(x: Optional[float]) -> Optional[str]:
    if x is None:
        return None
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


# ---------------------------------------------------------------- one inversion-step case

def display(row: dict) -> dict:
    """The table cells of a row (the raw numbers stay in the row for the JSON)."""
    row["flowfast ms"] = _timing.fmt_ms(row.get("flowfast_s"))
    if row.get("torch_s") is not None:
        row["torch ms"] = _timing.fmt_ms(row["torch_s"])
    row["torch / ff"] = _timing.fmt_ratio(row.get("ratio"))
    row["Gcmp/s"] = fmt_rate(row["cmp_per_s"] / 1e9) if row.get("cmp_per_s") else None
    row["Gwords/s"] = fmt_rate(row["words_per_s"] / 1e9) if row.get("words_per_s") else None
    pct = row.get("popc_peak_pct")
    row["% popc peak"] = None if pct is None else f"{pct:.3g}"
    return row


def run_step_case(n: int, length: int, vocab: int, batch: int, t: float, device: torch.device, args,
                  data: torch.Tensor, keys: torch.Tensor, pack_s: float, peak: Optional[float]) -> dict:
    """One (N, D, V, B, t) row: check flowfast against the reference, then time both."""
    W = keys.shape[1]
    row: dict = {"case": "step", "N": n, "D": length, "V": vocab, "B": batch, "t": t, "W": W,
                 "device": str(device), "pack_s": pack_s, "pack ms": _timing.fmt_ms(pack_s)}
    x = data[:batch].to(device=device, dtype=torch.int32)
    elements = batch * n * length
    limit = args.torch_max_elements
    # The reference on the first k queries only where all B are too slow (the draws of a query do
    # not depend on the batch).
    check_rows = batch if elements <= limit else max(1, min(batch, int(limit // (n * length))))
    row["checked"] = f"{check_rows}/{batch}"
    try:
        got = flowfast_step(keys, x, vocab, t)
        sync(device)
    except Exception as exc:  # noqa: BLE001 - recorded; the script exits 1
        row["status"], row["failed"] = f"flowfast {short_error(exc)}", True
        return display(row)
    try:
        want = reference_step(keys, x[:check_rows], vocab, t)
        sync(device)
    except Exception as exc:  # noqa: BLE001
        oom, text = is_oom(exc), short_error(exc)
        del exc
        free_memory()
        if not oom:  # the reference is flowfast's own code: an error there is a bug
            row["status"], row["failed"] = f"torch reference {text}", True
            return display(row)
        want = None
        row["torch ms"], row["checked"] = "OOM", f"0/{batch}"
    if want is not None:
        problem, stats = check_step(tuple(o[:check_rows] for o in got), want)
        row.update(stats)
        if problem:
            row["status"], row["failed"] = f"FAILED: {problem}", True
            print(f"bench_dfm: CORRECTNESS FAILURE N={n} D={length} V={vocab} B={batch} t={t:g}: {problem}",
                  file=sys.stderr, flush=True)
            return display(row)
    checked = want is not None
    del got, want
    ff = timed(lambda: flowfast_step(keys, x, vocab, t), device, args, warmup=1)
    row["flowfast"], row["flowfast_s"] = ff, ff["median_s"]
    row["cmp_per_s"] = elements / ff["median_s"]
    row["words_per_s"] = batch * n * W / ff["median_s"]
    if device.type == "cuda":
        row["popc_peak_pct"] = None if peak is None else 100 * row["words_per_s"] / peak
    if not checked:
        row["status"] = "ok (unchecked: torch reference OOM)"
    elif check_rows < batch:
        row["torch ms"] = f"skipped (too slow: B·N·D = {elements:.2g} > {limit:.2g})"
        row["status"] = f"ok (checked the first {check_rows} of {batch} queries)"
    else:
        try:  # the correctness call was its warm-up
            tr = timed(lambda: reference_step(keys, x, vocab, t), device, args, warmup=0)
            row["torch"], row["torch_s"] = tr, tr["median_s"]
            row["ratio"] = tr["median_s"] / ff["median_s"]
        except Exception as exc:  # noqa: BLE001 - an OOM in a later repeat: recorded, never fatal
            row["torch ms"] = short_error(exc)
            del exc
            free_memory()
        row["status"] = "ok"
    return display(row)


def run_dataset(n: int, length: int, vocab: int, batch: int, device: torch.device, args,
                peak: Optional[float]) -> list[dict]:
    """The rows of one training set (N, D, V): packed once (timed), then one row per t."""
    free_memory()
    data = make_data(n, length, vocab).to(device)
    keys = ops.pack_tokens(data, vocab)
    pack = _timing.time_fn(lambda: ops.pack_tokens(data, vocab, validate=False), device=device, warmup=1,
                           min_time=min(args.min_time, 0.2), max_time=args.max_time)
    rows = []
    for t in args.times:
        t0 = time.perf_counter()
        print(f"[{device}] N={n} D={length} V={vocab} B={batch} t={t:g} ...", end=" ", file=sys.stderr, flush=True)
        rows.append(run_step_case(n, length, vocab, batch, t, device, args, data, keys, pack["median_s"], peak))
        print(f"{rows[-1]['status']} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------- pairflow_pairs, end to end

def run_pairflow(n: int, length: int, vocab: int, steps: int, device: torch.device, args) -> dict:
    row: dict = {"case": "pairflow_pairs", "N": n, "D": length, "V": vocab, "B": n, "t": f"1 → 0 ({steps} steps)",
                 "W": ops.packed_words(vocab, length), "device": str(device), "checked": f"{n}/{n}"}
    data = make_data(n, length, vocab).to(device)
    try:
        got = flowfast_pairs(data, vocab, steps)
        sync(device)
    except Exception as exc:  # noqa: BLE001
        row["status"], row["failed"] = f"flowfast {short_error(exc)}", True
        return display(row)
    out: list = []
    try:  # too slow to run twice: its single run is both the check and the timing
        tr = _timing.time_fn(lambda: out.append(reference_pairs(data, vocab, steps)), device=device, warmup=0,
                             repeats=1)
    except Exception as exc:  # noqa: BLE001
        oom, text = is_oom(exc), short_error(exc)
        del exc
        free_memory()
        if not oom:
            row["status"], row["failed"] = f"torch reference {text}", True
            return display(row)
        tr = None
        row["torch ms"], row["checked"] = "OOM", f"0/{n}"
    if tr is not None:
        want = out[0]
        row["x0_agreement"] = agree = agreement(got, want) if got.shape == want.shape else 0.0
        if not agree >= MIN_AGREEMENT:
            problem = f"x0 equal on only {agree:.4%} of the tokens (< {MIN_AGREEMENT:.1%})"
            row["status"], row["failed"] = f"FAILED: {problem}", True
            print(f"bench_dfm: CORRECTNESS FAILURE pairflow_pairs N={n} D={length} V={vocab}: {problem}",
                  file=sys.stderr, flush=True)
            return display(row)
    del got
    ff = timed(lambda: flowfast_pairs(data, vocab, steps), device, args, warmup=0)
    row["flowfast"] = ff
    row["flowfast_s"] = ff["median_s"]
    row["cmp_per_s"] = steps * n * n * length / ff["median_s"]
    row["words_per_s"] = steps * n * n * row["W"] / ff["median_s"]
    if tr is not None:
        row["torch"], row["torch_s"] = tr, tr["median_s"]
        row["ratio"] = tr["median_s"] / ff["median_s"]
        row["status"] = "ok"
    else:
        row["status"] = "ok (unchecked: torch reference OOM)"
    return display(row)


# ---------------------------------------------------------------- main

def parse_pairflow(text: str):
    if text.lower() in ("none", "off", "0"):
        return ()
    try:
        parts = tuple(int(s) for s in text.lower().replace("×", "x").split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 4 or any(p < 1 for p in parts):
        raise argparse.ArgumentTypeError(f"bad --pairflow {text!r}: use NxDxVxSTEPS (e.g. 2000x64x40x20) or none")
    return parts


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="auto",
                   help="auto (default): cuda when flowfast can use it, else cpu; all: cpu then cuda")
    p.add_argument("--sizes", type=int, nargs="+", help=f"N training sequences (default {list(SIZES)})")
    p.add_argument("--dims", type=int, nargs="+", help=f"D tokens per sequence (default {list(DIMS)})")
    p.add_argument("--vocabs", type=int, nargs="+", help=f"V vocabulary sizes (default {list(VOCABS)})")
    p.add_argument("--batch", type=int, default=None,
                   help=f"B queries per step (default {BATCH['cuda']} on CUDA, {BATCH['cpu']} on the CPU)")
    p.add_argument("--times", type=float, nargs="+", help=f"t of the timed step t -> t - {H:g} (default {list(TIMES)})")
    p.add_argument("--torch-max-elements", type=float, default=None,
                   help="do not time the torch reference above B*N*D comparisons, check the first queries only "
                        f"(default {TORCH_MAX_ELEMENTS['cuda']:g} on CUDA, {TORCH_MAX_ELEMENTS['cpu']:g} on the CPU)")
    p.add_argument("--pairflow", type=parse_pairflow, default=None,
                   help="the pairflow_pairs row, NxDxVxSTEPS or none (default " + "x".join(map(str, PAIRFLOW["cuda"]))
                        + " on CUDA, " + "x".join(map(str, PAIRFLOW["cpu"])) + " on the CPU)")
    p.add_argument("--sm-clock-mhz", type=float, default=None, help="SM clock for the popcount peak (CUDA)")
    p.add_argument("--popc-per-sm-clock", type=int, default=None,
                   help="32-bit POPC per clock per SM for the popcount peak (default: 16 for compute capability "
                        "7.x, 8.x, 9.0; no peak otherwise)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: N = {QUICK_SIZES[0]}, D in {list(QUICK_DIMS)}, V in {list(QUICK_VOCABS)}, "
                        f"B = {QUICK_BATCH}, pairflow " + "x".join(map(str, PAIRFLOW_QUICK))
                        + ", short timing; files dfm-quick-*")
    _timing.add_run_args(p, tag_prefix=FAMILY)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or list(QUICK_SIZES)
        args.dims = args.dims or list(QUICK_DIMS)
        args.vocabs = args.vocabs or list(QUICK_VOCABS)
        args.batch = args.batch or QUICK_BATCH
        if args.pairflow is None:
            args.pairflow = PAIRFLOW_QUICK
        args.min_time = 0.05 if args.min_time is None else args.min_time
        args.max_time = 0.3 if args.max_time is None else args.max_time
    args.sizes = args.sizes or list(SIZES)
    args.dims = args.dims or list(DIMS)
    args.vocabs = args.vocabs or list(VOCABS)
    args.times = args.times or list(TIMES)
    args.min_time = 0.5 if args.min_time is None else args.min_time
    args.max_time = 5.0 if args.max_time is None else args.max_time
    for label, values in (("--sizes", args.sizes), ("--dims", args.dims)):
        if any(v < 1 for v in values):
            p.error(f"{label} must be positive")
    for v in args.vocabs:
        try:
            ops.check_vocab(v)
        except ValueError as exc:
            p.error(str(exc))
    if any(not (H <= t <= 1) for t in args.times):
        p.error(f"--times must lie in [{H:g}, 1]")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be positive")
    if args.pairflow and args.pairflow[2] < 2:
        p.error("--pairflow: V must be >= 2")
    return args


def notes_for(device: torch.device, args, batch: int, peak: Optional[float], peak_text: str,
              pairflow) -> list[str]:
    out = [
        f"flowfast: `ops.dfm.inversion_step(keys, x, V, t, h={H:g}, seed={STEP_SEED}, offset={STEP_OFFSET}, "
        "validate=False)` on the device (the fused kernel; no B x N matrix). torch: the same call with "
        "`backend='torch'` (`flowfast.reference.dfm`: keys unpacked to (N, D) int64, then the B x N match counts "
        "and float64 weights and the posterior sums, comparisons in chunks of 2^24), same device, same draws. "
        "torch / ff > 1: flowfast faster.",
        f"Data: {PROTOTYPES} random prototypes with {FLIP:.0%} of the tokens redrawn uniformly (seed {SEED}); "
        f"queries = the first B rows (B = {batch}). pack ms: `pack_tokens` of the N keys, once per (N, D, V), "
        "outside the timed step (the same value on each t row).",
        "t = 1: the posterior is uniform over the exact nearest matches (every other key is skipped after its "
        "count); t = 0.5: weights gamma^(m - M), gamma = 1 + V, keys further than (36 + ln N) / ln(1 + V) "
        "matches below the best skipped.",
        "Gcmp/s: token comparisons B·N·D per second of flowfast; Gwords/s: packed 64-bit words B·N·W per second "
        "(W = ceil(D / (64 // ceil(log2 V)))). pairflow_pairs row: K·N·N·D and K·N·N·W over the whole pairing.",
        f"Correctness before timing: best counts equal, posterior within {POSTERIOR_ATOL:g}, x_new equal on >= "
        f"{MIN_AGREEMENT:.1%} of the tokens. checked = queries compared with the reference: all, or (reference "
        f"skipped, B·N·D > --torch-max-elements {args.torch_max_elements:g}) the first k with k·N·D within it.",
    ]
    if pairflow:
        n, d, v, k = pairflow
        out.append(f"pairflow_pairs: `pairflow_pairs(data, {v}, steps={k}, generator=seed {SEED}, backend=...)` of "
                   f"the whole (N = {n}, D = {d}) set, 'auto' vs 'torch'; the torch pairing runs once (its time and "
                   f"its check: x0 equal on >= {MIN_AGREEMENT:.1%} of the tokens), flowfast's is timed after.")
    if device.type == "cuda" and peak:
        out.append(f"% popc peak = Gwords/s over the {peak_text}: what the POPC units alone could count; the kernel "
                   "also xors, masks, sums and gathers, so this is a ceiling, not a target.")
    elif device.type == "cuda":
        out.append(f"% popc peak: not given ({peak_text}).")
    else:
        out.append("CPU run: no peak given. flowfast's CPU kernel runs OpenMP threads over the queries, torch its "
                   "intra-op threads.")
        if not flowfast.cuda_available():
            out.append("flowfast CUDA: not measured (no usable CUDA device or CPU-only build).")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    requested = "cuda" if args.device == "auto" and flowfast.cuda_available() else args.device
    requested = "cpu" if requested == "auto" else requested
    devices = _timing.resolve_devices("bench_dfm", requested)
    if devices is None:
        return 2
    failures = 0
    limit_given = args.torch_max_elements
    t_start = time.perf_counter()
    for dev_name in devices:
        device = torch.device(dev_name)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        kind = device.type
        batch = args.batch or BATCH[kind]
        args.torch_max_elements = limit_given if limit_given is not None else TORCH_MAX_ELEMENTS[kind]
        pairflow = PAIRFLOW[kind] if args.pairflow is None else args.pairflow
        env = _timing.environment(device)
        peak, peak_text = popcount_peak(device, args) if kind == "cuda" else (None, "")
        rows = []
        for n in args.sizes:
            for length in args.dims:
                for vocab in args.vocabs:
                    rows += run_dataset(n, length, vocab, batch, device, args, peak)
        failures += sum(bool(r.get("failed")) for r in rows)
        if pairflow:
            t0 = time.perf_counter()
            print(f"[{dev_name}] pairflow_pairs {'x'.join(map(str, pairflow))} ...", end=" ", file=sys.stderr,
                  flush=True)
            row = run_pairflow(*pairflow, device, args)
            failures += bool(row.get("failed"))
            rows.append(row)
            print(f"{row['status']} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        columns = ["case", "N", "D", "V", "B", "t", "pack ms", "flowfast ms", "torch ms", "torch / ff", "Gcmp/s",
                   "Gwords/s"] + (["% popc peak"] if kind == "cuda" else []) + ["checked", "status"]
        family = (FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else "")
                  + (f"-{args.tag}" if args.tag else ""))
        _timing.write_results(
            family, rows, env, args.out, columns=columns,
            notes=notes_for(device, args, batch, peak, peak_text, pairflow),
            extra={"args": dict(vars(args)), "h": H, "popcount_peak_words_per_s": peak,
                   "popcount_peak": peak_text or None, "posterior_atol": POSTERIOR_ATOL,
                   "min_agreement": MIN_AGREEMENT},
            title=f"dfm — PairFlow inversion step, fused kernel vs the materialised torch version on "
                  f"{env['device_name']} ({dev_name})")
    print(f"bench_dfm: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    if failures:
        print(f"bench_dfm: {failures} case(s) failed (correctness or errors; not timed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
