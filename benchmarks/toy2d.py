#!/usr/bin/env python
"""2D toy benchmark, side by side with torchcfm: I-CFM and OT-CFM trained by flowfast and by torchcfm.

For each task (N→8gaussians, moons→8gaussians, N→moons, N→scurve) and seed, both libraries train
the same MLP (3 × 64 SELU, input concat(x, t); torchcfm's ``models.MLP(2, w=64, time_varying=True)``
layout) from the same initial weights on the same pre-drawn data stream (``flowfast.data`` samplers),
with the same steps, batch (512), AdamW (lr 1e-3, weight decay 1e-5) and sigma (0.1). Only the
training step differs:

- **flowfast**: ``paths.IndependentCFM(0.1).loss(model, x0, x1)`` and
  ``paths.OptimalTransportCFM(0.1).loss(...)`` (fused interpolant kernels, exact OT permutation).
- **torchcfm**: ``ConditionalFlowMatcher(sigma=0.1)`` / ``ExactOptimalTransportConditionalFlowMatcher
  (sigma=0.1)``: ``sample_location_and_conditional_flow(x0, x1)``, ``model(x_t, t)``, MSE.

Both models are then sampled the same way (``flowfast.samplers.odeint``, dopri5, atol = rtol = 1e-4)
from the same source samples and scored by exact W2 (``flowfast.metrics.wasserstein2``) against
the same target samples. Reported: W2 mean ± std over seeds per (task, method, library), training
wall time per 1000 steps, and the published numbers (20k steps, 5 seeds).

This is not a ``bench_*.py`` script on purpose (``run_all.py`` skips it): the default is the full
paper protocol (20 000 steps × 5 seeds × 4 tasks × 2 methods × 2 libraries).

    python benchmarks/toy2d.py                                   # the paper protocol
    python benchmarks/toy2d.py --quick                           # smoke run, about a minute
    python benchmarks/toy2d.py --tasks moons-8gaussians --steps 2000 --seeds 42
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

import flowfast  # noqa: E402
from flowfast import data, paths  # noqa: E402
from flowfast.metrics import wasserstein2  # noqa: E402
from flowfast.samplers import odeint  # noqa: E402

FAMILY = "toy2d"
SIGMA = 0.1
BATCH = 512
LR = 1e-3
WEIGHT_DECAY = 1e-5
WIDTH = 64
SEEDS = (42, 43, 44, 45, 46)
STEPS = 20_000
EVAL_N = 2000
ATOL = RTOL = 1e-4
EVAL_SEED_BASE = 1_000_000  # eval samples of seed s: generator seeded EVAL_SEED_BASE + s
DATA_SEED_BASE = 2_000_000  # training data stream of seed s
WARMUP_STEPS = 10

# key -> (label, source sampler, target sampler)
TASKS = {
    "n-8gaussians": ("N→8gaussians", "gaussian", "8gaussians"),
    "moons-8gaussians": ("moons→8gaussians", "moons", "8gaussians"),
    "n-moons": ("N→moons", "gaussian", "moons"),
    "n-scurve": ("N→scurve", "gaussian", "scurve"),
}
METHODS = {"icfm": "I-CFM", "otcfm": "OT-CFM"}
LIBRARIES = ("flowfast", "torchcfm")
# Published W2 (mean, std), 20k steps, 5 seeds, 10k eval samples (Tong et al. TMLR 2024 / [SF]²M Table 2).
REFERENCE = {
    "otcfm": {"n-8gaussians": (0.303, 0.043), "moons-8gaussians": (0.601, 0.027),
              "n-moons": (0.130, 0.016), "n-scurve": (0.144, 0.028)},
    "icfm": {"n-8gaussians": (0.373, 0.103), "moons-8gaussians": (1.557, 0.407),
             "n-moons": (0.178, 0.014), "n-scurve": (0.242, 0.141)},
}


class MLP(nn.Module):
    """Velocity net v(x, t): torchcfm's ``models.MLP(dim, w=64, time_varying=True)`` layer for layer
    (same parameter order, so the same seed gives the same initial weights), called as ``model(x, t)``."""

    def __init__(self, dim: int = 2, w: int = WIDTH) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, w), nn.SELU(),
            nn.Linear(w, w), nn.SELU(),
            nn.Linear(w, w), nn.SELU(),
            nn.Linear(w, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=-1))


def task_key(text: str) -> str:
    """'N->8gaussians', 'N→8gaussians', 'n-8gaussians' -> 'n-8gaussians'."""
    key = text.strip().lower().replace("→", "-").replace("->", "-").replace("_", "-")
    if key not in TASKS:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; choose from {list(TASKS)}")
    return key


# ---------------------------------------------------------------- training steps

def flowfast_step_fn(method: str, model: nn.Module) -> Callable:
    path = paths.IndependentCFM(SIGMA) if method == "icfm" else paths.OptimalTransportCFM(SIGMA)

    def loss_fn(x0, x1):
        # generator=None, the usual call: t from torch's RNG on the device, the kernels' Philox
        # (seed, offset) from the CPU RNG. (A CUDA generator would make draw_seed sync every step.)
        return path.loss(model, x0, x1)

    return loss_fn


def torchcfm_step_fn(method: str, model: nn.Module, tcfm) -> Callable:
    fm = (tcfm.ConditionalFlowMatcher(sigma=SIGMA) if method == "icfm"
          else tcfm.ExactOptimalTransportConditionalFlowMatcher(sigma=SIGMA))

    def loss_fn(x0, x1):
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(xt, t)
        return torch.mean((vt - ut) ** 2)

    return loss_fn


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model_and_loss(library: str, method: str, seed: int, device: torch.device, tcfm):
    torch.manual_seed(seed)  # same initial weights for both libraries; then t / noise of both come from here
    np.random.seed(seed)  # torchcfm's OTPlanSampler samples pairs with numpy's global RNG
    model = MLP().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    if library == "flowfast":
        loss_fn = flowfast_step_fn(method, model)
    else:
        loss_fn = torchcfm_step_fn(method, model, tcfm)
    return model, opt, loss_fn


def train(model, opt, loss_fn, x0_all, x1_all, steps: int, device: torch.device) -> tuple[float, float, list[str]]:
    """Runs ``steps`` optimizer steps on consecutive batches. Returns (seconds, mean loss of the last
    10% of steps, warnings raised). The loss is accumulated on the device (no per-step sync)."""
    tail = max(1, steps // 10)
    loss_sum = torch.zeros((), device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            x0 = x0_all[i * BATCH:(i + 1) * BATCH]
            x1 = x1_all[i * BATCH:(i + 1) * BATCH]
            loss = loss_fn(x0, x1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= steps - tail:
                loss_sum += loss.detach()
        sync(device)
        seconds = time.perf_counter() - t0
    msgs = sorted({str(w.message).splitlines()[0][:90] for w in caught})
    return seconds, float(loss_sum) / tail, msgs


@torch.no_grad()
def evaluate(model, src, tgt, n: int, seed: int, device: torch.device) -> tuple[float, int]:
    g = torch.Generator().manual_seed(EVAL_SEED_BASE + seed)
    x0 = src(n, generator=g).to(device)
    x1 = tgt(n, generator=g).to(device)
    model.eval()
    res = odeint(model, x0, method="dopri5", atol=ATOL, rtol=RTOL)
    model.train()
    return wasserstein2(res.x, x1), res.nfe


def source_target_w2(src, tgt, n: int, seed: int, device: torch.device) -> float:
    g = torch.Generator().manual_seed(EVAL_SEED_BASE + seed)
    return wasserstein2(src(n, generator=g).to(device), tgt(n, generator=g).to(device))


# ---------------------------------------------------------------- table

def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pm(mean: Optional[float], std: Optional[float], digits: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def build_rows(results: dict, args, missing: dict) -> tuple[list[dict], list[dict]]:
    rows, raws = [], []
    for task in args.tasks:
        for method in args.methods:
            per_lib = {}
            for lib in args.libraries:
                runs = results.get((task, method, lib), [])
                w2 = [r["w2"] for r in runs]
                secs = [r["seconds"] / r["steps"] * 1000 for r in runs]
                per_lib[lib] = {"runs": runs, "w2": mean_std(w2), "s_per_1k": mean_std(secs),
                                "nfe": statistics.fmean([r["nfe"] for r in runs]) if runs else None,
                                "loss": statistics.fmean([r["final_loss"] for r in runs]) if runs else None,
                                "warnings": sorted({w for r in runs for w in r["warnings"]})}
            tc = per_lib.get("torchcfm")
            for lib in args.libraries:
                info = per_lib[lib]
                ref = REFERENCE[method][task]
                row = {"task": TASKS[task][0], "method": METHODS[method], "library": lib}
                if lib == "torchcfm" and "torchcfm" in missing:
                    row.update({"W2": "not installed", "paper W2": fmt_pm(*ref), "seeds": 0})
                    rows.append(row)
                    raws.append({"task": task, "method": method, "library": lib, "status": missing["torchcfm"]})
                    continue
                n = len(info["runs"])
                row.update({
                    "W2": fmt_pm(*info["w2"]),
                    "paper W2": fmt_pm(*ref),
                    "seeds": n,
                    "steps": args.steps,
                    "s / 1k steps": f"{info['s_per_1k'][0]:.2f}" if info["s_per_1k"][0] is not None else "—",
                })
                diff_txt, speed_txt = "—", "—"
                if lib == "flowfast" and tc and tc["runs"] and info["runs"]:
                    d = info["w2"][0] - tc["w2"][0]
                    s1, s2 = info["w2"][1], tc["w2"][1]
                    if s1 is not None and s2 is not None:
                        se = math.sqrt(s1 ** 2 / n + s2 ** 2 / len(tc["runs"]))
                        diff_txt = f"{d:+.3f} ± {se:.3f}"
                    else:
                        diff_txt = f"{d:+.3f}"
                    if info["s_per_1k"][0]:
                        speed_txt = _timing.fmt_ratio(tc["s_per_1k"][0] / info["s_per_1k"][0])
                row["W2 ff − tcfm"] = diff_txt
                row["torchcfm / ff time"] = speed_txt
                row["NFE"] = f"{info['nfe']:.0f}" if info["nfe"] is not None else "—"
                row["final loss"] = f"{info['loss']:.3f}" if info["loss"] is not None else "—"
                row["notes"] = "; ".join(f"warned: {w}" for w in info["warnings"])
                rows.append(row)
                raws.append({"task": task, "method": method, "library": lib, "runs": info["runs"],
                             "w2_mean": info["w2"][0], "w2_std": info["w2"][1],
                             "s_per_1k_steps_mean": info["s_per_1k"][0], "s_per_1k_steps_std": info["s_per_1k"][1],
                             "paper_w2": ref})
    return rows, raws


def global_notes(args, device: torch.device, missing: dict, baselines: dict) -> list[str]:
    out = [
        f"Protocol: {args.steps} training steps, batch {BATCH}, AdamW(lr={LR:g}, weight_decay={WEIGHT_DECAY:g}), "
        f"sigma {SIGMA}, MLP 3×{WIDTH} SELU on concat(x, t) (torchcfm's `models.MLP(2, w={WIDTH}, "
        "time_varying=True)` layout), no EMA; seeds "
        + ", ".join(map(str, args.seeds)) + f". Device: `{device}`.",
        "Same inputs for both libraries: for a seed, `torch.manual_seed(seed)` gives the same initial weights "
        "(both libraries then draw t and the noise from torch's global RNG, no explicit generator), "
        f"and the training batches are one stream drawn up front from `flowfast.data` (generator seed "
        f"{DATA_SEED_BASE} + seed), sliced into consecutive batches of {BATCH}; drawing it is not timed.",
        "flowfast: `paths.IndependentCFM(0.1).loss(model, x0, x1)` / `paths.OptimalTransportCFM(0.1)"
        ".loss(...)` (float32: fused interpolant kernels; OT-CFM re-pairs the batch with the exact optimal "
        "permutation). torchcfm: `ConditionalFlowMatcher(sigma=0.1)` / `ExactOptimalTransportConditionalFlowMatcher"
        "(sigma=0.1)` `.sample_location_and_conditional_flow(x0, x1)` + `model(xt, t)` + `torch.mean((vt - ut)**2)` "
        "(its OT-CFM samples pairs with replacement from POT's exact plan, on the host).",
        f"W2: `flowfast.samplers.odeint(model, x0, method='dopri5', atol={ATOL:g}, rtol={RTOL:g})` from {args.eval_n} "
        f"source samples, exact W2 (`flowfast.metrics.wasserstein2`) against {args.eval_n} target samples; the same "
        f"eval samples for both libraries (generator seed {EVAL_SEED_BASE} + seed). The paper evaluates on 10 000 "
        "samples; fewer samples bias W2 upwards. NFE: mean dopri5 velocity evaluations.",
        "W2 is mean ± std over seeds. `W2 ff − tcfm`: flowfast's mean minus torchcfm's, ± the standard error of the "
        "difference (Welch). `s / 1k steps`: training wall time per 1000 steps (mean over seeds; data slicing, "
        "loss, backward and AdamW step, no evaluation); `torchcfm / ff time` > 1 means flowfast trains faster. "
        "`final loss`: mean training loss over the last 10% of steps.",
        "Paper W2: 20k steps, 5 seeds, 10k eval samples (OT-CFM, Tong et al. TMLR 2024; re-reported in [SF]²M "
        "Table 2). Their scurve comes from the torchcfm runner (sklearn `make_s_curve`); ours is "
        "`flowfast.data.scurve`, so that column is the least comparable.",
    ]
    if baselines:
        out.append("W2(source, target) on the eval samples, i.e. an untrained identity map: "
                   + ", ".join(f"{TASKS[k][0]} {v:.3f}" for k, v in baselines.items()) + ".")
    for key, why in missing.items():
        out.append(f"{key}: {why}")
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=task_key, nargs="+", help=f"tasks (default all: {list(TASKS)})")
    p.add_argument("--methods", choices=list(METHODS), nargs="+", help="default: icfm otcfm")
    p.add_argument("--libraries", choices=LIBRARIES, nargs="+", help="default: flowfast torchcfm")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS}, the paper protocol)")
    p.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {list(SEEDS)})")
    p.add_argument("--eval-n", type=int, default=None, help=f"samples for W2 (default {EVAL_N}; the paper uses 10000)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="training and sampling device (auto: cuda when flowfast can use it, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 300 steps, seed 42, N→8gaussians and moons→8gaussians, eval-n 500; "
                        "files toy2d-quick-*")
    _timing.add_run_args(p, timing=False, tag_prefix="toy2d")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = args.steps or 300
        args.seeds = args.seeds or [42]
        args.tasks = args.tasks or ["n-8gaussians", "moons-8gaussians"]
        args.eval_n = args.eval_n or 500
    args.steps = args.steps or STEPS
    args.seeds = args.seeds or list(SEEDS)
    args.tasks = args.tasks or list(TASKS)
    args.methods = args.methods or list(METHODS)
    args.libraries = args.libraries or list(LIBRARIES)
    args.eval_n = args.eval_n or EVAL_N
    if args.steps < 1 or args.eval_n < 2:
        p.error("--steps must be >= 1 and --eval-n >= 2")
    return args


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda_ok = flowfast.cuda_available()
    if args.device == "cuda" and not cuda_ok:
        print("toy2d: --device cuda but flowfast.cuda_available() is False", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and cuda_ok)) else "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())

    peers, missing = _timing.import_optional({"torchcfm": _timing.load_torchcfm_matchers}) if "torchcfm" in args.libraries else ({}, {})
    tcfm = peers.get("torchcfm")
    libs = [lib for lib in args.libraries if lib != "torchcfm" or tcfm is not None]
    env = _timing.environment(dev)

    results: dict[tuple, list] = {}
    baselines: dict[str, float] = {}
    warmed: set = set()
    t_start = time.perf_counter()
    interrupted = False
    # Ctrl-C or SIGTERM (`kill`, a job time limit) still writes the runs finished so far; background
    # jobs of a non-interactive shell ignore SIGINT, hence SIGTERM too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for task in args.tasks:
            label, src_name, tgt_name = TASKS[task]
            src, tgt = data.get_sampler(src_name), data.get_sampler(tgt_name)
            baselines[task] = source_target_w2(src, tgt, args.eval_n, args.seeds[0], dev)
            for seed in args.seeds:
                g = torch.Generator().manual_seed(DATA_SEED_BASE + seed)
                x0_all = src(args.steps * BATCH, generator=g).to(dev)
                x1_all = tgt(args.steps * BATCH, generator=g).to(dev)
                for method in args.methods:
                    for lib in libs:
                        if (lib, method) not in warmed:  # first calls (custom-op registration, POT import, ...)
                            model, opt, loss_fn = make_model_and_loss(lib, method, seed, dev, tcfm)
                            train(model, opt, loss_fn, x0_all, x1_all, min(WARMUP_STEPS, args.steps), dev)
                            warmed.add((lib, method))
                        model, opt, loss_fn = make_model_and_loss(lib, method, seed, dev, tcfm)
                        seconds, final_loss, msgs = train(model, opt, loss_fn, x0_all, x1_all, args.steps, dev)
                        w2, nfe = evaluate(model, src, tgt, args.eval_n, seed, dev)
                        results.setdefault((task, method, lib), []).append(
                            {"seed": seed, "w2": w2, "nfe": nfe, "seconds": seconds, "steps": args.steps,
                             "final_loss": final_loss, "warnings": msgs})
                        print(f"[{dev}] {label} {METHODS[method]} {lib} seed {seed}: W2 {w2:.3f}, NFE {nfe}, "
                              f"{seconds / args.steps * 1000:.2f} s / 1k steps, loss {final_loss:.3f}",
                              file=sys.stderr, flush=True)
                del x0_all, x1_all
    except KeyboardInterrupt:
        interrupted = True
        print("toy2d: interrupted; writing the runs finished so far", file=sys.stderr)
    if not results:
        return 130 if interrupted else 1

    rows, raws = build_rows(results, args, missing)
    _timing.write_results(
        FAMILY + ("-quick" if args.quick else "") + (f"-threads{args.threads}" if args.threads else "")
        + (f"-{args.tag}" if args.tag else ""),
        rows, env, args.out,
        notes=global_notes(args, dev, missing, baselines)
        + (["Interrupted: only the runs listed finished (see `seeds`)."] if interrupted else []),
        extra={"raw": raws, "args": vars(args), "source_target_w2": baselines},
        title=f"toy2d — I-CFM / OT-CFM, flowfast vs torchcfm, W2 and training time on {env['device_name']} ({dev.type})",
    )
    print(f"toy2d: done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
