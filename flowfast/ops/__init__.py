"""torch.library custom ops over flowfast._C, one module per kernel family (mirrors csrc/), each the
family's one validation point; :mod:`flowfast.ops._switch` is the one backend switch."""

from flowfast.ops import assignment, interpolant, simplex, sinkhorn
from flowfast.ops._switch import BACKENDS

__all__ = ["BACKENDS", "assignment", "interpolant", "simplex", "sinkhorn"]
