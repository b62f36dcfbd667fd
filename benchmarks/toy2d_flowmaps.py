#!/usr/bin/env python
"""Few-step flow maps on the 2D toys: LSD, ESD, PSD and a map distilled from an OT-CFM teacher,
next to the teacher's ODE, by exact W2.

For each task (the CFM protocol's four plus N→checkerboard) and seed:

1. **teacher**: OT-CFM (sigma 0.1, exact minibatch OT) on a velocity MLP, sampled by dopri5
   (atol = rtol = 1e-5) and by Euler with 100 (and 1/2/4/8) steps;
2. **flow maps** on a two-time MLP (``flowfast.models.FlowMapMLP``), each with the same steps, batch,
   optimizer and EMA as the teacher: ``lsd`` (independent pairs, the paper's setting), ``lsd-ot``
   (exact-OT pairs: do OT couplings help few-step maps?), ``esd``, ``psd`` (midpoint) and
   ``distill`` (LMD from the teacher's EMA velocity), sampled by composing 1, 2, 4 and 8 jumps.

Every W2 uses the same source points and the same target sample per (task, seed). Reported:
mean ± std over seeds, the ratio to the teacher's dopri5 W2, and the training time per step.

    python benchmarks/toy2d_flowmaps.py                     # 5 tasks x 3 seeds, 5000 steps each
    python benchmarks/toy2d_flowmaps.py --quick             # smoke run, about a minute
    python benchmarks/toy2d_flowmaps.py --tasks n-8gaussians --seeds 0 1 2 --steps 8000

Not a ``bench_*.py`` script (``run_all.py`` skips it): the default takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

from flowfast import data, flowmaps, paths  # noqa: E402
from flowfast.metrics import wasserstein2  # noqa: E402
from flowfast.models import MLP, FlowMapMLP  # noqa: E402
from flowfast.train import Trainer  # noqa: E402

FAMILY = "flowmap-toys"
TASKS = {
    "n-8gaussians": ("gaussian", "8gaussians"),
    "moons-8gaussians": ("moons", "8gaussians"),
    "n-moons": ("gaussian", "moons"),
    "n-scurve": ("gaussian", "scurve"),
    "n-checkerboard": ("gaussian", "checkerboard"),
}
MAP_STEPS = (1, 2, 4, 8)
METHODS = ("lsd", "lsd-ot", "esd", "psd", "distill")


def objective_for(method: str, teacher):
    if method == "lsd":
        return flowmaps.LSD()
    if method == "lsd-ot":
        return flowmaps.LSD(coupling="exact")
    if method == "esd":
        return flowmaps.ESD()
    if method == "psd":
        return flowmaps.PSD(gamma="midpoint")
    if method == "distill":
        return flowmaps.LMD(teacher)
    raise ValueError(method)


def train(model, objective, source, target, args, seed):
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    trainer = Trainer(model, objective, source, target, optimizer=optimizer, batch_size=args.batch,
                      ema_decay=0.999, seed=seed, progress=False, log_every=max(args.steps, 1))
    start = time.perf_counter()
    trainer.train(args.steps)
    return trainer, (time.perf_counter() - start) / args.steps


def run_task(task: str, seed: int, args) -> list[dict]:
    source_name, target_name = TASKS[task]
    source, target = data.get_sampler(source_name), data.get_sampler(target_name)
    g = torch.Generator().manual_seed(10_000 + seed)
    x0_eval, real = source(args.eval_n, g), target(args.eval_n, g)
    rows = []

    torch.manual_seed(seed)
    teacher_net = MLP(2, hidden=args.width, depth=args.depth)
    teacher, step_s = train(teacher_net, paths.OptimalTransportCFM(sigma=0.1), source, target, args, seed)
    velocity = teacher.ema_model
    base = {"task": task, "seed": seed}
    dopri = teacher.sample(args.eval_n, method="dopri5", x0=x0_eval)
    teacher_w2 = wasserstein2(dopri.x, real)
    rows.append({**base, "method": "teacher-ode", "solver": "dopri5", "nfe": dopri.nfe, "w2": teacher_w2,
                 "step_ms": 1e3 * step_s})
    for k in (*MAP_STEPS, 100):
        result = teacher.sample(args.eval_n, method="euler", steps=k, x0=x0_eval)
        rows.append({**base, "method": "teacher-ode", "solver": f"euler-{k}", "nfe": result.nfe,
                     "w2": wasserstein2(result.x, real), "step_ms": 1e3 * step_s})

    for method in args.methods:
        torch.manual_seed(seed)  # every map starts from the same weights
        flow_map = flowmaps.FlowMap(FlowMapMLP(2, hidden=args.width, depth=args.depth))
        objective = objective_for(method, velocity)
        trainer, step_s = train(flow_map, objective, source, target, args, seed)
        for k in MAP_STEPS:
            result = flowmaps.sample(trainer.ema_model, x0_eval, steps=k)
            rows.append({**base, "method": method, "solver": f"map-{k}", "nfe": result.nfe,
                         "w2": wasserstein2(result.x, real), "step_ms": 1e3 * step_s})
        print(f"  {task} seed {seed} {method}: " + ", ".join(
            f"{r['solver']} {r['w2']:.3f}" for r in rows if r["method"] == method and r["seed"] == seed),
            f"(teacher dopri5 {teacher_w2:.3f})", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    keys = sorted({(r["task"], r["method"], r["solver"]) for r in rows},
                  key=lambda k: (list(TASKS).index(k[0]), k[1] != "teacher-ode", k[1], k[2]))
    for task, method, solver in keys:
        group = [r for r in rows if (r["task"], r["method"], r["solver"]) == (task, method, solver)]
        teacher = {r["seed"]: r["w2"] for r in rows
                   if r["task"] == task and r["method"] == "teacher-ode" and r["solver"] == "dopri5"}
        w2 = [r["w2"] for r in group]
        ratios = [r["w2"] / teacher[r["seed"]] for r in group]
        table.append({"task": task, "method": method, "solver": solver, "nfe": group[0]["nfe"],
                      "W2 mean": round(statistics.mean(w2), 4),
                      "W2 std": round(statistics.stdev(w2), 4) if len(w2) > 1 else 0.0,
                      "W2 / teacher dopri5": round(statistics.mean(ratios), 3),
                      "train ms/step": round(statistics.mean(r["step_ms"] for r in group), 3), "seeds": len(group)})
    return table


def merge(args) -> int:
    import json

    rows, notes, env = [], [], None
    for path in args.merge:
        payload = json.loads(Path(path).read_text())
        rows += payload["extra"]["per_seed"]
        notes = payload["notes"]
        env = payload["env"]
    family = FAMILY + (f"-{args.tag}" if args.tag else "")
    _timing.write_results(family, summarise(rows), env, args.out, notes=notes + [f"merged from {len(args.merge)} runs"],
                          extra={"per_seed": rows, "merged_from": [Path(p).name for p in args.merge]})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--eval-n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="appended to the result file name")
    parser.add_argument("--quick", action="store_true", help="smoke run: one task, one seed, 200 steps")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="re-summarise the per-seed rows of earlier runs (e.g. tasks run in parallel) into one table")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    if args.quick:
        args.tasks, args.seeds, args.steps, args.eval_n = args.tasks[:1], args.seeds[:1], 200, 500
    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            rows += run_task(task, seed, args)
    table = summarise(rows)
    family = FAMILY + (f"-{args.tag}" if args.tag else "") + ("-quick" if args.quick else "")
    notes = [f"{args.steps} steps, batch {args.batch}, Adam lr {args.lr}, EMA 0.999, {len(args.seeds)} seed(s), "
             f"W2 on {args.eval_n} points (exact); nets: teacher MLP {args.depth}x{args.width} SELU, "
             f"maps FlowMapMLP {args.depth}x{args.width} GELU with separate s and t embeddings",
             "teacher: OT-CFM sigma 0.1; maps: straight interpolant without noise, 75% of each batch on s = t",
             "map-K = K jumps of the flow map on the uniform grid (NFE = K); euler-K / dopri5 = the teacher's ODE"]
    _timing.write_results(family, table, _timing.environment("cpu"), args.out, notes=notes,
                          extra={"per_seed": rows, "settings": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
