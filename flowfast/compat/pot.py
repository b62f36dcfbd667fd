"""POT's entropic-OT entry points on flowfast's log-domain Sinkhorn: ``sinkhorn``, ``sinkhorn2``,
``sinkhorn_unbalanced`` and ``sinkhorn_unbalanced2`` with POT's signatures and defaults.

Switch ``ot.sinkhorn(a, b, M, reg, ...)`` to ``flowfast.compat.pot.sinkhorn(a, b, M, reg, ...)``:
numpy in, numpy out (torch in, torch out, on its device); ``a`` / ``b`` empty or None mean uniform;
``log=True`` adds POT's log keys (balanced: ``niter``, ``err``, ``u``, ``v``, ``log_u``, ``log_v``
with log u = log a + f / eps; unbalanced: ``err``, ``logu``, ``logv``, ``cost`` with POT's KL
solver's log u = f / eps); ``warmstart=(log u, log v)`` continues from POT-convention potentials.

Every ``method`` POT offers converges to the same regularized plan and is solved by the same
log-domain iterations (never overflowing, unlike POT's plain ``"sinkhorn"`` at small ``reg``);
``"sinkhorn_epsilon_scaling"`` adds eps-scaling. What differs from POT, on purpose:

- ``stopThr`` bounds the L1 column-marginal error (POT: its L2 norm, which is never larger), tested
  every 10 iterations as POT does; ``log["err"]`` holds the final error only (POT: one per test).
- Balanced problems need ``a.sum() == b.sum()`` (POT iterates on without converging), and every
  weight must be > 0 (POT accepts zeros: drop those points instead).
- ``verbose`` prints one summary line (the kernels do not stop to print each test).
- No equivalent: POT's ``"greenkhorn"`` is solved by full Sinkhorn sweeps (same fixed point),
  ``reg_type`` other than ``"kl"``, unbalanced ``c=``, ``returnCost="total"``, a pair ``reg_m``
  of two different weights, or several histograms in ``b`` outside ``sinkhorn2``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from flowfast.couplings.sinkhorn import sinkhorn as _solve

__all__ = ["sinkhorn", "sinkhorn2", "sinkhorn_unbalanced", "sinkhorn_unbalanced2", "METHODS"]

METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling", "greenkhorn")
_CHECK_EVERY = 10  # POT tests convergence every 10 iterations


def _as_cost(M: Any) -> tuple[torch.Tensor, bool]:
    """(M as a float tensor, was_torch); numpy float32 stays float32, other numbers become float64."""
    if isinstance(M, torch.Tensor):
        return M, True
    array = np.asarray(M)
    if array.dtype != np.float32:
        array = array.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(array)), False


def _as_weights(name: str, w: Any, size: int, ref: torch.Tensor):
    """POT's histograms: None / empty = uniform (returned as None), else a (size,) or (size, k)
    tensor in the cost's dtype and device."""
    if w is None or (not isinstance(w, torch.Tensor) and len(w) == 0) or (isinstance(w, torch.Tensor) and w.numel() == 0):
        return None
    t = w if isinstance(w, torch.Tensor) else torch.from_numpy(np.asarray(w, dtype=np.float64))
    t = t.to(device=ref.device, dtype=ref.dtype)
    if t.shape[0] != size or t.dim() > 2:
        raise ValueError(f"{name} must have shape ({size},) (or ({size}, k) for b in sinkhorn2) to match M "
                         f"{tuple(ref.shape)}, got {tuple(t.shape)}")
    return t


def _options(method: str, numItermax, stopThr, kwargs: dict) -> tuple[bool, int, float]:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: flowfast.compat.pot takes one of {METHODS}")
    if kwargs:
        raise TypeError(f"flowfast.compat.pot has no equivalent of the option(s) {sorted(kwargs)}")
    return method == "sinkhorn_epsilon_scaling", numItermax, stopThr


def _warm_start(warmstart, log_a: torch.Tensor, log_b: torch.Tensor, eps: float, unbalanced: bool):
    """POT's (log u, log v) -> flowfast's (f, g): balanced (eps (log u - log a), eps (log v - log b));
    unbalanced (POT's KL solver keeps a, b out of u, v) (eps log u, eps log v). ``log_a`` / ``log_b``
    are (n,) / (m,), or (k, m) for several histograms, where POT's log v is (m, k)."""
    if warmstart is None:
        return None
    if not isinstance(warmstart, (tuple, list)) or len(warmstart) != 2:
        raise TypeError("warmstart must be a (log_u, log_v) pair, e.g. (log['log_u'], log['log_v'])")
    out = []
    for name, w, ref in (("log_u", warmstart[0], log_a), ("log_v", warmstart[1], log_b)):
        t = w if isinstance(w, torch.Tensor) else torch.from_numpy(np.asarray(w, dtype=np.float64))
        t = t.to(ref)
        if t.dim() == 2 and ref.dim() == 2:
            t = t.T
        if tuple(t.shape) != tuple(ref.shape):
            expected = tuple(ref.shape) if ref.dim() == 1 else tuple(ref.T.shape)
            raise ValueError(f"warmstart's {name} must have shape {expected}, got {tuple(w.shape)}")
        out.append(eps * t if unbalanced else eps * (t - ref))
    return tuple(out)


def _run(a, b, M, reg, reg_m, method, numItermax, stopThr, verbose, warn, warmstart, kwargs):
    """The shared solve: (result, cost tensor, was_torch, batched over b's columns)."""
    scaling, max_iter, tol = _options(method, numItermax, stopThr, kwargs)
    cost, was_torch = _as_cost(M)
    if cost.dim() != 2:
        raise ValueError(f"M must be a (n, m) cost matrix, got shape {tuple(cost.shape)}")
    n, m = cost.shape
    wa = _as_weights("a", a, n, cost)
    wb = _as_weights("b", b, m, cost)
    batched = wb is not None and wb.dim() == 2
    if wa is not None and wa.dim() != 1:
        raise ValueError(f"a must have shape ({n},), got {tuple(wa.shape)}")
    if batched:  # one problem per histogram of b, on the same cost (a stride-0 batch: no copies)
        k = wb.shape[1]
        cost, wb = cost.expand(k, n, m), wb.T
    log_a = (wa if wa is not None else torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)).log()
    log_b = (wb if wb is not None else torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device)).log()
    if batched:
        log_a = log_a.expand(wb.shape[0], n)
    init = _warm_start(warmstart, log_a, log_b, float(reg), reg_m is not None)
    result = _solve(cost, a=wa, b=wb, eps=reg, reg_m=reg_m, max_iter=max_iter, tol=tol, eps_scaling=scaling,
                    check_every=_CHECK_EVERY, init=init)
    error = float(result.marginal_error.max())
    if verbose:
        print(f"flowfast sinkhorn: {int(result.n_iter.max())} iterations, marginal error {error:.3e}")
    if warn and reg_m is None and not error <= tol:
        warnings.warn(f"Sinkhorn did not converge in numItermax={numItermax} iterations (L1 marginal error "
                      f"{error:.3g} > stopThr={stopThr:g}); raise numItermax or reg", UserWarning, stacklevel=3)
    return result, log_a, log_b, was_torch


def _out(t: torch.Tensor, was_torch: bool):
    """Torch in, torch out; else numpy, a 0-d result as a numpy scalar (as POT returns a loss)."""
    if was_torch:
        return t
    array = t.detach().cpu().numpy()
    return array[()] if array.ndim == 0 else array


def _log(result, log_a, log_b, eps: float, was_torch: bool) -> dict:
    """POT's balanced log; several histograms come back as POT shapes them, (n, k) and (m, k)."""
    log_u = log_a + result.f.to(log_a.dtype) / eps
    log_v = log_b + result.g.to(log_b.dtype) / eps
    if log_v.dim() == 2:
        log_u, log_v = log_u.T, log_v.T
    niter = result.n_iter.max() if result.n_iter.dim() else result.n_iter
    return {"niter": int(niter), "err": [float(result.marginal_error.max())],
            "log_u": _out(log_u, was_torch), "log_v": _out(log_v, was_torch),
            "u": _out(log_u.exp(), was_torch), "v": _out(log_v.exp(), was_torch)}


def _unbalanced_log(result, eps: float, was_torch: bool) -> dict:
    """POT's unbalanced log: its KL solver's log u = f / eps, log v = g / eps."""
    logu, logv = result.f.double() / eps, result.g.double() / eps
    return {"err": [float(result.marginal_error.max())], "logu": _out(logu, was_torch),
            "logv": _out(logv, was_torch), "cost": _out(result.cost, was_torch)}


def sinkhorn(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=True,
             warmstart=None, **kwargs):
    """``ot.sinkhorn``: the entropic plan ``(n, m)`` (and POT's log dict when ``log=True``)."""
    result, log_a, log_b, was_torch = _run(a, b, M, reg, None, method, numItermax, stopThr, verbose, warn,
                                           warmstart, kwargs)
    if result.f.dim() != 1:
        raise ValueError("several histograms in b: use sinkhorn2, which returns one loss per histogram")
    plan = _out(result.plan(), was_torch)
    return (plan, _log(result, log_a, log_b, float(reg), was_torch)) if log else plan


def sinkhorn2(a, b, M, reg, method="sinkhorn", numItermax=1000, stopThr=1e-9, verbose=False, log=False, warn=False,
              warmstart=None, **kwargs):
    """``ot.sinkhorn2``: the transport cost <P, M> of the entropic plan (one per column of a 2-D ``b``)."""
    result, log_a, log_b, was_torch = _run(a, b, M, reg, None, method, numItermax, stopThr, verbose, warn,
                                           warmstart, kwargs)
    loss = _out(result.cost, was_torch)
    return (loss, _log(result, log_a, log_b, float(reg), was_torch)) if log else loss


def _unbalanced_weight(reg_m) -> float:
    if isinstance(reg_m, (tuple, list)):
        if len(reg_m) != 2 or reg_m[0] != reg_m[1]:
            raise ValueError(f"reg_m={reg_m!r}: flowfast relaxes both marginals with one weight")
        reg_m = reg_m[0]
    if isinstance(reg_m, float) and math.isinf(reg_m):
        raise ValueError("reg_m = inf is balanced OT: use sinkhorn")
    return reg_m


def sinkhorn_unbalanced(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                        numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """``ot.unbalanced.sinkhorn_unbalanced`` with the KL relaxation: the plan ``(n, m)``."""
    if reg_type != "kl" or c is not None:
        raise ValueError("flowfast.compat.pot.sinkhorn_unbalanced supports reg_type='kl' with c=None only")
    result, log_a, log_b, was_torch = _run(a, b, M, reg, _unbalanced_weight(reg_m), method, numItermax, stopThr,
                                           verbose, False, warmstart, kwargs)
    plan = _out(result.plan(), was_torch)
    return (plan, _unbalanced_log(result, float(reg), was_torch)) if log else plan


def sinkhorn_unbalanced2(a, b, M, reg, reg_m, method="sinkhorn", reg_type="kl", c=None, warmstart=None,
                         returnCost="linear", numItermax=1000, stopThr=1e-6, verbose=False, log=False, **kwargs):
    """``ot.unbalanced.sinkhorn_unbalanced2`` (``returnCost="linear"``): <P, M>."""
    if returnCost != "linear":
        raise ValueError("flowfast.compat.pot.sinkhorn_unbalanced2 supports returnCost='linear' only")
    if reg_type != "kl" or c is not None:
        raise ValueError("flowfast.compat.pot.sinkhorn_unbalanced2 supports reg_type='kl' with c=None only")
    result, log_a, log_b, was_torch = _run(a, b, M, reg, _unbalanced_weight(reg_m), method, numItermax, stopThr,
                                           verbose, False, warmstart, kwargs)
    loss = _out(result.cost, was_torch)
    return (loss, _unbalanced_log(result, float(reg), was_torch)) if log else loss
