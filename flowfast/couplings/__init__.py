"""Couplings between a source batch x0 (t=0) and a data batch x1 (t=1): the solvers (assignment,
Sinkhorn), the pairing functions, and the coupling objects every path takes as ``coupling=``."""

from flowfast.couplings.assignment import linear_assignment, ot_pairing
from flowfast.couplings.sum_assignment import linear_sum_assignment
from flowfast.couplings.cost import pairwise_cost
from flowfast.couplings.coupling import (Coupling, ExactOTCoupling, IndependentCoupling, IndexCoupling,
                                         LabelAwareCoupling, SinkhornCoupling, UnbalancedCoupling, as_coupling)
from flowfast.couplings.pairing import pair, pair_indices, pair_trajectory, pair_with_labels
from flowfast.couplings.sinkhorn import SinkhornResult, sinkhorn

__all__ = [
    "Coupling",
    "ExactOTCoupling",
    "IndependentCoupling",
    "IndexCoupling",
    "LabelAwareCoupling",
    "SinkhornCoupling",
    "UnbalancedCoupling",
    "as_coupling",
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
