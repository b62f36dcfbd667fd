"""Pure-torch references of the `sinkhorn` family (same contracts as :mod:`flowfast.ops.sinkhorn`).

Dense float64 throughout (the n x m cost is materialized), the same eps schedule and stopping
rule as the kernels, and the vectorized Philox of :mod:`flowfast.reference._philox`, so sampling
draws the same Gumbel noise as the CPU and CUDA kernels for the same (seed, offset).
"""

from __future__ import annotations

import torch

from flowfast.reference._philox import gumbel, philox4x32


def dense_cost(cost, x, y) -> torch.Tensor:
    """(B, n, m) float64 cost; ||x_i - y_j||^2 computed by differences (no cancellation)."""
    if cost is not None:
        return cost.to(torch.float64)
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    return ((x64[:, :, None, :] - y64[:, None, :, :]) ** 2).sum(-1)


def eps_at(k: int, eps_start: float, decay: float, eps: float) -> float:
    if eps_start <= eps or decay >= 1.0:
        return eps
    return max(eps, eps_start * decay**k)


def solve(cost, x, y, log_a, log_b, f_init, g_init, eps, eps_start, eps_decay, reg_m, max_iter, check_every, tol):
    """Returns (f, g, n_iter, marginal_error) like ``flowfast::sinkhorn_solve``."""
    C = dense_cost(cost, x, y)
    la, lb = log_a.to(torch.float64), log_b.to(torch.float64)
    B = C.shape[0]
    fs, gs, iters, errs = [], [], [], []
    balanced = not reg_m > 0
    for b in range(B):
        f, g = f_init[b].to(torch.float64).clone(), g_init[b].to(torch.float64).clone()
        Cb = C[b]
        it = 0
        while it < max_iter:
            e = eps_at(it, eps_start, eps_decay, eps)
            lam = reg_m / (reg_m + e) if not balanced else 1.0
            check = e == eps and (it + 1) % check_every == 0
            lse_cols = torch.logsumexp((f[:, None] - Cb) / e + la[b][:, None], dim=0)
            err_before = (torch.exp(g / e + lb[b] + lse_cols) - lb[b].exp()).abs().sum().item()
            g_new = -e * lam * lse_cols
            change = (g_new - g).abs().max().item()
            g = g_new
            f_new = -e * lam * torch.logsumexp((g[None, :] - Cb) / e + lb[b][None, :], dim=1)
            change = max(change, (f_new - f).abs().max().item())
            f = f_new
            it += 1
            if check and ((err_before <= tol) if balanced else (change / e <= tol)):
                break
        log_p = (f[:, None] + g[None, :] - Cb) / eps + la[b][:, None] + lb[b][None, :]
        P = log_p.exp()
        err = (P.sum(0) - lb[b].exp()).abs().sum()
        if not balanced:
            err = err + (P.sum(1) - la[b].exp()).abs().sum()
        fs.append(f)
        gs.append(g)
        iters.append(it)
        errs.append(err)
    dtype = f_init.dtype
    return (torch.stack(fs).to(dtype), torch.stack(gs).to(dtype),
            torch.tensor(iters, dtype=torch.int64, device=f_init.device), torch.stack(errs).to(dtype))


def plan(cost, x, y, log_a, log_b, f, g, eps) -> torch.Tensor:
    C = dense_cost(cost, x, y)
    log_p = ((f.double()[:, :, None] + g.double()[:, None, :] - C) / eps
             + log_a.double()[:, :, None] + log_b.double()[:, None, :])
    return log_p.exp()


def stats(cost, x, y, log_a, log_b, f, g, eps):
    P = plan(cost, x, y, log_a, log_b, f, g, eps)
    C = dense_cost(cost, x, y)
    return P.sum(2), P.sum(1), (P * C).sum((1, 2))


def value(cost, x, y, log_a, log_b, f, g, eps, reg_m):
    """Differentiable regularized OT value with the potentials held fixed.

    Balanced: the dual objective sum_i f_i a_i + sum_j g_j b_j - eps sum_ij P_ij + eps (sum a)(sum b),
    whose gradient in C is exactly the plan (envelope theorem). Unbalanced: the primal
    <P, C> + eps KL(P | ab) + reg_m (KL(P1 | a) + KL(P^T 1 | b)), whose gradient in C is the plan at
    the optimum (there f_i = -reg_m log(r_i / a_i) cancels the extra terms).
    """
    C = dense_cost(cost, x, y)
    la, lb = log_a.double(), log_b.double()
    f64, g64 = f.double(), g.double()
    log_p = (f64[:, :, None] + g64[:, None, :] - C) / eps + la[:, :, None] + lb[:, None, :]
    P = log_p.exp()
    a, b_ = la.exp(), lb.exp()
    if not reg_m > 0:
        return (f64 * a).sum(1) + (g64 * b_).sum(1) - eps * P.sum((1, 2)) + eps * a.sum(1) * b_.sum(1)
    ab = (la[:, :, None] + lb[:, None, :]).exp()
    val = (P * C).sum((1, 2)) + eps * (P * (log_p - la[:, :, None] - lb[:, None, :]) - P + ab).sum((1, 2))
    r, c = P.sum(2), P.sum(1)
    return val + reg_m * ((torch.xlogy(r, r / a) - r + a).sum(1) + (torch.xlogy(c, c / b_) - c + b_).sum(1))


def sample(cost, x, y, log_a, log_b, g, eps, seed, offset) -> torch.Tensor:
    C = dense_cost(cost, x, y)
    B, n, m = C.shape
    index = torch.arange(B * n * m, dtype=torch.int64, device=C.device).reshape(B, n, m)
    scores = (g.double()[:, None, :] - C) / eps + log_b.double()[:, None, :] + gumbel(seed, offset, index)
    return scores.argmax(-1)


__all__ = ["dense_cost", "solve", "plan", "stats", "value", "sample", "gumbel", "philox4x32",
           "eps_at"]
