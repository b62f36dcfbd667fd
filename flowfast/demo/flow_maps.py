"""``python -m flowfast demo`` (what ``make demo`` runs): few-step sampling with flow maps.

An OT-CFM teacher is trained on N(0, I) -> 8 gaussians; then two flow maps on a two-time MLP: one
by Lagrangian self-distillation (LSD, no teacher, exact-OT pairs) and one distilled from the
teacher (LMD). The table compares their 1/2/4/8-jump samples with the teacher's ODE (Euler and
dopri5) by exact W2 and NFE; ``OUT/demo.png`` shows the samples side by side and
``OUT/results.json`` holds the numbers. Each run folder (``OUT/teacher``, ``OUT/lsd``,
``OUT/distill``) has a checkpoint that ``python -m flowfast sample/eval`` reads.
"""

from __future__ import annotations

import json
import os
import time

import torch

from flowfast import data, flowmaps, metrics, paths
from flowfast.demo._common import mean, pyplot, std, save_figure, torch_threads, w2_over_sets

#: (label, kind, steps) of the table's rows: the teacher's ODE solvers, then map jumps
TEACHER_SOLVERS = (("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 100), ("dopri5", None))
MAP_JUMPS = (1, 2, 4, 8)


def run_flowmap_demo(teacher_steps: int = 8000, map_steps: int = 8000, batch_size: int = 256, n_eval: int = 2000,
                     eval_sets: int = 3, seed: int = 0, out_dir: str = "runs/demo", device: str = "cpu",
                     progress: bool = True, threads: int | None = 1) -> dict:
    """Train the teacher and the two maps, print the W2 / NFE table, write the plot and JSON.

    Every W2 is a mean over ``eval_sets`` independent sets of ``n_eval`` source and target points
    (the same sets for every row). ``threads``: torch threads for the run (None keeps torch's).
    """
    with torch_threads(threads):
        return _demo(teacher_steps, map_steps, batch_size, n_eval, eval_sets, seed, out_dir, device, progress)


def _trainer(model, objective, steps, batch_size, seed, device, out_dir, progress, config):
    from flowfast.train import Trainer

    optimizer = torch.optim.Adam(model.to(device).parameters(), lr=1e-3)
    return Trainer(model, objective, data.gaussian, data.eight_gaussians, optimizer=optimizer,
                   batch_size=batch_size, seed=seed, device=device, log_every=max(1, steps // 10),
                   out_dir=out_dir, progress=progress, config=config)


def _demo(teacher_steps, map_steps, batch_size, n_eval, eval_sets, seed, out_dir, device, progress) -> dict:
    from flowfast.models import MLP, FlowMapMLP

    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed + 12345)
    sets = [(data.gaussian(n_eval, g), data.eight_gaussians(n_eval, g)) for _ in range(eval_sets)]
    floor = [metrics.wasserstein2(data.eight_gaussians(n_eval, g), x1) for _, x1 in sets]
    print(f"flowfast demo: flow maps on N(0, I) -> 8 gaussians: OT-CFM teacher ({teacher_steps} steps), LSD and "
          f"distilled maps ({map_steps} steps each), batch {batch_size}, {device}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results = {"task": "gaussian->8gaussians", "teacher_steps": teacher_steps, "map_steps": map_steps,
               "batch_size": batch_size, "n_eval": n_eval, "eval_sets": eval_sets, "seed": seed, "device": device,
               "w2_target_vs_target": mean(floor), "models": {}}

    def evaluate(name, label, trainer, sampler_calls, train_s, steps):
        rows = []
        for kind, k in sampler_calls:
            w2s, nfes = w2_over_sets(trainer, sets, kind, k)
            rows.append({"method": kind, "steps": k, "nfe": mean(nfes), "w2": mean(w2s), "w2_std": std(w2s)})
        results["models"][name] = {"label": label, "train_s": train_s, "ms_per_step": 1e3 * train_s / steps,
                                   "evals": rows, "checkpoint": trainer.checkpoint_path}

    torch.manual_seed(seed)
    teacher_net = MLP(2, hidden=64, depth=3)
    teacher = _trainer(teacher_net, paths.OptimalTransportCFM(sigma=0.1), teacher_steps, batch_size, seed, device,
                       os.path.join(out_dir, "teacher"), progress,
                       {"model": teacher_net.config(), "path": "otcfm", "sigma": 0.1, "source": "gaussian",
                        "target": "8gaussians", "batch_size": batch_size, "lr": 1e-3, "ema_decay": 0.999})
    start = time.perf_counter()
    teacher.train(teacher_steps)
    evaluate("teacher", "OT-CFM teacher (ODE)", teacher, TEACHER_SOLVERS, time.perf_counter() - start, teacher_steps)

    velocity = teacher.ema_model.requires_grad_(False)
    maps = {}
    for name, label, objective in (("lsd", "LSD map (exact-OT pairs)", flowmaps.LSD(coupling="exact")),
                                   ("distill", "map distilled from the teacher (LMD)", flowmaps.LMD(velocity))):
        torch.manual_seed(seed)
        net = FlowMapMLP(2, hidden=128, depth=3)
        config = {"model": net.config(), "model_kind": "flowmap_mlp", "method": name,
                  "coupling": "exact" if name == "lsd" else "independent", "source": "gaussian",
                  "target": "8gaussians", "batch_size": batch_size, "lr": 1e-3, "ema_decay": 0.999}
        if name == "distill":
            config["teacher"] = os.path.abspath(teacher.checkpoint_path)
        trainer = _trainer(flowmaps.FlowMap(net), objective, map_steps, batch_size, seed, device,
                           os.path.join(out_dir, name), progress, config)
        start = time.perf_counter()
        trainer.train(map_steps)
        evaluate(name, label, trainer, [("map", k) for k in MAP_JUMPS], time.perf_counter() - start, map_steps)
        maps[name] = trainer

    _print_table(results)
    plt = pyplot()
    if plt is not None:
        results["plot"] = _plot(plt, teacher, maps, results, sets[0], out_dir)
        print(f"plot written to {results['plot']}")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {os.path.join(out_dir, 'results.json')}")
    return results


def _print_table(results: dict) -> None:
    print()
    print("| model | sampler | NFE | W2 |")
    print("|---|---|---|---|")
    for model in results["models"].values():
        for e in model["evals"]:
            sampler = ("dopri5 (atol = rtol = 1e-5)" if e["method"] == "dopri5" else
                       f"{e['method']}, {e['steps']} step" + ("s" if e["steps"] > 1 else ""))
            print(f"| {model['label']} | {sampler} | {e['nfe']:.0f} | {e['w2']:.3f} ± {e['w2_std']:.3f} |")
    times = ", ".join(f"{m['label']} {m['ms_per_step']:.2f} ms" for m in results["models"].values())
    print(f"\ntrain time per step: {times}")
    print(f"W2: exact, EMA weights, mean ± std over {results['eval_sets']} eval set(s) of {results['n_eval']} points "
          f"(the same sets for every row); W2 between two target samples = {results['w2_target_vs_target']:.3f} "
          "(the floor at this n).")


def _plot(plt, teacher, maps: dict, results: dict, eval_set, out_dir: str) -> str:
    x0, target = eval_set[0][:1000], eval_set[1][:1000]
    panels = [("teacher", teacher, "euler", 1), ("teacher", teacher, "euler", 4), ("teacher", teacher, "dopri5", None)]
    panels += [(name, trainer, "map", k) for name, trainer in maps.items() for k in (1, 2, 4)]
    fig, axes = plt.subplots(3, 3, figsize=(12, 12), sharex=True, sharey=True)
    for ax, (name, trainer, kind, k) in zip(axes.flat, panels):
        res = trainer.sample(0, steps=k or 1, method=kind, x0=x0)
        x = res.x.cpu()
        w2 = next(e["w2"] for e in results["models"][name]["evals"] if e["method"] == kind and e["steps"] == k)
        ax.scatter(target[:, 0], target[:, 1], s=2, color="0.8")
        ax.scatter(x[:, 0], x[:, 1], s=2, color={"teacher": "C0", "lsd": "C1", "distill": "C2"}[name])
        sampler = "dopri5" if kind == "dopri5" else f"{k} {'Euler step' if kind == 'euler' else 'jump'}{'s' if k > 1 else ''}"
        ax.set_title(f"{results['models'][name]['label']}\n{sampler}: W2 {w2:.2f}, NFE {res.nfe}", fontsize=9)
        ax.set_aspect("equal")
    return save_figure(plt, fig, out_dir, "demo.png", dpi=100)
