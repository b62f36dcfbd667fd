"""Pure-torch references: the tests' oracle and the ``backend="torch"`` path. Slow but obvious."""

from flowfast.reference import assignment, interpolant, sinkhorn

__all__ = ["assignment", "interpolant", "sinkhorn"]
