#!/usr/bin/env python
"""Benchmark: the `dfm` inversion kernel (one PairFlow backward step) vs the straightforward torch
implementation that materialises the B x N match counts and weights (flowfast.reference.dfm, the
same math in float64, chunked over keys so it fits in memory), on the same device and inputs.

Cases: N training sequences (keys) of D tokens over V symbols, B queries (the first B rows),
t = 1 (the first step: only exact nearest matches weigh) and t = 0.5 (denser posteriors). Data:
four prototypes with 15% of the tokens redrawn uniformly (seed 0), so posteriors are neither flat
nor point masses. The keys are packed once outside the timed region (packing time reported).

Correctness first (on the timed inputs): best match counts equal exactly, posteriors within
1e-5, x_new equal on >= 99.9% of the tokens (the same Philox draws; a float difference at a
threshold may flip one); a failing case is not timed, the row says why and the exit status is 1.

Reported per case: median ms of flowfast and of torch, ratio torch / flowfast, and token
comparisons per second B * N * D / time (and 64-bit words compared per second B * N * W / time).
No peak is claimed on the CPU; on CUDA the int32 peak is estimated as SMs x 4 x 32 lanes x clock
(one 32-bit integer op per lane per cycle, the popcount of a 64-bit word costing 2), stated as such.

    python benchmarks/bench_dfm.py                # default grid on CUDA if available, else CPU
    python benchmarks/bench_dfm.py --quick        # smoke run, well under a minute
    python benchmarks/bench_dfm.py --device cpu --sizes 10000 --dims 784 --vocabs 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
from _timing import free_memory, is_oom, short_error  # noqa: E402

from flowfast.ops import dfm as ops  # noqa: E402

FAMILY = "dfm"


def make_data(n: int, length: int, vocab: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    protos = torch.randint(0, vocab, (4, length), generator=g)
    rows = protos[torch.randint(0, 4, (n,), generator=g)]
    noise = torch.randint(0, vocab, (n, length), generator=g)
    return torch.where(torch.rand((n, length), generator=g) < 0.15, noise, rows).to(device)


def check(got, want) -> str | None:
    if not torch.equal(got[2].cpu(), want[2].cpu()):
        return "best counts differ"
    err = (got[1].cpu() - want[1].cpu()).abs().max().item()
    if err > 1e-5:
        return f"posterior differs by {err:.2e}"
    flips = (got[0].cpu() != want[0].cpu()).double().mean().item()
    if flips > 1e-3:
        return f"x_new differs on {flips:.2%} of the tokens"
    return None


def cuda_int_peak(device) -> float | None:
    """Estimated 32-bit integer ops per second of the GPU (SMs x 128 lanes x clock)."""
    props = torch.cuda.get_device_properties(device)
    clock_hz = getattr(props, "clock_rate", None)
    if not clock_hz:
        return None
    return props.multi_processor_count * 128 * clock_hz * 1e3


def run_case(n, length, vocab, batch, t, device, args, data_cache) -> dict:
    row = {"N": n, "D": length, "V": vocab, "B": batch, "t": t, "device": str(device)}
    key = (n, length, vocab)
    if key not in data_cache:
        data_cache.clear()
        free_memory()
        data = make_data(n, length, vocab, device)
        pack = _timing.time_fn(lambda: ops.pack_tokens(data, vocab, validate=False), device=device,
                               min_time=0.2, max_time=2.0)
        data_cache[key] = (data, ops.pack_tokens(data, vocab), pack["median_s"])
    data, keys, pack_s = data_cache[key]
    row["pack_ms"] = _timing.fmt_ms(pack_s)
    x = data[:batch].to(torch.int32)
    W = keys.shape[1]

    def flowfast_step():
        return ops.inversion_step(keys, x, vocab, t, 0.05, seed=1, offset=2, validate=False)

    def torch_step():
        return ops.inversion_step(keys, x, vocab, t, 0.05, seed=1, offset=2, validate=False, backend="torch")

    got = flowfast_step()
    elements = batch * n * length
    ref_ok = elements <= args.torch_max_elements
    if ref_ok:
        try:
            want = torch_step()
        except Exception as exc:  # noqa: BLE001 (out of memory or otherwise: a status, not a crash)
            if not is_oom(exc):
                raise
            ref_ok, row["torch"] = False, f"OOM ({short_error(exc)})"
            free_memory()
        else:
            problem = check(got, want)
            if problem:
                row["status"] = f"FAILED: {problem}"
                return row
    ff = _timing.time_fn(flowfast_step, device=device, min_time=args.min_time, max_time=args.max_time)
    row["flowfast_ms"] = _timing.fmt_ms(ff["median_s"])
    row["Gcmp/s"] = round(elements / ff["median_s"] / 1e9, 3)
    row["Gwords/s"] = round(batch * n * W / ff["median_s"] / 1e9, 3)
    if device.type == "cuda":
        peak = cuda_int_peak(device)
        # ~6 integer ops per word (xor, not, and, add, and, popcount as 2)
        row["% int peak"] = None if peak is None else round(100 * batch * n * W * 6 / ff["median_s"] / peak, 1)
    if ref_ok:
        tr = _timing.time_fn(torch_step, device=device, min_time=args.min_time, max_time=args.max_time)
        row["torch_ms"] = _timing.fmt_ms(tr["median_s"])
        row["torch / ff"] = _timing.fmt_ratio(tr["median_s"] / ff["median_s"])
    else:
        row.setdefault("torch", f"skipped: B*N*D = {elements:.2g} > --torch-max-elements")
    row["status"] = "ok"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default=None,
                   help="default: cuda when flowfast can use it, else cpu")
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000], help="N")
    p.add_argument("--dims", nargs="+", type=int, default=[32, 64, 784], help="D")
    p.add_argument("--vocabs", nargs="+", type=int, default=[2, 40, 256], help="V")
    p.add_argument("--batch", type=int, default=None, help="B queries (default 1024 on CUDA, 32 on CPU)")
    p.add_argument("--times", nargs="+", type=float, default=[1.0, 0.5])
    p.add_argument("--torch-max-elements", type=float, default=None,
                   help="skip the torch reference above B*N*D comparisons (default 3e9 CPU, 2e11 CUDA)")
    p.add_argument("--quick", action="store_true", help="N = 2000, D in {32, 784}, V in {2, 40}, B = 16")
    _timing.add_run_args(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import flowfast

    requested = args.device or ("cuda" if flowfast.cuda_available() else "cpu")
    devices = _timing.resolve_devices("bench_dfm.py", requested)
    if devices is None:
        return 2
    if args.quick:
        args.sizes, args.dims, args.vocabs, args.batch = [2000], [32, 784], [2, 40], 16
    args.min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 0.5)
    args.max_time = args.max_time if args.max_time is not None else (1.0 if args.quick else 8.0)
    failed = False
    for name in devices:
        device = torch.device(name)
        batch = args.batch or (1024 if device.type == "cuda" else 32)
        limit = args.torch_max_elements or (2e11 if device.type == "cuda" else 3e9)
        args.torch_max_elements = limit
        env = _timing.environment(device)
        rows, cache = [], {}
        for n in args.sizes:
            for length in args.dims:
                for vocab in args.vocabs:
                    for t in args.times:
                        row = run_case(n, length, vocab, batch, t, device, args, cache)
                        failed |= row["status"] != "ok"
                        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                        rows.append(row)
        notes = [
            "flowfast: ops.dfm.inversion_step (the fused kernel: counts by popcount, online softmax over the keys, "
            "per-token sums, Philox keep/jump draws); torch: the same op with backend='torch' "
            "(flowfast.reference.dfm: B x N counts and weights materialised, float64, keys in chunks)",
            "Gcmp/s: token comparisons B*N*D per second of flowfast; Gwords/s: packed 64-bit words B*N*W per second",
            "t = 1: weights are the argmax indicator, every key but the nearest is skipped after the counts; "
            "t = 0.5: gamma = 1 + V, keys within ~(36 + ln N) / ln(1 + V) matches of the best weigh",
            "torch / ff > 1: flowfast faster",
        ]
        if device.type == "cuda":
            notes.append("% int peak: 6 integer ops per packed word against SMs x 128 lanes x clock; an estimate")
        tag = "dfm-quick" if args.quick else FAMILY
        _timing.write_results(tag, rows, env, args.out, notes=notes,
                              title=f"dfm — PairFlow inversion step vs the materialised torch version on "
                                    f"{env['device_name']} ({name})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
