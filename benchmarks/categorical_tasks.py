#!/usr/bin/env python
"""Categorical flow maps on the discrete tasks with exact metrics: VFM (the plain discrete model,
Euler), CSD and ECLD flow maps (few jumps), and Meta's ``flow_matching`` discrete FM as a peer.

Tasks (``flowfast.categorical.tasks``):

- ``markov``: ``MarkovChainTask(vocab=16, length=32)``, a fixed training set of 20000 sequences
  drawn with a fixed generator; exact NLL of the samples against the chain's entropy rate;
- ``brackets``: ``BracketsTask(length=32, kinds=3)`` (V = 6), 20000 training words likewise; exact
  validity of the samples;
- ``digits``: ``BinaryDigitsTask`` (V = 2, L = 64), trained on its 1437-image ``.train`` split;
  classifier confidence, class entropy and Hamming distance to the training set.

For every task and seed each method trains the same network (``SimplexTransformer(V, L, width,
depth, heads)``, the same initial weights per seed) with the same optimizer (AdamW), batch, steps,
EMA and the same data batches (the trainer's shuffled epochs of the training set):

- ``vfm``: ``CategoricalObjective(V, "vfm")`` (diagonal cross-entropy only), sampled by K Euler steps
  of the diagonal (K = 1, 2, 4, 8, 100);
- ``csd`` / ``ecld``: the flow-map objectives (75% of each batch on the diagonal), sampled by K jumps
  (K = 1, 2, 4, 8) and, as a reference, by 100 Euler steps of their own diagonal;
- ``peer`` (markov only by default): ``flow_matching``'s mixture path with a uniform source and its
  generalized-KL loss (``benchmarks/_flow_matching_peer.py``), the same network class fed one-hot
  states, sampled by its own Euler solver (K = 1, 2, 4, 8, 32; the last step draws from the
  posterior).

Every flowfast sampler of a (task, seed) starts from the same ``n`` N(0, I) draws ``x0``; tokens are
the argmax of the final state. Reported: mean ± std over seeds per (method, sampler, K), with NFE,
the training wall time and steps/s per method, and a check of the goals of the issue.

    python benchmarks/categorical_tasks.py                              # all tasks, 3 seeds
    python benchmarks/categorical_tasks.py --quick                      # smoke run, well under a minute
    python benchmarks/categorical_tasks.py --tasks markov brackets &    # two processes in parallel ...
    python benchmarks/categorical_tasks.py --tasks digits &
    python benchmarks/categorical_tasks.py --merge benchmarks/results/categorical-markov-brackets-*.json \\
        benchmarks/results/categorical-digits-*.json                     # ... merged into one table

Not a ``bench_*.py`` script (``run_all.py`` skips it): it trains 30 models. Writes
``categorical-<tasks or all>-<device>-<date>.{json,md}`` (+ ``.png``, a grid of digit samples).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (sibling module, not a package)

from flowfast import categorical as cat  # noqa: E402
from flowfast.categorical.tasks import BinaryDigitsTask, BracketsTask, MarkovChainTask  # noqa: E402
from flowfast.models import SimplexTransformer  # noqa: E402
from flowfast.train import Trainer  # noqa: E402
from flowfast.train.batches import as_target  # noqa: E402
from flowfast.train.ema import EMA  # noqa: E402

FAMILY = "categorical"
TASKS = ("markov", "brackets", "digits")
METHODS = ("vfm", "csd", "ecld", "peer")
FLOWFAST_METHODS = ("vfm", "csd", "ecld")
MAP_STEPS = (1, 2, 4, 8)
EULER_STEPS = (1, 2, 4, 8, 100)
REFERENCE_EULER = 100
PEER_STEPS = (1, 2, 4, 8, 32)
N_TRAIN = 20_000
DATA_SEED = 2024          # the generator of the fixed markov / brackets training sets
EVAL_SEED = 12_345        # + seed: the evaluation noise x0 of a (task, seed)
REFERENCE_SEED = 54_321   # + seed: fresh true samples (the "data" reference row)
METRICS = {
    "markov": ("nll_ratio", "nll_per_token", "unigram_entropy", "unique_fraction"),
    "brackets": ("valid_fraction", "unique_valid_fraction", "unigram_entropy"),
    "digits": ("confidence", "class_entropy", "nn_hamming", "nn_ratio", "copy_fraction"),
}
#: the task's headline metric for the goal checks: (key, "min" = lower is better, "max", or "one" = closest to 1)
PRIMARY = {"markov": ("nll_ratio", "one"), "brackets": ("valid_fraction", "max"), "digits": ("confidence", "max")}
PNG_PANELS = (("vfm", "euler", 100), ("vfm", "euler", 1), ("ecld", "map", 1), ("csd", "map", 1))
PNG_CELLS = 64  # an 8 x 8 grid of digits per panel


# --- tasks and data ---------------------------------------------------------------------------------
def make_task(name: str):
    if name == "markov":
        return MarkovChainTask(vocab=16, length=32)
    if name == "brackets":
        return BracketsTask(length=32, kinds=3)
    if name == "digits":
        return BinaryDigitsTask()
    raise ValueError(name)


def training_set(name: str, task) -> torch.Tensor:
    if name == "digits":
        return task.train.clone()
    return task.sample(N_TRAIN, torch.Generator().manual_seed(DATA_SEED))


def reference_samples(name: str, task, n: int, seed: int) -> tuple[str, torch.Tensor]:
    """Real data to score next to the generators: fresh true samples, or the held-out digits."""
    if name == "digits":
        return "held-out", task.heldout.clone()
    return "true", task.sample(n, torch.Generator().manual_seed(REFERENCE_SEED + seed))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(name: str, task, tokens: torch.Tensor) -> dict:
    """The table's metrics of a token batch (plain floats; NaN -> None)."""
    scores = task.evaluate(tokens)
    return {k: _finite(float(scores[k])) for k in METRICS[name]}


# --- models and training ----------------------------------------------------------------------------
def make_net(task, args, seed: int) -> SimplexTransformer:
    torch.manual_seed(seed)  # the same initial weights for every method of a seed
    return SimplexTransformer(task.vocab, task.length, width=args.width, depth=args.depth, heads=args.heads)


def loss_curve(losses: list[float], points: int = 20) -> list[dict]:
    if not losses:
        return []
    width = max(1, math.ceil(len(losses) / points))
    return [{"step": min(len(losses), i + width), "loss": sum(losses[i:i + width]) / len(losses[i:i + width])}
            for i in range(0, len(losses), width)]


def optimizer_for(module, args):
    return torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def train_model(model, objective, target, args, seed: int):
    """(EMA model to sample, losses, train seconds) of ``args.steps`` Trainer steps with the
    benchmark's optimizer, batch and EMA (shared by every flowfast method of the task scripts)."""
    trainer = Trainer(model, objective=objective, target=target, batch_size=args.batch,
                      optimizer=optimizer_for(model, args), ema_decay=args.ema, progress=False, seed=seed,
                      log_every=10 ** 9)
    start = time.perf_counter()
    losses = trainer.train(args.steps)
    seconds = time.perf_counter() - start
    trained = trainer.ema_model if trainer.ema_model is not None else trainer.model
    return trained.eval(), losses, seconds


def train_flowfast(task, data: torch.Tensor, method: str, args, seed: int):
    """(model to sample, losses, train seconds) for vfm / csd / ecld."""
    fm = cat.CategoricalFlowMap(make_net(task, args, seed), task.vocab)
    return train_model(fm, cat.CategoricalObjective(task.vocab, method), data, args, seed)


def train_peer(task, data: torch.Tensor, args, seed: int):
    """(peer wrapper around the network to sample, losses, train seconds): the same network class,
    initial weights, optimizer, batches (the trainer's epochs of the same data) and EMA."""
    from _flow_matching_peer import PeerDiscreteFM

    net = make_net(task, args, seed)
    peer = PeerDiscreteFM(net, task.vocab, source="uniform")
    optimizer = optimizer_for(net, args)
    ema = EMA(net, args.ema) if args.ema is not None else None
    batches = as_target(data, batch_size=args.batch, seed=seed)
    g = torch.Generator().manual_seed(seed)
    pending = []
    net.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = peer.loss(batches.draw(args.batch, g), g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(net, step)
        pending.append(loss.detach())
    seconds = time.perf_counter() - start
    losses = torch.stack(pending).tolist()
    sample_net = ema.model if ema is not None else net
    return PeerDiscreteFM(sample_net.eval(), task.vocab, source="uniform"), losses, seconds


# --- one (task, seed) -------------------------------------------------------------------------------
def run_task_seed(name: str, task, data: torch.Tensor, seed: int, args, panels: dict):
    """(per-sampler rows, per-training-run records) of every method on one task and seed."""
    V, L = task.vocab, task.length
    x0 = cat.source_noise(args.samples, L, V, torch.Generator().manual_seed(EVAL_SEED + seed))
    rows, runs = [], []
    base = {"task": name, "seed": seed}

    def add(method, sampler, k, nfe, tokens, seconds):
        row = {**base, "method": method, "sampler": sampler, "K": k, "NFE": nfe, "n": int(tokens.shape[0]),
               **evaluate(name, task, tokens),
               "sample_s": None if seconds is None else round(seconds, 3)}
        rows.append(row)
        if name == "digits" and seed == args.seeds[0] and (method, sampler, k) in PNG_PANELS:
            panels[f"{method} {sampler}-{k}"] = tokens[:PNG_CELLS].tolist()
        return row

    ref_name, ref = reference_samples(name, task, args.samples, seed)
    add("data", ref_name, None, None, ref, None)
    add("noise", "argmax x0", 0, 0, x0.argmax(-1), None)

    for method in args.methods:
        if method == "peer" and (name not in args.peer_tasks or args.no_peer):
            continue
        print(f"  {name} seed {seed} {method}: training {args.steps} steps ...", flush=True)
        if method == "peer":
            model, losses, train_s = train_peer(task, data, args, seed)
        else:
            model, losses, train_s = train_flowfast(task, data, method, args, seed)
        tail = losses[-min(len(losses), 50):]
        runs.append({**base, "method": method, "steps": args.steps, "train_s": round(train_s, 2),
                     "steps_per_s": round(args.steps / train_s, 3), "ms_per_step": round(1e3 * train_s / args.steps, 2),
                     "final_loss": sum(tail) / len(tail), "loss_curve": loss_curve(losses),
                     "n_params": sum(p.numel() for p in (model.net if method == "peer" else model).parameters())})
        if method == "peer":
            plan = [("peer", k) for k in PEER_STEPS]
        elif method == "vfm":
            plan = [("euler", k) for k in EULER_STEPS]
        else:
            plan = [("map", k) for k in MAP_STEPS] + [("euler", REFERENCE_EULER)]
        summary = []
        for sampler, k in plan:
            t0 = time.perf_counter()
            if sampler == "peer":
                tokens, nfe = model.sample(args.samples, L, k, torch.Generator().manual_seed(EVAL_SEED + seed),
                                           return_nfe=True)
            else:
                # the flow maps' own 100-step Euler rows are a reference: on the first reference_samples x0
                start = x0[:args.reference_samples] if (method != "vfm" and sampler == "euler") else x0
                out = cat.sample(model, start, k, method=sampler)
                tokens, nfe = out.tokens, out.nfe
            row = add(method, sampler, k, nfe, tokens, time.perf_counter() - t0)
            key, _ = PRIMARY[name]
            summary.append(f"{sampler}-{k} {row[key]:.3f}" if row[key] is not None else f"{sampler}-{k} -")
        print(f"  {name} seed {seed} {method}: {train_s:.0f} s ({args.steps / train_s:.1f} steps/s), final loss "
              f"{runs[-1]['final_loss']:.4f}; {PRIMARY[name][0]}: " + ", ".join(summary), flush=True)
    return rows, runs


# --- summaries --------------------------------------------------------------------------------------
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(mean, std, digits: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _row_order(row) -> tuple:
    order = {"data": 0, "noise": 1, "vfm": 2, "csd": 3, "ecld": 4, "peer": 5}
    return (order.get(row["method"], 9), row["sampler"] == "euler" and row["method"] != "vfm", row["K"] or 0)


def summarise(rows: list[dict]) -> dict:
    """task -> [{method, sampler, K, NFE, seeds, <metric>: (mean, std), sample_s}] in table order."""
    out = {}
    for name in TASKS:
        group_keys = []
        for r in rows:
            if r["task"] == name and (r["method"], r["sampler"], r["K"]) not in group_keys:
                group_keys.append((r["method"], r["sampler"], r["K"]))
        table = []
        for method, sampler, k in group_keys:
            group = [r for r in rows
                     if r["task"] == name and (r["method"], r["sampler"], r["K"]) == (method, sampler, k)]
            entry = {"method": method, "sampler": sampler, "K": k, "NFE": group[0]["NFE"], "n": group[0].get("n"),
                     "seeds": len(group)}
            for key in METRICS[name]:
                entry[key] = _mean_std([r[key] for r in group])
            entry["sample_s"] = _mean_std([r["sample_s"] for r in group])[0]
            table.append(entry)
        if table:
            out[name] = sorted(table, key=_row_order)
    return out


def table_rows(name: str, summary: list[dict]) -> list[dict]:
    """Markdown-ready rows (mean ± std strings) of one task."""
    out = []
    for e in summary:
        row = {"method": e["method"], "sampler": e["sampler"], "K": e["K"], "NFE": e["NFE"], "n": e.get("n"),
               "seeds": e["seeds"]}
        for key in METRICS[name]:
            row[key] = _pm(*e[key])
        row["collapsed"] = "yes" if collapsed(name, e) else ""
        row["sample s"] = None if e["sample_s"] is None else round(e["sample_s"], 2)
        out.append(row)
    return out


def timing_rows(runs: list[dict]) -> list[dict]:
    out = []
    for name in TASKS:
        for method in METHODS:
            group = [r for r in runs if r["task"] == name and r["method"] == method]
            if not group:
                continue
            sps = _mean_std([r["steps_per_s"] for r in group])
            train = _mean_std([r["train_s"] for r in group])
            loss = _mean_std([r["final_loss"] for r in group])
            out.append({"task": name, "method": method, "runs": len(group), "steps": group[0]["steps"],
                        "steps/s": _pm(*sps, 2), "train s": _pm(*train, 0), "ms/step": round(1e3 / sps[0], 1),
                        "final loss": _pm(*loss, 4), "params": group[0]["n_params"]})
    return out


def _lookup(summary: list[dict], method: str, sampler: str, k: int, key: str):
    for e in summary:
        if (e["method"], e["sampler"], e["K"]) == (method, sampler, k):
            return e[key][0]
    return None


def _badness(name: str, value):
    """Lower is better: the headline metric turned into a distance from ideal."""
    key, how = PRIMARY[name]
    if value is None:
        return None
    return abs(value - 1.0) if how == "one" else (value if how == "min" else -value)


def _entry(summary: list[dict], method: str, sampler: str, k):
    for e in summary:
        if (e["method"], e["sampler"], e["K"]) == (method, sampler, k):
            return e
    return None


def collapsed(name: str, entry) -> bool:
    """Mode collapse on the seed means: markov unique_fraction < 0.5; brackets fewer distinct valid
    words than half the valid ones; digits class_entropy < 1 nat (about 3 classes or fewer). A
    collapsed sampler (e.g. one Euler step: every x0 gives the same argmax) can score a deceptively
    good headline number (the one most likely sequence has a low NLL)."""
    def m(key):
        return entry[key][0]

    if name == "markov":
        return m("unique_fraction") is not None and m("unique_fraction") < 0.5
    if name == "brackets":
        valid, unique = m("valid_fraction"), m("unique_valid_fraction")
        return valid is not None and valid >= 0.05 and unique < 0.5 * valid
    return m("class_entropy") is not None and m("class_entropy") < 1.0


def goal_rows(summaries: dict) -> list[dict]:
    """The issue's goals, checked per task on the seed means (criteria in the notes)."""
    out = []
    for name, summary in summaries.items():
        key, _ = PRIMARY[name]
        rows = {label: _entry(summary, *spec) for label, spec in (
            ("euler-100", ("vfm", "euler", 100)), ("euler-1", ("vfm", "euler", 1)), ("ecld", ("ecld", "map", 1)),
            ("csd", ("csd", "map", 1)), ("noise", ("noise", "argmax x0", 0)))}

        def value(label, metric=key):
            e = rows[label]
            return None if e is None else e[metric][0]

        def tag(label):
            return " (collapsed)" if rows[label] is not None and collapsed(name, rows[label]) else ""

        def bad(label):
            """lower = better; a collapsed sampler is worst"""
            if rows[label] is None or value(label) is None:
                return None
            return math.inf if collapsed(name, rows[label]) else _badness(name, value(label))

        # 1. one-step ECLD vs 100-step Euler: exact NLL within 10% (markov), validity within 10 points
        # (brackets), classifier confidence within 0.10 (digits: a proxy, no exact likelihood); not collapsed
        e1, e100 = value("ecld"), value("euler-100")
        ok = rows["ecld"] is not None and not collapsed(name, rows["ecld"])
        if name == "markov":
            a, b = value("ecld", "nll_per_token"), value("euler-100", "nll_per_token")
            met = None if None in (a, b) else ok and abs(a / b - 1) <= 0.10
            crit = "|NLL(ecld map-1) / NLL(vfm euler-100) - 1| <= 0.10 (nats/token), not collapsed"
            val = None if None in (a, b) else f"{a:.3f}{tag('ecld')} vs {b:.3f} ({100 * (a / b - 1):+.1f}%)"
        else:
            met = None if None in (e1, e100) else ok and e1 >= e100 - 0.10
            what = "valid_fraction" if name == "brackets" else "confidence (a proxy)"
            crit = f"{what}: ecld map-1 >= vfm euler-100 - 0.10, not collapsed"
            val = None if None in (e1, e100) else f"{e1:.3f}{tag('ecld')} vs {e100:.3f} ({e1 - e100:+.3f})"
        out.append({"task": name, "goal": "1-step ECLD ~ 100-step Euler", "criterion": crit, "values": val,
                    "met": _yes(met)})
        # 2. ECLD >= CSD at one step, on the headline metric
        be, bc = bad("ecld"), bad("csd")
        met = None if None in (be, bc) else (be <= bc and be < math.inf)
        closer = " closer to 1" if PRIMARY[name][1] == "one" else ""
        out.append({"task": name, "goal": "ECLD >= CSD at one step",
                    "criterion": f"{key}{closer}: ecld map-1 vs csd map-1, not collapsed",
                    "values": None if None in (be, bc) else
                    f"{value('ecld'):.3f}{tag('ecld')} vs {value('csd'):.3f}{tag('csd')}", "met": _yes(met)})
        # 3. one-step flow maps far above one-step Euler: each map closes >= half the gap from the
        # one-step Euler (or, when that is collapsed, from the uniform-noise row) to the 100-step Euler
        base = "noise" if (rows["euler-1"] is not None and collapsed(name, rows["euler-1"])) else "euler-1"
        for method in ("ecld", "csd"):
            b1, b100, bm = _badness(name, value(base)), bad("euler-100"), bad(method)
            if None in (b1, b100, bm):
                met, val = None, None
            else:
                gap = b1 - b100
                closed = (b1 - bm) / gap if gap > 0 and bm < math.inf else -math.inf
                met = gap > 0 and closed >= 0.5
                where = "euler-1" if base == "euler-1" else "noise (euler-1 collapsed)"
                val = (f"{value(method):.3f}{tag(method)} vs {where} {value(base):.3f}, euler-100 "
                       f"{value('euler-100'):.3f}: gap closed {100 * closed:.0f}%"
                       if closed > -math.inf else f"{value(method):.3f}{tag(method)}")
            out.append({"task": name, "goal": f"1-step {method.upper()} far above 1-step Euler",
                        "criterion": f"{key}: {method} map-1 closes >= 50% of the gap from vfm euler-1 (noise row "
                                     "if euler-1 is collapsed) to vfm euler-100, not collapsed",
                        "values": val, "met": _yes(met)})
    return out


def _yes(met) -> str:
    return "n/a" if met is None else ("yes" if met else "no")


# --- output -----------------------------------------------------------------------------------------
def family_name(tasks, args) -> str:
    part = "all" if set(tasks) == set(TASKS) else "-".join(t for t in TASKS if t in tasks)
    return FAMILY + f"-{part}" + (f"-{args.tag}" if args.tag else "") + ("-quick" if args.quick else "")


def write_png(path: Path, panels: dict, summary: list[dict]) -> None:
    plt = _pyplot()
    if plt is None or not panels:
        return
    names = [f"{m} {s}-{k}" for m, s, k in PNG_PANELS if f"{m} {s}-{k}" in panels]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.8), squeeze=False)
    for ax, label in zip(axes[0], names):
        bits = torch.tensor(panels[label], dtype=torch.float32).view(-1, 8, 8)
        rows = math.isqrt(PNG_CELLS)
        canvas = torch.full((9 * rows + 1, 9 * rows + 1), 0.15)
        for i in range(min(bits.shape[0], rows * rows)):
            r, c = divmod(i, rows)
            canvas[1 + 9 * r: 9 + 9 * r, 1 + 9 * c: 9 + 9 * c] = bits[i]
        ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        method, rest = label.split(" ")
        sampler, k = rest.rsplit("-", 1)
        conf = _lookup(summary, method, sampler, int(k), "confidence")
        ratio = _lookup(summary, method, sampler, int(k), "nn_ratio")
        ax.set_title(f"{method} {sampler}-{k} (NFE {k})\nconf {conf:.2f}, NN ratio {ratio:.2f} (3-seed mean)",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("binarized digits, first seed: same x0 in the same cell of every panel", fontsize=10)
    from flowfast.demo._common import save_figure

    save_figure(plt, fig, str(path.parent), path.name, 110)
    print(f"wrote {path}", flush=True)


def _pyplot():
    from flowfast.demo._common import pyplot

    return pyplot()


def notes_for(settings: dict, runs: list[dict], env: dict) -> list[str]:
    ema = settings["ema"]
    return [
        f"network: SimplexTransformer(V, L, width={settings['width']}, depth={settings['depth']}, "
        f"heads={settings['heads']}) for every method (the peer gets one-hot states and s = t = its time); the "
        "same initial weights per seed for every method",
        f"training: {settings['steps']} steps, batch {settings['batch']}, AdamW lr {settings['lr']} (weight decay "
        f"{settings['weight_decay']}), EMA {ema if ema is not None else 'none'} "
        f"({'samples use the EMA weights' if ema is not None else 'samples use the raw weights'}), seeds "
        f"{settings['seeds']}; every method sees the same batches (the trainer's shuffled epochs of the training "
        f"set); markov / brackets: a fixed training set of {N_TRAIN} sequences (generator seed {DATA_SEED}); "
        "digits: BinaryDigitsTask().train (1437 images)",
        "methods: vfm = CategoricalObjective('vfm') (diagonal cross-entropy only: the plain discrete model); "
        "csd / ecld = the flow-map objectives with 75% of each batch on the diagonal s = t; peer = flow_matching "
        f"{settings.get('peer_version') or '?'} discrete FM, mixture path, kappa_t = t, uniform source, "
        "generalized-KL loss (run, not copied: CC BY-NC)",
        f"sampling: {settings['samples']} samples per row (column n); every flowfast row of a (task, seed) starts "
        "from the same N(0, I) draws x0 and reads the tokens out by argmax; map-K = K jumps of the flow map on the "
        "uniform grid (NFE = K); euler-K = K Euler steps of the diagonal model (vfm's, or the flow map's own "
        f"diagonal as a reference, on the first {settings.get('reference_samples')} x0 only, to save time); "
        "peer-K = the peer's Euler solver with K steps from uniform random tokens, whose last step "
        "draws the tokens from the model's posterior (stochastic read-out); 'data' = fresh true samples "
        "(digits: the 360 held-out images); 'noise argmax x0' = uniform random tokens",
        "metrics (exact, flowfast.categorical task modules): markov nll_ratio = NLL per token under the true chain "
        "/ its entropy rate (1 = faithful, > 1 unlikely samples, < 1 mode-seeking: read it with unigram_entropy "
        "and unique_fraction); brackets valid_fraction / unique_valid_fraction; digits classifier confidence, "
        "class_entropy (log 10 = 2.303 balanced), nn_hamming to the training set and nn_ratio (1 = as novel as "
        "real held-out digits, 0 = copies), copy_fraction",
        "goal criteria (on the seed means; see the goals table): (1) markov: exact NLL per token of ecld map-1 "
        "within 10% of vfm euler-100's; brackets: valid_fraction within 10 points; digits has no exact "
        "likelihood or validity, so classifier confidence within 0.10 stands in; (2) the headline metric "
        "(markov |nll_ratio - 1|, brackets valid_fraction, digits confidence) of ecld map-1 at least as good "
        "as csd map-1's; (3) 'far above': a map-1 closes at least half of the gap between vfm euler-1 and "
        "vfm euler-100 on the headline metric (from the uniform-noise row instead when euler-1 is collapsed). "
        "A collapsed sampler (column 'collapsed': markov unique_fraction < 0.5, brackets distinct valid words < "
        "half the valid ones, digits class_entropy < 1 nat) fails every goal: one Euler step gives the same "
        "argmax for every x0, and that one most likely sequence scores a deceptively good NLL",
        "FMLM (Flow Map Language Models, arXiv 2602.16813) reports LM1B generative perplexity 119.3 / 110.2 / "
        "98.8 / 86.3 / 69.2 at 1 / 2 / 4 / 8 / 32 steps: quality that rises steadily with the number of steps "
        "of a flow-map LM, with a usable one-step model. That is the shape to compare the map-K rows with; the "
        "tasks here are small synthetic proxies with exact metrics (likelihood under the true chain, exact "
        "validity), not LM1B, so only the shape (and not the numbers) is comparable",
        f"timing: training wall time of each run on {settings['threads']} torch thread(s) of a shared 2-core "
        f"CPU (load average {env.get('loadavg_1m')} at start; runs of different processes may overlap), "
        "so steps/s compare methods of one process run, roughly",
    ]


def write_all(rows: list[dict], runs: list[dict], panels: dict, settings: dict, env: dict, out_dir: str,
              family: str, merged_from=None) -> dict:
    summaries = summarise(rows)
    goals = goal_rows(summaries)
    timing = timing_rows(runs)
    notes = notes_for(settings, runs, env)
    if merged_from:
        notes.append(f"merged from {len(merged_from)} runs: {', '.join(merged_from)}")
    if hasattr(os, "getloadavg"):
        env = {**env, "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    date = str(env.get("date_utc", ""))[:10]
    stem = f"{family}-{env.get('device_slug', 'unknown')}-{date}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"### {family}: categorical flow maps (VFM / CSD / ECLD) and the flow_matching peer on discrete tasks "
          f"with exact metrics, {settings['steps']} steps — {env.get('device_name')}", "",
          _timing._env_header(env), ""]
    for name, summary in summaries.items():
        md += [f"#### {name} (mean ± std over {len(settings['seeds'])} seed(s))", "",
               _timing.markdown_table(table_rows(name, summary)), ""]
    md += ["#### training time per method", "", _timing.markdown_table(timing), "",
           "#### goals of the issue (this run)", "", _timing.markdown_table(goals), "", "Notes:", ""]
    md += [f"- {n}" for n in notes]
    markdown = "\n".join(md) + "\n"
    flat = [{"task": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()}}
            for name, summary in summaries.items() for e in summary]
    payload = {"family": family, "env": env, "columns": None, "rows": flat, "notes": notes,
               "extra": {"settings": settings, "goals": goals, "timing": timing, "per_seed": rows, "runs": runs,
                         "digit_panels": panels, "merged_from": merged_from}}
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    if panels and "digits" in summaries:
        write_png(json_path.with_suffix(".png"), panels, summaries["digits"])
    return {"json": json_path, "md": md_path}


_SAME = ("steps", "batch", "lr", "weight_decay", "width", "depth", "heads", "samples", "reference_samples", "ema")


def merge(args) -> int:
    rows, runs, panels, settings, env, seen = [], [], {}, None, None, set()
    for path in args.merge:
        payload = json.loads(Path(path).read_text())
        extra = payload["extra"]
        s = extra["settings"]
        if settings is None:
            settings, env = dict(s), payload["env"]
        else:
            diff = [k for k in _SAME if s.get(k) != settings.get(k)]
            if diff:
                raise SystemExit(f"{path}: settings differ from the first file's in {diff}")
            settings["tasks"] = settings["tasks"] + [t for t in s["tasks"] if t not in settings["tasks"]]
            settings["seeds"] = sorted(set(settings["seeds"]) | set(s["seeds"]))
        for run in extra["runs"]:
            key = (run["task"], run["method"], run["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {key} appears in two files")
            seen.add(key)
        have = {(q["task"], q["seed"], q["method"]) for q in rows if q["method"] in ("data", "noise")}
        # the reference rows of a (task, seed) come once, even if its methods ran in two processes
        rows += [r for r in extra["per_seed"] if (r["task"], r["seed"], r["method"]) not in have]
        runs += extra["runs"]
        panels.update(extra.get("digit_panels") or {})
    settings["merged"] = True
    args.quick = bool(settings.get("quick"))
    args.tag = args.tag or settings.get("tag", "")
    family = family_name(settings["tasks"], args)
    write_all(rows, runs, panels, settings, env, args.out, family, [Path(p).name for p in args.merge])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=800,
                        help="training steps per run (default 800: the full default run, 30 models and their "
                             "samples, fits in about 45 minutes as two 1-thread processes on a 2-core machine, "
                             "markov + brackets in one and digits in the other; measured steps/s in "
                             "benchmarks/results/categorical-all-*.md)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--ema", type=float, default=0.99,
                        help="EMA decay of the sampled weights (negative: no EMA, sample the raw weights)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2000, help="samples per sampler row")
    parser.add_argument("--reference-samples", type=int, default=500,
                        help="samples of the csd / ecld 100-step Euler reference rows (the first of the same x0; "
                             "default 500: those rows cost 100 network calls each)")
    parser.add_argument("--peer-tasks", nargs="+", default=["markov"], choices=TASKS,
                        help="tasks the flow_matching peer runs on (default: markov)")
    parser.add_argument("--no-peer", action="store_true", help="skip the flow_matching peer")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--tag", default="", help="inserted into the result file names")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: markov and one other task (brackets unless --tasks names another), 1 seed, "
                             "20 steps of a width-32 depth-1 network, 64 samples")
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR), help="results directory")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="merge the results of earlier runs (e.g. tasks run in parallel) into one set of files")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    if args.quick:
        others = [t for t in TASKS if t in args.tasks and t != "markov"]
        args.tasks = ["markov"] + others[:1]
        args.seeds, args.steps, args.samples, args.reference_samples = args.seeds[:1], 20, 64, 32
        args.width, args.depth, args.heads = 32, 1, 2
    if min(args.steps, args.samples, args.batch, args.reference_samples) < 1:
        parser.error("--steps, --samples, --reference-samples and --batch must be >= 1")
    args.reference_samples = min(args.reference_samples, args.samples)
    args.ema = None if args.ema is not None and args.ema < 0 else args.ema
    if "peer" in args.methods and not args.no_peer:
        from _flow_matching_peer import peer_available, peer_version

        if not peer_available():
            print("flow_matching is not importable: the peer is skipped", file=sys.stderr)
            args.no_peer = True
        args.peer_version = peer_version()
    torch.set_num_threads(args.threads)
    env = _timing.environment("cpu")
    settings = {k: v for k, v in vars(args).items() if k != "merge"}
    print(f"categorical tasks {args.tasks}, methods {args.methods}, seeds {args.seeds}: {args.steps} steps, batch "
          f"{args.batch}, AdamW lr {args.lr}, EMA {args.ema}, width {args.width} depth {args.depth} "
          f"heads {args.heads}, "
          f"{args.samples} samples, {torch.get_num_threads()} thread(s)", flush=True)
    rows, runs, panels = [], [], {}
    for name in args.tasks:
        task = make_task(name)
        data = training_set(name, task)
        if name == "digits":
            task.scorer  # noqa: B018  (trains the classifier once, before the timed runs)
        for seed in args.seeds:
            r, q = run_task_seed(name, task, data, seed, args, panels)
            rows += r
            runs += q
    write_all(rows, runs, panels, settings, env, args.out, family_name(args.tasks, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
