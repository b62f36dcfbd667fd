"""Pure-torch exact linear assignment (shortest augmenting paths, float64 potentials).

Same contract as :func:`flowfast.ops.assignment.linear_assignment`: cost (B, n, m), n <= m
-> (B, n) int64. One Python-level Dijkstra step per settled column, so keep n small (tests).
"""

from __future__ import annotations

import torch


def _solve_one(cost: torch.Tensor) -> torch.Tensor:
    n, m = cost.shape
    inf = float("inf")
    u = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros(m, dtype=torch.float64)
    col4row = [-1] * n
    row4col = torch.full((m,), -1, dtype=torch.int64)
    for start in range(n):
        shortest = torch.full((m,), inf, dtype=torch.float64)
        path = torch.full((m,), -1, dtype=torch.int64)
        settled = torch.zeros(m, dtype=torch.bool)
        visited_rows = []
        row, min_val = start, 0.0
        while True:
            visited_rows.append(row)
            reduced = min_val + cost[row] - u[row] - v
            better = (~settled) & (reduced < shortest)
            shortest = torch.where(better, reduced, shortest)
            path = torch.where(better, torch.full_like(path, row), path)
            candidates = torch.where(settled, torch.full_like(shortest, inf), shortest)
            min_val = float(candidates.min())
            ties = candidates == min_val
            free_ties = ties & (row4col < 0)
            col = int(torch.argmax((free_ties if bool(free_ties.any()) else ties).to(torch.int8)))
            settled[col] = True
            if int(row4col[col]) < 0:
                sink = col
                break
            row = int(row4col[col])
        u[start] += min_val
        for r in visited_rows[1:]:
            u[r] += min_val - shortest[col4row[r]]
        v[settled] -= min_val - shortest[settled]
        col = sink
        while True:
            r = int(path[col])
            row4col[col] = r
            col4row[r], col = col, col4row[r]
            if r == start:
                break
    return torch.tensor(col4row, dtype=torch.int64)


def linear_assignment(cost: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    """cost (B, n, m) with n <= m -> (B, n) int64 columns, on cost's device."""
    work = cost.detach().to("cpu", torch.float64)
    if maximize:
        work = -work
    out = torch.stack([_solve_one(work[b]) for b in range(work.shape[0])])
    return out.to(cost.device)
