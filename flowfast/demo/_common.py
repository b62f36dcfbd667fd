"""Helpers the demos share: an optional matplotlib and small statistics."""

from __future__ import annotations

import contextlib

import torch


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written")
        return None
    return plt


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def std(values) -> float:
    values = list(values)
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


@contextlib.contextmanager
def torch_threads(threads):
    """Run with ``threads`` torch intra-op threads (None: torch's setting), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def w2_over_sets(trainer, sets, method: str, steps) -> tuple[list, list]:
    """``(w2s, nfes)``: exact W2 and NFE of ``trainer.sample`` from each eval set's x0 against its x1."""
    from flowfast import metrics

    w2s, nfes = [], []
    for x0, x1 in sets:
        res = trainer.sample(0, steps=steps or 1, method=method, x0=x0)
        w2s.append(metrics.wasserstein2(res.x.cpu(), x1))
        nfes.append(res.nfe)
    return w2s, nfes


def save_figure(plt, fig, out_dir: str, name: str, dpi: int) -> str:
    """Lay out, write ``out_dir/name`` and close the figure; returns the path."""
    import os

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
