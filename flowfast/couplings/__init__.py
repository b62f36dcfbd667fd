"""Couplings between a source batch x0 (t=0) and a data batch x1 (t=1)."""

from flowfast.couplings.assignment import linear_assignment, linear_sum_assignment, ot_pairing, pairwise_cost
from flowfast.couplings.pairing import pair, pair_indices, pair_trajectory, pair_with_labels
from flowfast.couplings.sinkhorn import SinkhornResult, sinkhorn

__all__ = [
    "SinkhornResult",
    "linear_assignment",
    "linear_sum_assignment",
    "ot_pairing",
    "pair",
    "pair_indices",
    "pair_trajectory",
    "pair_with_labels",
    "pairwise_cost",
    "sinkhorn",
]
