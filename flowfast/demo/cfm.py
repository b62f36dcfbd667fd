"""``python -m flowfast demo --cfm``: I-CFM vs OT-CFM on N(0, I) -> 8 gaussians, a W2 / NFE table
for few- and many-step Euler and dopri5, ``OUT/cfm.png`` and ``OUT/cfm-results.json``."""

from __future__ import annotations

import json
import os
import time

import torch

from flowfast import data, metrics, paths
from flowfast.demo._common import mean as _mean, pyplot as _pyplot, std as _std, save_figure, torch_threads, w2_over_sets

#: (method, steps) of the demo's W2 table; steps None = adaptive.
DEMO_SOLVERS = (("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 100), ("dopri5", None))


def run_training_demo(steps: int = 12000, batch_size: int = 256, n_eval: int = 2000, eval_sets: int = 3,
                      seed: int = 0, out_dir: str = "runs/demo", device: str = "cpu", progress: bool = True,
                      sigma: float = 0.1, threads: int | None = 1) -> dict:
    """Train I-CFM and OT-CFM (MLP 3x64, SELU, AdamW 1e-3, EMA 0.999) on N(0, I) -> 8 gaussians and
    compare their samples by exact W2 (mean over ``eval_sets`` independent sets of ``n_eval`` points)
    for each solver in :data:`DEMO_SOLVERS`.

    Both models start from the same weights and see the same data stream; every W2 uses the same
    source points and the same target sample. Each model's run folder (``out_dir/icfm``,
    ``out_dir/otcfm``) holds ``metrics.jsonl`` and a ``checkpoint.pt`` that ``python -m flowfast
    eval/sample`` can read.

    ``threads``: torch intra-op threads for the run (default 1: the 64-wide MLP is too small for
    more threads to help, and a single thread does not collapse when other work shares the cores);
    ``None`` keeps torch's setting.
    """
    with torch_threads(threads):
        return _training_demo(steps, batch_size, n_eval, eval_sets, seed, out_dir, device, progress, sigma)


def _training_demo(steps, batch_size, n_eval, eval_sets, seed, out_dir, device, progress, sigma) -> dict:
    from flowfast.models import MLP
    from flowfast.train import Trainer, _derive_seed

    os.makedirs(out_dir, exist_ok=True)
    runs = (("I-CFM", "icfm", paths.IndependentCFM(sigma)), ("OT-CFM", "otcfm", paths.OptimalTransportCFM(sigma)))
    # W2 between n-point samples of 8 well-separated modes is dominated by how the n points split over
    # the modes (one unlucky draw can double it), so every number is a mean over independent eval sets.
    g = torch.Generator().manual_seed(_derive_seed(seed, "demo-eval"))
    sets = [(data.gaussian(n_eval, g), data.eight_gaussians(n_eval, g)) for _ in range(eval_sets)]
    reference = [metrics.wasserstein2(x0, x1) for x0, x1 in sets]
    floor = [metrics.wasserstein2(data.eight_gaussians(n_eval, g), x1) for _, x1 in sets]  # two target samples
    print(f"flowfast demo: I-CFM vs OT-CFM on N(0, I) -> 8 gaussians, sigma={sigma}, MLP 3x64, "
          f"{steps} steps x batch {batch_size}, {device}, torch threads {torch.get_num_threads()}", flush=True)
    results = {"task": "gaussian->8gaussians", "sigma": sigma, "steps": steps, "batch_size": batch_size,
               "n_eval": n_eval, "eval_sets": eval_sets, "seed": seed, "device": device,
               "threads": torch.get_num_threads(), "w2_source_vs_target": _mean(reference),
               "w2_target_vs_target": _mean(floor), "models": {}}
    trainers = {}
    for label, name, path in runs:
        torch.manual_seed(seed)
        model = MLP(2, hidden=64, depth=3)
        config = {"model": model.config(), "path": name, "sigma": sigma, "source": "gaussian",
                  "target": "8gaussians", "batch_size": batch_size, "lr": 1e-3, "ema_decay": 0.999}
        trainer = Trainer(model, path, data.gaussian, data.eight_gaussians, batch_size=batch_size, seed=seed,
                          device=device, log_every=max(1, steps // 10), out_dir=os.path.join(out_dir, name),
                          progress=progress, config=config)
        if progress:
            print(f"training {label} ...", flush=True)
        start = time.perf_counter()
        losses = trainer.train(steps)
        train_s = time.perf_counter() - start
        evals = []
        for method, n_steps in DEMO_SOLVERS:
            w2s, nfes = w2_over_sets(trainer, sets, method, n_steps)
            evals.append({"method": method, "steps": n_steps, "nfe": _mean(nfes), "w2": _mean(w2s),
                          "w2_std": _std(w2s), "w2_per_set": w2s, "nfe_per_set": nfes})
        tail = losses[-min(len(losses), 100):]
        results["models"][name] = {"label": label, "train_s": train_s, "s_per_1000_steps": 1000 * train_s / steps,
                                   "final_loss": sum(tail) / len(tail), "evals": evals,
                                   "checkpoint": trainer.checkpoint_path}
        trainers[name] = trainer

    icfm, otcfm = results["models"]["icfm"], results["models"]["otcfm"]
    print()
    print("| sampler | I-CFM NFE | I-CFM W2 | OT-CFM NFE | OT-CFM W2 |")
    print("|---|---|---|---|---|")
    for a, b in zip(icfm["evals"], otcfm["evals"]):
        if a["method"] == "dopri5":
            label = "dopri5 (atol = rtol = 1e-5)"
        else:
            label = f"euler, {a['steps']} step" + ("s" if a["steps"] > 1 else "")
        print(f"| {label} | {a['nfe']:.0f} | {a['w2']:.3f} ± {a['w2_std']:.3f} "
              f"| {b['nfe']:.0f} | {b['w2']:.3f} ± {b['w2_std']:.3f} |")
    print(f"| train time / 1000 steps | | {icfm['s_per_1000_steps']:.1f} s | | {otcfm['s_per_1000_steps']:.1f} s |")
    print(f"\nW2: exact, EMA weights, mean ± std over {eval_sets} eval set(s) of {n_eval} samples (the same "
          f"sets for every row). For scale: W2(source, target) = {_mean(reference):.3f}; W2 between two "
          f"target samples = {_mean(floor):.3f} (the floor at this n).")

    plt = _pyplot()
    if plt is not None:
        results["plot"] = _plot_training_demo(plt, trainers, results, sets[0][1], out_dir)
        print(f"plot written to {results['plot']}")
    with open(os.path.join(out_dir, "cfm-results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {os.path.join(out_dir, 'results.json')}")
    return results


def _plot_training_demo(plt, trainers: dict, results: dict, target: torch.Tensor, out_dir: str) -> str:
    g = torch.Generator().manual_seed(1)
    x0 = data.gaussian(1000, g)
    columns = (("euler", 1, "1 Euler step"), ("euler", 4, "4 Euler steps"), ("dopri5", None, "dopri5"))
    fig, axes = plt.subplots(2, 4, figsize=(16, 8), sharex=True, sharey=True)
    for row, (name, trainer) in enumerate(trainers.items()):
        label = results["models"][name]["label"]
        by_key = {(e["method"], e["steps"]): e for e in results["models"][name]["evals"]}
        for col, (method, steps, title) in enumerate(columns):
            ax = axes[row, col]
            x = trainer.sample(0, steps=steps or 1, method=method, x0=x0).x.cpu()
            e = by_key[(method, steps)]
            ax.scatter(target[:1000, 0], target[:1000, 1], s=2, color="0.8", label="target")
            ax.scatter(x[:, 0], x[:, 1], s=2, color="C0" if row == 0 else "C1", label="samples")
            ax.set_title(f"{label}: {title} (W2 {e['w2']:.2f}, NFE {e['nfe']:.0f})", fontsize=9)
        ax = axes[row, 3]
        traj = trainer.sample(0, steps=100, method="euler", x0=x0[:64], return_path=True).path.cpu()
        ax.scatter(target[:1000, 0], target[:1000, 1], s=2, color="0.8")
        ax.plot(traj[:, :, 0], traj[:, :, 1], color="olive", lw=0.5, alpha=0.7)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=6, color="black", label="x0")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, color="C3", label="x1")
        ax.set_title(f"{label}: trajectories (100 Euler steps)", fontsize=9)
    axes[0, 0].legend(loc="upper left", markerscale=4, fontsize=8)
    axes[0, 3].legend(loc="upper left", markerscale=2, fontsize=8)
    for ax in axes.flat:
        ax.set_aspect("equal")
    return save_figure(plt, fig, out_dir, "cfm.png", dpi=110)
