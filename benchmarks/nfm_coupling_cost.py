#!/usr/bin/env python
"""Cost of pairing one training batch: the NFM coupling's single teacher pass (O(B)) against the
minibatch OT couplings (O(B^2) costs, O(B^3) exact assignment).

Timed per batch of B pairs, at B in --sizes (default 256 ... 4096), in two settings:

- **toy2d**: x0 ~ N(0, I) and x1 ~ 8 Gaussians, (B, 2); teacher ``TarFlow((2,), width=32, blocks=8,
  layers=1, heads=4)`` (the toy teacher config);
- **digits**: x1 = the 8x8 digits as (B, 1, 8, 8) images (``flowfast.data.digits()``, 1797 images in
  [-1, 1]; B <= 1797: distinct rows, else rows drawn with replacement plus N(0, 1e-3^2) noise),
  x0 ~ N(0, I) of the same shape; teacher ``TarFlow((1, 8, 8), patch=2, width=64, blocks=4, layers=2,
  heads=4)``. The OT couplings get the same batches flattened to (B, 64).

Methods: ``NFMCoupling(flow, eta=0.05, sigma_f=1.0)(x0, x1, g)`` (one flow forward, no gradients;
random weights with every block's proj_out set to N(0, 0.02^2) so the flow is not the identity:
the cost does not depend on training), flowfast ``ExactOTCoupling()`` and ``SinkhornCoupling(reg=0.05)``,
and torchcfm ``OTPlanSampler(method="exact").sample_plan`` (POT's emd on the CPU, the peer an OT-CFM
user runs). Ratios = OT time / NFM time (> 1: NFM cheaper); the crossover is the smallest B from
which NFM is cheaper at every larger measured B. A call predicted (from the previous size and the
method's scaling, B^1 / B^2 / B^3) to take more than --max-call seconds is skipped, with the reason.

    python benchmarks/nfm_coupling_cost.py                       # both settings, 1 torch thread
    python benchmarks/nfm_coupling_cost.py --sizes 1024 8192 --settings digits --threads 2
    python benchmarks/nfm_coupling_cost.py --quick --sizes 16 32 --out-dir /tmp/x

Writes ``nfm-coupling-cost-<device slug>-<date>.{json,md}`` (``-quick`` / ``-threadsN`` / ``-TAG``
added when used) to benchmarks/results or --out-dir.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

import flowfast  # noqa: E402
import flowfast.data as ffdata  # noqa: E402
from flowfast.couplings import ExactOTCoupling, SinkhornCoupling  # noqa: E402
from flowfast.nfm import NFMCoupling, TarFlow  # noqa: E402

FAMILY = "nfm-coupling-cost"
SEED = 0
SIZES, QUICK_SIZES = (256, 512, 1024, 2048, 4096), (16, 32)
SETTINGS = {
    "toy2d": ((2,), dict(width=32, blocks=8, layers=1, heads=4)),
    "digits": ((1, 8, 8), dict(patch=2, width=64, blocks=4, layers=2, heads=4)),
}
ETA, SIGMA_F, PROJ_STD, DUP_NOISE = 0.05, 1.0, 0.02, 1e-3
METHODS = ("nfm", "exact", "sinkhorn", "torchcfm")
LABELS = {"nfm": "NFM", "exact": "ff exact", "sinkhorn": "ff sinkhorn", "torchcfm": "torchcfm exact"}
EXPONENT = {"nfm": 1, "exact": 3, "sinkhorn": 2, "torchcfm": 3}  # for predicting the next size's cost
RATIOS = ("exact", "torchcfm", "sinkhorn")
EXTRAPOLATE_FROM = 1024  # the crossover is extrapolated only from batches this large


def make_batch(setting: str, b: int, device: torch.device, digits: Optional[torch.Tensor]):
    g = torch.Generator().manual_seed(SEED + b)
    if setting == "toy2d":
        x0, x1 = ffdata.gaussian(b, g), ffdata.eight_gaussians(b, g)
    else:
        n = digits.shape[0]
        if b <= n:
            x1 = digits[torch.randperm(n, generator=g)[:b]]
        else:  # with replacement; the noise keeps duplicate rows (ties for the solvers) apart
            x1 = digits[torch.randint(n, (b,), generator=g)]
            x1 = x1 + DUP_NOISE * torch.randn(x1.shape, generator=g)
        x0 = torch.randn(x1.shape, generator=g)
    return x0.to(device), x1.to(device)


def make_teacher(setting: str, device: torch.device) -> NFMCoupling:
    shape, config = SETTINGS[setting]
    torch.manual_seed(SEED)
    flow = TarFlow(shape, **config)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for block in flow.blocks:
            for p in (block.proj_out.weight, block.proj_out.bias):
                p.copy_(PROJ_STD * torch.randn(p.shape, generator=g))
    return NFMCoupling(flow.to(device), eta=ETA, sigma_f=SIGMA_F)


def make_calls(nfm: NFMCoupling, plan_sampler, x0, x1) -> dict:
    """name -> zero-argument call; the OT couplings see (B, D) points, the teacher (B, *shape)."""
    f0, f1 = x0.flatten(1), x1.flatten(1)
    g = torch.Generator(device=x0.device).manual_seed(SEED)
    exact, sinkhorn = ExactOTCoupling(), SinkhornCoupling(reg=0.05)
    calls = {"nfm": lambda: nfm(x0, x1, g), "exact": lambda: exact(f0, f1, g),
             "sinkhorn": lambda: sinkhorn(f0, f1, g)}
    if plan_sampler is not None:
        sampler = plan_sampler(method="exact")
        calls["torchcfm"] = lambda: sampler.sample_plan(f0, f1)
    return calls


def run_method(fn, args, device, seen: set) -> tuple[dict, list]:
    """Check the output once (finite, shapes kept), then time it; warnings are recorded, not raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
        if not all(bool(torch.isfinite(t).all()) for t in out):
            raise RuntimeError("non-finite pairs")
        stats = _timing.time_fn(fn, device=device, warmup=1, min_time=args.min_time, max_time=args.max_time)
    for w in caught:
        seen.add(f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}")
    return stats, sorted({str(w.message).splitlines()[0][:120] for w in caught})


def run_case(setting: str, b: int, calls: dict, missing: dict, prev: dict, args, device, seen: set) -> dict:
    row: dict = {"setting": setting, "B": b}
    for m in METHODS:
        if m not in calls:
            row[f"{m}_status"] = missing.get(m, "not run")
            continue
        if m in prev:
            predicted = prev[m][1] * (b / prev[m][0]) ** EXPONENT[m]
            if predicted > args.max_call:
                row[f"{m}_status"] = (f"skipped (predicted {predicted:.3g} s a call > --max-call {args.max_call:g} s, "
                                      f"from B={prev[m][0]} x (B ratio)^{EXPONENT[m]})")
                prev[m] = (b, predicted)  # larger sizes are skipped too
                continue
        print(f"[{device}] {setting} B={b} {m} ...", end=" ", file=sys.stderr, flush=True)
        try:
            stats, caught = run_method(calls[m], args, device, seen)
        except Exception as exc:  # noqa: BLE001 - recorded, never fatal
            row[f"{m}_status"] = _timing.short_error(exc)
            _timing.free_memory()
            print(row[f"{m}_status"], file=sys.stderr, flush=True)
            continue
        row[m], row[f"{m}_s"], prev[m] = stats, stats["median_s"], (b, stats["median_s"])
        row[f"{m}_status"] = "ok" + (f" (warned: {'; '.join(caught)})" if caught else "")
        print(f"{_timing.fmt_ms(stats['median_s'])} ms x {stats['repeats']}", file=sys.stderr, flush=True)
    for m in RATIOS:
        if row.get("nfm_s") and row.get(f"{m}_s"):
            row[f"{m}_over_nfm"] = row[f"{m}_s"] / row["nfm_s"]
    for m in METHODS:
        mark = " †" if "warned" in row[f"{m}_status"] else ""
        row[f"{LABELS[m]} ms"] = _timing.fmt_ms(row[f"{m}_s"]) + mark if f"{m}_s" in row else row[f"{m}_status"]
    for m in RATIOS:
        row[f"{LABELS[m]} / NFM"] = _timing.fmt_ratio(row.get(f"{m}_over_nfm"))
    return row


def crossover(rows: list[dict], method: str) -> dict:
    """Smallest measured B from which NFM is cheaper at every larger measured B; else a log-log
    extrapolation from the two largest sizes where both were timed (labelled as such)."""
    pts = [(r["B"], r["nfm_s"], r[f"{method}_s"]) for r in rows if r.get("nfm_s") and r.get(f"{method}_s")]
    if not pts:
        return {"text": "not measured"}
    at = None
    for b, t_nfm, t_ot in reversed(pts):
        if t_ot <= t_nfm:
            break
        at = b
    if at == pts[0][0]:
        return {"B": at, "text": f"NFM cheaper at every measured B (from B={at})"}
    if at is not None:
        return {"B": at, "text": f"B={at}"}
    if len(pts) >= 2 and pts[-1][0] >= EXTRAPOLATE_FROM:  # small batches: fixed overheads, no trend
        (b1, n1, o1), (b2, n2, o2) = pts[-2], pts[-1]
        p, q = math.log(o2 / o1) / math.log(b2 / b1), math.log(n2 / n1) / math.log(b2 / b1)
        q = max(q, 1.0)  # the teacher pass is per-sample work: at least linear, whatever the noise says
        if p > q:
            est = b2 * (n2 / o2) ** (1 / (p - q))
            return {"B_extrapolated": est, "text": f"none up to B={b2}; extrapolated ~B={est:.3g} "
                    f"(OT slope B^{p:.2f} from B={b1}, {b2}; NFM taken as B^{q:.2f})"}
    return {"text": f"none up to B={pts[-1][0]}"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "all"), default="auto",
                   help="auto (default): cuda when flowfast can use it, else cpu; all: cpu then cuda")
    p.add_argument("--sizes", type=int, nargs="+", help=f"batch sizes B (default {list(SIZES)})")
    p.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    p.add_argument("--max-call", type=float, default=20.0, help="skip calls predicted slower than this (s)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: B in {list(QUICK_SIZES)}, short timing")
    p.add_argument("--note", action="append", default=[], help="extra line for the markdown notes")
    _timing.add_run_args(p, tag_prefix=FAMILY)
    p.add_argument("--out-dir", dest="out", help="results directory (same as --out)")
    args = p.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    if any(b < 2 for b in args.sizes):
        p.error("--sizes must be >= 2")
    args.min_time = args.min_time if args.min_time is not None else (0.02 if args.quick else 0.5)
    args.max_time = args.max_time if args.max_time is not None else (0.2 if args.quick else 5.0)
    args.threads = args.threads or 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    requested = args.device if args.device != "auto" else ("cuda" if flowfast.cuda_available() else "cpu")
    devices = _timing.resolve_devices("nfm_coupling_cost", requested)
    if devices is None:
        return 2
    mods, missing = _timing.import_optional({"torchcfm": _timing.load_torchcfm_plan_sampler})
    digits = ffdata.digits() if "digits" in args.settings else None
    for dev_name in devices:
        device = torch.device(dev_name)
        env = _timing.environment(device)
        rows, seen, cross = [], set(), {}
        for setting in args.settings:
            nfm, prev = make_teacher(setting, device), {}
            for b in args.sizes:
                x0, x1 = make_batch(setting, b, device, digits)
                calls = make_calls(nfm, mods.get("torchcfm"), x0, x1)
                rows.append(run_case(setting, b, calls, missing, prev, args, device, seen))
            mine = [r for r in rows if r["setting"] == setting]
            cross[setting] = {m: crossover(mine, m) for m in ("exact", "torchcfm")}
        columns = ["setting", "B"] + [f"{LABELS[m]} ms" for m in METHODS] + [f"{LABELS[m]} / NFM" for m in RATIOS]
        notes = [
            "ms: median wall time of one call on one batch of B pairs (warm-up call first, then repeats until "
            f"{args.min_time:g} s, capped at {args.max_time:g} s). X / NFM: X's time over NFM's (> 1: NFM cheaper).",
            f"NFM: `NFMCoupling(TarFlow(...), eta={ETA}, sigma_f={SIGMA_F})(x0, x1, g)`, one forward pass of the "
            f"teacher on x1 + eta eps' (no cache); random weights, every proj_out ~ N(0, {PROJ_STD}^2). Teachers: "
            + "; ".join(f"{s}: TarFlow({SETTINGS[s][0]}, {', '.join(f'{k}={v}' for k, v in SETTINGS[s][1].items())})"
                        for s in args.settings) + ".",
            "ff exact: `ExactOTCoupling()`, ff sinkhorn: `SinkhornCoupling(reg=0.05)` (flowfast), torchcfm exact: "
            "`OTPlanSampler(method='exact').sample_plan` (cdist, then POT emd on the CPU, then draws from the plan); "
            "all on the (B, D) flattened batch (D = 2 toy2d, 64 digits).",
            f"Data: toy2d x0 ~ N(0, I), x1 ~ 8 Gaussians; digits x1 = flowfast.data.digits() rows (distinct for "
            f"B <= 1797, else drawn with replacement + N(0, {DUP_NOISE:g}^2) noise), x0 ~ N(0, I). Seed {SEED} + B.",
        ]
        for setting, per in cross.items():
            notes.append(f"crossover {setting} (NFM cheaper from): vs ff exact {per['exact']['text']}; "
                         f"vs torchcfm exact {per['torchcfm']['text']}.")
        notes += [f"{m}: {why}" for m, why in missing.items()]
        warned = ", ".join(f"{r['setting']} B={r['B']} {LABELS[m]}" for r in rows for m in METHODS
                           if "warned" in r[f"{m}_status"])
        notes += [f"† warned during its calls ({warned}): {w}" for w in sorted(seen)]
        if any("numItermax" in w for w in seen):
            notes.append("numItermax: POT's emd stopped at its default 100000 iterations before optimality, so "
                         "torchcfm's plan there is not the exact OT plan and its time is that of a truncated solve.")
        notes += [f"torch threads: {args.threads} (torch.set_num_threads); POT emd runs its own single thread."]
        notes += list(args.note)
        family = (FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads != 1 else "")
                  + (f"-{args.tag}" if args.tag else ""))
        _timing.write_results(family, rows, env, args.out, columns=columns, notes=notes,
                              extra={"args": dict(vars(args)), "crossover": cross},
                              title=f"NFM coupling vs minibatch OT, cost per batch — {env['device_name']} "
                                    f"({dev_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
