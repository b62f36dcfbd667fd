"""One CFM training step, end to end: couple, sample (t, x_t), model, loss, backward, Adam step.

Times flowfast's paths (``flowfast.paths.*.loss``, fused kernels) against torchcfm's matchers on
the same model, batch and optimizer, in the same run, and counts the host reads of device values
per step inside flowfast (:class:`flowfast.testing.HostReads`: each is a synchronization on CUDA).
Reads inside ``draw_seed`` are listed apart: they read a CPU generator's draw, not device memory
(a CUDA generator lends its seed and offset without a read); the optimizer's step counter is
torch's and lives on the host.

    python benchmarks/bench_step.py [--device cpu|cuda|all] [--batch 256] [--dim 2] [--tag before]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

import flowfast  # noqa: E402
from flowfast import paths  # noqa: E402
from flowfast.testing import HostReads  # noqa: E402

PATHS = {"icfm": ("IndependentCFM", "ConditionalFlowMatcher", {}),
         "otcfm": ("OptimalTransportCFM", "ExactOptimalTransportConditionalFlowMatcher", {}),
         "sbcfm": ("SchrodingerBridgeCFM", "SchrodingerBridgeConditionalFlowMatcher", {})}
SIGMA = {"icfm": 0.1, "otcfm": 0.1, "sbcfm": 0.5}
HOST_GENERATOR_SITES = ("flowfast._rng:draw_seed", "flowfast.couplings.sinkhorn:draw_seed")


def make_model(dim: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                               torch.nn.SiLU(), torch.nn.Linear(width, dim))


def flowfast_step(path, net, opt, x0, x1, gen):
    def model(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = path.loss(model, x0, x1, generator=gen)
        loss.backward()
        opt.step()
    return step


def torchcfm_step(matcher, net, opt, x0, x1):
    def step():
        opt.zero_grad(set_to_none=True)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        v = net(torch.cat([xt, t[:, None]], 1))
        loss = ((v - ut) ** 2).mean()
        loss.backward()
        opt.step()
    return step


def cuda_syncs(step) -> int:
    """Synchronizing CUDA calls in one step, counted by torch's sync debug mode (a real GPU's
    count of what :func:`host_reads` measures by proxy on the CPU)."""
    import warnings

    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def host_reads(step) -> tuple[int, int, list[str]]:
    step()
    with HostReads() as reads:
        step()
    ours = [s for s in reads.sites if s.startswith("flowfast.")]
    device_reads = sum(not s.startswith(HOST_GENERATOR_SITES) for s in ours)
    return device_reads, len(ours) - device_reads, sorted(set(ours))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=list(PATHS))
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu")
    p.add_argument("--quick", action="store_true", help="short timing (smoke test)")
    _timing.add_run_args(p, tag_prefix="step")
    return p.parse_args(argv)


def run_device(args, device: str, mods: dict, timing: dict) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, args.dim, generator=g).to(device)
    x1 = (torch.randn(args.batch, args.dim, generator=g) * 0.5 + 3.0).to(device)
    rows, notes = [], []
    for name in args.paths:
        ours, theirs, kwargs = PATHS[name]
        net = make_model(args.dim, args.width).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        step = flowfast_step(getattr(paths, ours)(SIGMA[name], **kwargs), net, opt, x0, x1,
                             torch.Generator(device=device).manual_seed(1))
        reads, generator_reads, sites = host_reads(step)
        t_ff = _timing.time_fn(step, device=device, **timing)["median_s"]
        row = {"device": device, "path": name, "B": args.batch, "d": args.dim,
               "flowfast ms/step": _timing.fmt_ms(t_ff), "host reads/step": reads, "generator reads": generator_reads}
        if device == "cuda":
            row["CUDA syncs/step"] = cuda_syncs(step)
        if "torchcfm" in mods:
            matcher = getattr(mods["torchcfm"], theirs)(sigma=SIGMA[name])
            net2 = make_model(args.dim, args.width).to(device)
            opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
            t_tc = _timing.time_fn(torchcfm_step(matcher, net2, opt2, x0, x1), device=device, **timing)["median_s"]
            row["torchcfm ms/step"] = _timing.fmt_ms(t_tc)
            row["torchcfm / flowfast"] = _timing.fmt_ratio(t_tc / t_ff)
        rows.append(row)
        notes.append(f"{device} {name}: host-read sites {sites}")
    return rows, notes


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = _timing.resolve_devices("bench_step.py", args.device)
    if devices is None:
        return 2
    mods, why = _timing.import_optional({"torchcfm": _timing.load_torchcfm_matchers})
    timing = dict(min_time=0.2, max_time=1.0) if args.quick else dict(min_time=args.min_time or 2.0,
                                                                         max_time=args.max_time or 10.0)
    for device in devices:
        rows, notes = run_device(args, device, mods, timing)
        notes += [f"{k}: {v}" for k, v in why.items()]
        notes.append("torchcfm's OT/SB matchers draw pairs with replacement on the CPU through POT; flowfast "
                     "re-pairs by a permutation (exact assignment / Gumbel perturb-and-MAP).")
        if device == "cuda":
            notes.append("CUDA syncs/step: torch.cuda.set_sync_debug_mode('warn') warnings in one step (torch's "
                         "own syncs included, e.g. the optimizer's; the CUDA Sinkhorn's convergence-flag reads).")
        env = _timing.environment(device)
        family = f"step-{args.tag}" if args.tag else "step"
        _timing.write_results(family, rows, env, args.out, notes=notes,
                              title=f"CFM training step — flowfast vs torchcfm on {env.get('device_name', device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
