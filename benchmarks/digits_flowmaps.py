#!/usr/bin/env python
"""Few-step flow maps on scikit-learn's 8x8 digits: sample grids and a digit-quality score.

One ``FlowMap(FlowMapUNet(channels=1, size=8))`` is trained by Lagrangian self-distillation
(``flowmaps.LSD()``, the paper's best objective; ``--method psd`` for progressive self-distillation)
from N(0, I) noise to the digits, then sampled from the same 1000 noise draws by

- composing 1, 2, 4 (and 8) jumps of the EMA flow map (``method="map"``, NFE = jumps), and
- integrating the map's diagonal velocity v_{t,t} (the ODE baseline, same network): adaptive
  dopri5 (atol = rtol = 1e-5, its NFE reported) and Euler with 100 steps.

Data split: the 360 digits that ``flowfast.digit_quality.DigitScorer``'s classifier holds out
(``scorer.heldout_index``, fixed by its seed 0) are held out of training too; the generator trains on
the other 1437. So the "real held-out" reference row is digits that neither the generator nor the
classifier has seen, and the nearest-neighbour statistics (``DigitScorer(train=<training split>)``)
measure distance to exactly what the generator saw. Two anchors bracket the scale: real held-out
digits (what a perfect generator scores) and uniform noise in [-1, 1] (what junk scores); the
N(0, I) source itself (0 steps) is listed too.

Writes ``digits-flowmaps-<device>-<date>.{json,md,png}`` (``-quick-`` / ``-<tag>-`` / ``-psd-`` in
the name for those runs): the score table, the settings, the training time per step, the loss curve
and a PNG with a 10x10 grid per sampler side by side (1, 2, 4 jumps, dopri5, real held-out digits;
the same noise draw in the same cell of every generated grid).

    python benchmarks/digits_flowmaps.py                 # 6000 LSD steps: about 10-15 min on a busy CPU core
    python benchmarks/digits_flowmaps.py --quick         # smoke run, under a minute
    python benchmarks/digits_flowmaps.py --steps 20000 --lr 1e-3 --tag long
    python benchmarks/digits_flowmaps.py --method psd

Not a ``bench_*.py`` script (``run_all.py`` skips it): it trains a model. How to read the scores:
the module docstring of ``flowfast/digit_quality.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

from flowfast import data, flowmaps  # noqa: E402
from flowfast.digit_quality import DigitScorer  # noqa: E402
from flowfast.models import FlowMapUNet  # noqa: E402
from flowfast.train import Trainer  # noqa: E402

FAMILY = "digits-flowmaps"
MAP_STEPS = (1, 2, 4, 8)
GRID_PANELS = ("map-1", "map-2", "map-4", "dopri5", "real held-out")  # the PNG, left to right
SCORE_KEYS = ("confidence", "confident_fraction", "class_entropy", "nn_distance", "nn_ratio", "close_fraction",
              "far_fraction", "clamped_fraction")
COLUMNS = ("sampler", "NFE", "n", *SCORE_KEYS, "min class share", "sample s")


def make_objective(method: str):
    if method == "lsd":
        return flowmaps.LSD()
    if method == "psd":
        return flowmaps.PSD(gamma="midpoint")
    raise ValueError(method)


def split(images: torch.Tensor, heldout_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, held-out images): held-out = the scorer classifier's own held-out digits."""
    mask = torch.ones(images.shape[0], dtype=torch.bool)
    mask[heldout_index] = False
    return images[mask].contiguous(), images[heldout_index].contiguous()


def train(args, train_x: torch.Tensor):
    torch.manual_seed(args.seed)
    model = flowmaps.FlowMap(FlowMapUNet(channels=1, size=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    trainer = Trainer(model, objective=make_objective(args.method), source=None, target=train_x,
                      batch_size=args.batch, ema_decay=args.ema, optimizer=optimizer, seed=args.seed,
                      progress=False, log_every=10 ** 9)
    losses: list[float] = []
    chunk = max(1, min(500, args.steps // 10 or 1))
    start = time.perf_counter()
    while trainer.step < args.steps:
        target = min(args.steps, trainer.step + chunk)
        losses += trainer.train(target)
        elapsed = time.perf_counter() - start
        recent = losses[-chunk:]
        print(f"  step {trainer.step}/{args.steps}: loss {sum(recent) / len(recent):.4f} (last {len(recent)}), "
              f"{elapsed:.0f} s, {1e3 * elapsed / trainer.step:.0f} ms/step", flush=True)
    train_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    return trainer, losses, train_s, n_params


def loss_curve(losses: list[float], points: int = 40) -> list[dict]:
    """Mean loss over ``points`` equal windows (for the JSON)."""
    if not losses:
        return []
    width = max(1, math.ceil(len(losses) / points))
    return [{"step": min(len(losses), i + width), "loss": sum(losses[i:i + width]) / len(losses[i:i + width])}
            for i in range(0, len(losses), width)]


def score_row(scorer: DigitScorer, name: str, x: torch.Tensor, nfe, seconds=None) -> tuple[dict, list[float]]:
    s = scorer.score(x)
    row = {"sampler": name, "NFE": nfe, "n": s["n"]}
    row.update({k: round(s[k], 4) for k in SCORE_KEYS})
    row["min class share"] = round(min(s["class_histogram"]), 4)
    row["sample s"] = None if seconds is None else round(seconds, 2)
    return row, s["class_histogram"]


def ideal_entropy(n: int, repeats: int = 400) -> float:
    """Mean plug-in entropy (nats) of the class histogram of n draws from ten equally likely classes."""
    g = torch.Generator().manual_seed(0)
    counts = torch.multinomial(torch.full((10,), 0.1), n * repeats, replacement=True, generator=g)
    hist = torch.nn.functional.one_hot(counts.reshape(repeats, n), 10).sum(1).double() / n
    ent = -(hist * hist.clamp_min(1e-300).log()).sum(1)
    return float(ent.mean())


def tile(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``(rows * rows, 1, 8, 8)`` in [-1, 1] -> one ``(9 rows + 1, 9 rows + 1)`` image with
    1-pixel light separators (background of the digits is -1, drawn white)."""
    x = x[: rows * rows].clamp(-1, 1)[:, 0]
    if x.shape[0] < rows * rows:  # fewer samples than cells: blank the rest
        x = torch.cat([x, torch.full((rows * rows - x.shape[0], 8, 8), -1.0)])
    side = 9 * rows + 1
    canvas = torch.full((side, side), -0.8)
    for i in range(rows * rows):
        r, c = divmod(i, rows)
        canvas[1 + 9 * r: 9 + 9 * r, 1 + 9 * c: 9 + 9 * c] = x[i]
    return canvas


def write_png(path: Path, panels: dict, rows_by_name: dict, rows: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.9))
    for ax, (name, x) in zip(axes, panels.items()):
        ax.imshow(tile(x, rows).numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        r = rows_by_name[name]
        ax.set_title(f"{name} (NFE {r['NFE'] if r['NFE'] is not None else '-'})\n"
                     f"conf {r['confidence']:.2f}, NN ratio {r['nn_ratio']:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="lsd", choices=("lsd", "psd"),
                        help="lsd (Lagrangian self-distillation, default) or psd (progressive, midpoint)")
    parser.add_argument("--steps", type=int, default=6000, help="training steps (default 6000)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights that are sampled")
    parser.add_argument("--eval-n", type=int, default=1000, help="samples per sampler (same x0 for all)")
    parser.add_argument("--euler-steps", type=int, default=100)
    parser.add_argument("--grid", type=int, default=10, help="the PNG shows grid x grid samples per sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine 2 threads ran ~10x slower)")
    parser.add_argument("--tag", default="", help="appended to the result file names")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 steps, 200 samples (under a minute)")
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR), help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_n = 100, 200
    if args.steps < 1 or args.eval_n < 1 or args.grid < 1:
        parser.error("--steps, --eval-n and --grid must be >= 1")
    torch.set_num_threads(args.threads)
    env = _timing.environment("cpu")

    images = data.digits()
    scorer_full = DigitScorer(seed=0)  # trains the classifier once (cached); gives its held-out split
    train_x, heldout = split(images, scorer_full.heldout_index)
    scorer = DigitScorer(train=train_x, seed=0)
    print(f"digits: {train_x.shape[0]} training, {heldout.shape[0]} held out; classifier held-out accuracy "
          f"{scorer.heldout_accuracy:.3f}; real leave-one-out NN distance {scorer.real_nn_distance:.3f}", flush=True)

    print(f"training {args.method} for {args.steps} steps (batch {args.batch}, Adam lr {args.lr}, EMA {args.ema}, "
          f"{torch.get_num_threads()} thread(s))", flush=True)
    trainer, losses, train_s, n_params = train(args, train_x)

    g = torch.Generator().manual_seed(12_345 + args.seed)
    x0 = torch.randn((args.eval_n, 1, 8, 8), generator=g)
    noise = torch.rand((args.eval_n, 1, 8, 8), generator=g) * 2 - 1
    rows, hists, samples = [], {}, {}

    def add(name, x, nfe, seconds=None):
        row, hist = score_row(scorer, name, x, nfe, seconds)
        rows.append(row)
        hists[name] = hist
        samples[name] = x
        print(f"  {name}: " + ", ".join(f"{k} {row[k]}" for k in ("NFE", "confidence", "class_entropy", "nn_ratio")),
              flush=True)

    for k in MAP_STEPS:
        t0 = time.perf_counter()
        result = trainer.sample(args.eval_n, steps=k, method="map", x0=x0)
        add(f"map-{k}", result.x, result.nfe, time.perf_counter() - t0)
    t0 = time.perf_counter()
    result = trainer.sample(args.eval_n, method="dopri5", x0=x0)
    add("dopri5", result.x, result.nfe, time.perf_counter() - t0)
    t0 = time.perf_counter()
    result = trainer.sample(args.eval_n, steps=args.euler_steps, method="euler", x0=x0)
    add(f"euler-{args.euler_steps}", result.x, result.nfe, time.perf_counter() - t0)
    add("real held-out", heldout, None)
    add("noise U[-1,1]", noise, None)
    add("source x0 ~ N(0,I)", x0, 0)

    family = FAMILY + (f"-{args.method}" if args.method != "lsd" else "") + (f"-{args.tag}" if args.tag else "") \
        + ("-quick" if args.quick else "")
    step_ms = 1e3 * train_s / args.steps
    tail = losses[-min(len(losses), 200):]
    notes = [
        f"model: FlowMap(FlowMapUNet(channels=1, size=8)), {n_params} parameters; objective "
        f"{'LSD (Lagrangian self-distillation)' if args.method == 'lsd' else 'PSD-M (progressive, midpoint)'}, "
        "straight interpolant without noise, 75% of each batch on s = t; source N(0, I)",
        f"training: {args.steps} steps, batch {args.batch}, Adam lr {args.lr}, EMA {args.ema} (samples use the EMA "
        f"weights), seed {args.seed}; {train_s:.0f} s in all = {step_ms:.0f} ms/step on {torch.get_num_threads()} "
        f"torch thread(s) of a shared CPU (load average {env.get('loadavg_1m')} at start); final loss "
        f"{sum(tail) / len(tail):.4f} (mean of the last {len(tail)} steps)",
        f"data: {train_x.shape[0]} training digits; the {heldout.shape[0]} held out are the scorer classifier's own "
        "held-out split (DigitScorer(seed=0).heldout_index), unseen by both the generator and the classifier; "
        "the NN statistics are against the training split (DigitScorer(train=<training split>))",
        f"every generated row uses the same {args.eval_n} N(0, I) draws x0; map-K = K jumps of the EMA flow map on "
        f"the uniform grid (NFE = K); dopri5 (atol = rtol = 1e-5) and euler-{args.euler_steps} integrate the same "
        "network's diagonal velocity v_{t,t} (the ODE baseline); 'sample s' = wall time of that sampler",
        "how to read the scores: the module docstring of flowfast/digit_quality.py. In short: confidence / "
        f"confident_fraction near the 'real held-out' row (classifier confidence {scorer.real_confidence:.2f}) = clear "
        "digits, low = blurry or blended; class_entropy near log 10 = 2.303 (min class share near 0.1) = all ten "
        "classes, lower = mode collapse; nn_ratio ~ 1 and close/far fractions ~ 0.05 = as novel as real held-out "
        "digits, nn_ratio << 1 / close_fraction -> 1 = copying the training set, nn_ratio >> 1 / far_fraction -> 1 "
        "= off the data (uniform noise row); clamped_fraction = pixel values outside [-1, 1] (clamped before "
        "scoring). A good sampler is near the real row on all of them at once",
        f"finite-sample yardstick for class_entropy: {args.eval_n} draws from ten equally likely classes give "
        f"{ideal_entropy(args.eval_n):.3f} on average "
        f"({heldout.shape[0]} draws: {ideal_entropy(heldout.shape[0]):.3f}); "
        "the real held-out row's own class mix is not exactly uniform either",
    ]
    extra = {"settings": vars(args), "n_params": n_params, "train_s": train_s, "train_ms_per_step": step_ms,
             "loss_curve": loss_curve(losses), "class_histograms": hists,
             "n_train": train_x.shape[0], "n_heldout": heldout.shape[0],
             "heldout_index": scorer_full.heldout_index.tolist(),
             "scorer": {"heldout_accuracy": scorer.heldout_accuracy, "real_confidence": scorer.real_confidence,
                        "real_confident_fraction": scorer.real_confident_fraction,
                        "real_nn_distance_train_split": scorer.real_nn_distance}}
    out = _timing.write_results(family, rows, env, args.out, columns=COLUMNS, notes=notes, extra=extra,
                                title=f"{family}: {args.method.upper()} flow map on 8x8 digits, {args.steps} steps — "
                                      f"{env.get('device_name')}")
    png = out["json"].with_suffix(".png")
    by_name = {r["sampler"]: r for r in rows}
    write_png(png, {name: samples[name] for name in GRID_PANELS}, by_name, args.grid,
              f"{args.method.upper()} flow map (FlowMapUNet, {args.steps} steps, EMA) on 8x8 digits: same x0 per cell; "
              "right: real held-out digits")
    print(f"wrote {png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
