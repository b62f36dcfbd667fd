"""Pure-torch references of the `sinkhorn` family (same contracts as :mod:`flowfast.ops.sinkhorn`).

Dense float64 throughout (the n x m cost is materialized), the same eps schedule and stopping
rule as the kernels, and a vectorized Philox4x32-10 so that sampling draws the same Gumbel noise
as the CPU and CUDA kernels for the same (seed, offset).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


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


# --- Philox4x32-10, vectorized over int64 tensors holding uint32 values ---------------------------

def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a * b < 2^64 may overflow int64; split b into 16-bit halves to stay exact.
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_part = a * b_lo                      # < 2^48
    hi_part = a * b_hi                      # < 2^48
    low = (lo_part + ((hi_part & 0xFFFF) << 16)) & _MASK32
    carry = (lo_part + ((hi_part & 0xFFFF) << 16)) >> 32
    high = ((hi_part >> 16) + carry) & _MASK32
    return high, low


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of int64 tensors holding uint32 counters; returns four such tensors."""
    x0, x1, x2, x3 = c0, c1, c2, c3
    for _ in range(10):
        hi0, lo0 = _mulhilo(0xD2511F53, x0)
        hi1, lo1 = _mulhilo(0xCD9E8D57, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return x0, x1, x2, x3


def gumbel(seed: int, offset: int, index: torch.Tensor) -> torch.Tensor:
    """Same numbers as ff::gumbel(seed, offset, index) in csrc/include/flowfast/philox.h."""
    index = index.to(torch.int64)
    c0, c1 = index & _MASK32, (index >> 32) & _MASK32
    c2 = torch.full_like(index, offset & _MASK32)
    c3 = torch.full_like(index, (offset >> 32) & _MASK32)
    r0, r1, _, _ = philox4x32(c0, c1, c2, c3, seed & _MASK32, (seed >> 32) & _MASK32)
    bits = ((r0 << 21) ^ (r1 >> 11)) & ((1 << 53) - 1)
    u = (bits.to(torch.float64) + 0.5) * (1.0 / 9007199254740992.0)
    return -torch.log(-torch.log(u))


def sample(cost, x, y, log_a, log_b, g, eps, seed, offset) -> torch.Tensor:
    C = dense_cost(cost, x, y)
    B, n, m = C.shape
    index = torch.arange(B * n * m, dtype=torch.int64, device=C.device).reshape(B, n, m)
    scores = (g.double()[:, None, :] - C) / eps + log_b.double()[:, None, :] + gumbel(seed, offset, index)
    return scores.argmax(-1)


def sq_diameter(x: torch.Tensor, y: torch.Tensor) -> float:
    """An upper bound of max_ij ||x_i - y_j||^2 in O((n + m) d): the smaller of the squared
    diagonal of both clouds' bounding box and (r_x + r_y)^2, with radii around the joint mean
    (much tighter in high dimension, where the box diagonal overestimates)."""
    xs, ys = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    both = torch.cat([xs, ys])
    span = both.max(0).values - both.min(0).values
    center = both.mean(0, keepdim=True)
    radii = float((xs - center).norm(dim=1).max()) + float((ys - center).norm(dim=1).max())
    return min(float((span**2).sum()), radii * radii)


__all__ = ["dense_cost", "solve", "plan", "stats", "value", "sample", "gumbel", "philox4x32", "sq_diameter",
           "eps_at"]
