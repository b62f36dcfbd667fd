#!/usr/bin/env python
"""NFM couplings against independent and OT couplings at few NFE, on the 2D toys and 8x8 digits.

For every task:

1. **teacher**: a TarFlow (``flowfast.nfm``) trained by noise-augmented maximum likelihood with
   the TarFlow recipe (AdamW (0.9, 0.95), warm-up, gradient clipping, EMA), seed 0; reported: its
   own samples' quality (inverse flow + Tweedie denoising; W2 and, on digits, the digit scores)
   and its NLL per dimension;
2. **students**: the same velocity MLP, steps, batch, optimizer, EMA and seeds for every coupling
   on the rectified-flow path (``IndependentCFM(sigma=0)``): ``independent``, ``exact`` (exact
   minibatch OT, ``flowfast.couplings``), ``sinkhorn`` (entropic OT, reg 0.05) and ``nfm``
   (``NFMCoupling`` on the teacher's EMA weights, sigma_f fitted on the training data; on digits
   a cache of 8 encodings per image);
3. **evaluation**: Euler with 1, 2, 4, 8 NFE and dopri5 (atol = rtol = 1e-5) from the same source
   points; exact W2 to a fresh target sample (toys) or to the digit set (digits, 64-d pixels),
   the digit classifier's confidence (``flowfast.digit_quality``), and the path curvature of
   Euler-128 paths (``flowfast.metrics.path_curvature``, the NFM paper's straightness measure).

Reported: mean ± std over seeds, and the training time per step (the coupling's cost included).

    python benchmarks/nfm_tasks.py                          # 3 toys + digits, 3 seeds
    python benchmarks/nfm_tasks.py --tasks moons --seeds 0  # one task, one seed
    python benchmarks/nfm_tasks.py --quick                  # smoke run

Writes ``nfm-tasks-<tasks>-<device>-<date>.{json,md}``. Not a ``bench_*.py`` script: the default
takes about half an hour on a CPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from flowfast import data, paths  # noqa: E402
from flowfast.couplings import ExactOTCoupling, SinkhornCoupling  # noqa: E402
from flowfast.metrics import path_curvature, wasserstein2  # noqa: E402
from flowfast.models import MLP  # noqa: E402
from flowfast.nfm import NFMCoupling, TarFlow, TarFlowObjective  # noqa: E402
from flowfast.train import Trainer  # noqa: E402

FAMILY = "nfm-tasks"
TOYS = ("8gaussians", "moons", "checkerboard")
TASKS = TOYS + ("digits",)
COUPLINGS = ("independent", "exact", "sinkhorn", "nfm")
EULER_NFE = (1, 2, 4, 8)
#: the teacher per task kind: TarFlow kwargs and training settings
TEACHERS = {
    "toy": {"flow": {"width": 32, "blocks": 8, "layers": 1, "heads": 4}, "steps": 3000, "batch": 256, "lr": 2e-3,
            "eta": 0.05},
    "digits": {"flow": {"patch": 2, "width": 64, "blocks": 4, "layers": 2, "heads": 4}, "steps": 4000, "batch": 128,
               "lr": 1e-3, "eta": 0.05},
}


def task_data(task: str, size: int):
    """(the training set, its sample shape): the digits, or ``size`` toy draws with a fixed seed (a
    finite set, so every coupling sees the same data and NFM can cache its encodings)."""
    if task == "digits":
        images = data.digits()
        return images, tuple(images.shape[1:])
    return data.get_sampler(task)(size, torch.Generator().manual_seed(0)), (2,)


def real_sample(task: str, target, n: int, seed: int) -> torch.Tensor:
    """What samples are compared with: the digit set, or a fresh toy sample."""
    if task == "digits":
        return target
    return data.get_sampler(task)(n, torch.Generator().manual_seed(2000 + seed))


def train_teacher(task: str, target, shape: tuple, args) -> tuple[TarFlow, dict]:
    spec = TEACHERS["digits" if task == "digits" else "toy"]
    steps = args.teacher_steps or spec["steps"]
    torch.manual_seed(0)
    flow = TarFlow(shape, **spec["flow"])
    objective = TarFlowObjective(spec["eta"])
    trainer = Trainer(flow, objective=objective, source=None, target=target, batch_size=spec["batch"], seed=0,
                      optimizer=torch.optim.AdamW(flow.parameters(), lr=spec["lr"], betas=(0.9, 0.95), weight_decay=1e-4),
                      ema_decay=0.999, grad_clip=1.0, warmup_steps=min(200, steps // 10), progress=False)
    saved = Path(args.teacher_dir) / f"{task}-teacher.pt" if args.teacher_dir else None
    if saved is not None and saved.exists():  # reuse a teacher of an earlier run (same task and settings)
        trainer.resume(str(saved))
    start = time.perf_counter()
    losses = trainer.train(steps)
    seconds = time.perf_counter() - start
    if saved is not None:
        trainer.save(str(saved))
    flow = trainer.ema_model.requires_grad_(False).eval()
    real = real_sample(task, target, args.n, 0)
    x0 = torch.randn((real.shape[0], *shape), generator=torch.Generator().manual_seed(1000))
    samples = objective.sample(flow, x0).x
    report = {"steps": steps, "s_per_step": seconds / len(losses) if losses else float("nan"),
              "final_loss": statistics.fmean(losses[-100:]) if losses else None,
              "nll_per_dim": objective.nll(flow, real + spec["eta"] * torch.randn(real.shape, generator=torch.Generator().manual_seed(7))),
              "w2": wasserstein2(samples, real), "config": {**spec, "steps": steps}}
    report.update(digit_scores(task, samples, args))
    return flow, report


def make_coupling(name: str, flow: TarFlow, target, task: str):
    if name == "independent":
        return None
    if name == "exact":
        return ExactOTCoupling()
    if name == "sinkhorn":
        return SinkhornCoupling(reg=0.05)
    eta = TEACHERS["digits" if task == "digits" else "toy"]["eta"]
    coupling = NFMCoupling(flow, eta)
    coupling.fit_scale(target, torch.Generator().manual_seed(0))
    return coupling.cache(target, draws=8 if task == "digits" else 4)


_SCORER = {}


def digit_scores(task: str, samples: torch.Tensor, args) -> dict:
    if task != "digits":
        return {}
    from flowfast.digit_quality import DigitScorer

    if "scorer" not in _SCORER:
        _SCORER["scorer"] = DigitScorer()
    score = _SCORER["scorer"].score(samples.clamp(-1, 1))
    return {"confidence": score["confidence"], "nn_ratio": score["nn_ratio"], "class_entropy": score["class_entropy"]}


def run_student(task: str, coupling_name: str, seed: int, flow: TarFlow, target, shape: tuple, args) -> dict:
    coupling = make_coupling(coupling_name, flow, target, task)
    path = paths.IndependentCFM(sigma=0.0, coupling=coupling)
    torch.manual_seed(seed)
    model = MLP(dim=math.prod(shape), hidden=args.hidden, depth=args.depth, sample_shape=shape)
    trainer = Trainer(model, path, source=None, target=target, batch_size=args.batch, seed=seed, ema_decay=0.999,
                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5), progress=False)
    start = time.perf_counter()
    trainer.train(args.steps)
    row = {"task": task, "coupling": coupling_name, "seed": seed, "s_per_step": (time.perf_counter() - start) / args.steps}
    real = real_sample(task, target, args.n, seed)
    x0 = torch.randn((real.shape[0], *shape), generator=torch.Generator().manual_seed(1000 + seed))
    for nfe in EULER_NFE:
        x = trainer.sample(0, steps=nfe, method="euler", x0=x0).x
        row[f"w2_euler{nfe}"] = wasserstein2(x, real)
        row.update({f"{k}_euler{nfe}": v for k, v in digit_scores(task, x, args).items()})
    adaptive = trainer.sample(0, method="dopri5", x0=x0, atol=1e-5, rtol=1e-5)
    row["w2_dopri5"], row["nfe_dopri5"] = wasserstein2(adaptive.x, real), adaptive.nfe
    row.update({f"{k}_dopri5": v for k, v in digit_scores(task, adaptive.x, args).items()})
    euler = trainer.sample(0, steps=128, method="euler", x0=x0[:1000], return_path=True)
    row["curvature"] = path_curvature(euler.path, euler.times)
    return row


def mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for name in COUPLINGS:
            group = [r for r in rows if r["task"] == task and r["coupling"] == name]
            if not group:
                continue
            line = {"task": task, "coupling": name, "seeds": len(group)}
            for key in [f"w2_euler{k}" for k in EULER_NFE] + ["w2_dopri5", "nfe_dopri5", "curvature"]:
                line[key] = mean_std([r[key] for r in group])
            if task == "digits":
                line["confidence_euler4"] = mean_std([r["confidence_euler4"] for r in group])
                line["confidence_dopri5"] = mean_std([r["confidence_dopri5"] for r in group])
            line["ms_per_step"] = f"{1e3 * statistics.fmean(r['s_per_step'] for r in group):.2f}"
            table.append(line)
    return table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--couplings", nargs="+", default=list(COUPLINGS), choices=COUPLINGS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000, help="student steps")
    p.add_argument("--teacher-steps", type=int, default=None, help="override the teacher's steps")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="evaluation samples (toys)")
    p.add_argument("--toy-size", type=int, default=20000, help="training set size of each toy")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-dir", default=None, help="save each task's trained teacher here and reuse it next run")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budgets")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.teacher_steps, args.n, args.seeds, args.toy_size = 30, 30, 200, args.seeds[:1], 2000
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, teachers = [], {}
    for task in args.tasks:
        target, shape = task_data(task, args.toy_size)
        flow, teachers[task] = train_teacher(task, target, shape, args)
        print(f"[{task}] teacher: w2 {teachers[task]['w2']:.4f}, nll/dim {teachers[task]['nll_per_dim']:.3f}, "
              f"{teachers[task]['s_per_step'] * 1e3:.1f} ms/step", flush=True)
        for seed in args.seeds:
            for name in args.couplings:
                row = run_student(task, name, seed, flow, target, shape, args)
                rows.append(row)
                print(f"[{task}] {name} seed {seed}: " + ", ".join(f"w2@{k} {row[f'w2_euler{k}']:.4f}" for k in EULER_NFE)
                      + f", dopri5 {row['w2_dopri5']:.4f} ({row['nfe_dopri5']} nfe), curvature {row['curvature']:.4f}",
                      flush=True)
    table = summarize(rows)
    notes = [
        "Students: velocity MLP (hidden {h}, depth {d}, SELU), rectified-flow path IndependentCFM(sigma=0), AdamW lr 1e-3, "
        "batch {b}, {s} steps, EMA 0.999, seeds {seeds}; every coupling trains the same net with the same seeds.".format(
            h=args.hidden, d=args.depth, b=args.batch, s=args.steps, seeds=args.seeds),
        "W2: exact, between samples from the same source points and a fresh target sample ({n} points; digits: the "
        "1797 images as 64-d vectors in [-1, 1]). Euler k = k NFE; dopri5 atol = rtol = 1e-5.".format(n=args.n),
        "curvature: (1/D) E int ||v_t - (x_1 - x_0)||^2 dt on Euler-128 paths of 1000 samples (0 = straight).",
        "Data: each toy is a fixed training set of {t} draws (digits: the 1797 images), the same for every coupling "
        "and the teacher.".format(t=args.toy_size),
        "nfm: NFMCoupling(teacher EMA weights, eta of the teacher), sigma_f fitted on the training set, a cache of 4 "
        "encodings per toy point (8 per digit): the teacher runs once per (row, draw), before training. ms_per_step "
        "includes the coupling (for nfm: the cache look-up).",
        "Teacher: TarFlow (toys: 2 tokens of 1, width 32, 8 blocks x 1 layer; digits: 2x2 patches, 16 tokens of 4, width "
        "64, 4 blocks x 2 layers), AdamW (0.9, 0.95) wd 1e-4, warm-up, grad clip 1, EMA 0.999, eta 0.05; its samples: "
        "inverse flow + one Tweedie denoising step.",
        f"{args.threads} torch thread(s); CPU timings on a 2-core machine shared with other jobs.",
    ]
    for task, r in teachers.items():
        extra = f", digit confidence {r['confidence']:.3f}, nn_ratio {r['nn_ratio']:.2f}" if "confidence" in r else ""
        notes.append(f"teacher on {task}: its own samples' W2 {r['w2']:.4f}{extra}, NLL {r['nll_per_dim']:.3f} nats/dim "
                     f"(noisy data), {r['steps']} steps at {1e3 * r['s_per_step']:.1f} ms/step")
    family = f"{FAMILY}-{'-'.join(args.tasks) if len(args.tasks) < len(TASKS) else 'all'}" + ("-quick" if args.quick else "")
    _timing.write_results(family, table, _timing.environment("cpu"), args.out_dir, notes=notes,
                          extra={"rows": rows, "teachers": teachers, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
