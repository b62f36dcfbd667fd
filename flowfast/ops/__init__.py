"""torch.library custom ops over flowfast._C, one module per kernel family (mirrors csrc/)."""

from flowfast.ops import assignment, interpolant, sinkhorn

__all__ = ["assignment", "interpolant", "sinkhorn"]
