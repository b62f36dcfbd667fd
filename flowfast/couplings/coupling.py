"""Couplings as objects: what pairs a source batch x0 (t=0) with a data batch x1 (t=1).

Every path of :mod:`flowfast.paths` takes ``coupling=`` (any object of the :class:`Coupling`
protocol), so a new coupling (e.g. a normalizing-flow teacher) works with every path, the trainer
and the CLI without a subclass per path x coupling.

    coupling(x0, x1, generator=None) -> (x0_paired, x1_paired)
    coupling.state_dict() / load_state_dict(state)   # stateful couplings (a teacher, a cache)

The implementations here are stateless (``state_dict() == {}``) and defined by index pairs
(:meth:`IndexCoupling.indices`), which also carry labels along (:meth:`IndexCoupling.with_labels`).
"""

from __future__ import annotations

import abc
from typing import Optional, Protocol, runtime_checkable

import torch

from flowfast.couplings.pairing import METHODS, pair_indices, pair_with_labels

__all__ = [
    "Coupling",
    "ExactOTCoupling",
    "IndependentCoupling",
    "IndexCoupling",
    "LabelAwareCoupling",
    "SinkhornCoupling",
    "UnbalancedCoupling",
    "as_coupling",
]


@runtime_checkable
class Coupling(Protocol):
    def __call__(self, x0: torch.Tensor, x1: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class IndexCoupling(abc.ABC):
    """A stateless coupling given by index pairs ``(i, j)``: pairs ``(x0[i], x1[j])``. Subclasses
    define :meth:`indices`."""

    @abc.abstractmethod
    def indices(self, x0: torch.Tensor, x1: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)``, each ``(k,)`` int64 on the batches' device."""

    def __call__(self, x0, x1, generator=None):
        rows, cols = self.indices(x0, x1, generator)
        return x0[rows], x1[cols]

    def with_labels(self, x0, x1, y0, y1, generator=None):
        """``(x0[i], x1[j], y0[i], y1[j])``: labels follow their samples."""
        rows, cols = self.indices(x0, x1, generator)
        return x0[rows], x1[cols], y0[rows], y1[cols]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; got state with keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class IndependentCoupling(IndexCoupling):
    """The batch as drawn (I-CFM)."""

    def indices(self, x0, x1, generator=None):
        return torch.arange(x0.shape[0], device=x0.device), torch.arange(x1.shape[0], device=x1.device)

    def __call__(self, x0, x1, generator=None):
        return x0, x1

    def with_labels(self, x0, x1, y0, y1, generator=None):
        return x0, x1, y0, y1


class _PlanCoupling(IndexCoupling):
    """A coupling by :func:`flowfast.couplings.pair_indices` with fixed arguments."""

    method = "exact"

    def __init__(self, replace: bool = False, **options) -> None:
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
        self.replace = replace
        self.options = options

    def indices(self, x0, x1, generator=None):
        return pair_indices(x0, x1, self.method, replace=self.replace, generator=generator, **self.options)


class ExactOTCoupling(_PlanCoupling):
    """Exact minibatch OT on squared distances (OT-CFM): the optimal permutation, or with
    ``replace=True`` torchcfm's pairs drawn with replacement from the exact plan."""

    def __init__(self, replace: bool = False) -> None:
        super().__init__(replace)


class SinkhornCoupling(_PlanCoupling):
    """Entropic OT: a permutation by Gumbel perturb-and-MAP of the plan (``replace=True``: pairs
    drawn from it). ``reg`` is relative to the largest squared distance; ``eps`` (absolute)
    overrides it (SB-CFM uses eps = 2 sigma^2). See :func:`flowfast.couplings.pair`."""

    method = "sinkhorn"

    def __init__(self, reg: float = 0.05, eps: Optional[float] = None, replace: bool = False,
                 max_iter: int = 1000, tol: float = 1e-6) -> None:
        super().__init__(replace, reg=reg, eps=eps, max_iter=max_iter, tol=tol)


class UnbalancedCoupling(_PlanCoupling):
    """Entropic OT with KL-relaxed marginals of weight ``reg_m`` (absolute, as POT's)."""

    method = "unbalanced"

    def __init__(self, reg: float = 0.05, reg_m: float = 1.0, eps: Optional[float] = None, replace: bool = False,
                 max_iter: int = 1000, tol: float = 1e-6) -> None:
        super().__init__(replace, reg=reg, reg_m=reg_m, eps=eps, max_iter=max_iter, tol=tol)


class LabelAwareCoupling(IndexCoupling):
    """Couples only samples with equal labels (conditional OT for class-conditional models), by
    :func:`flowfast.couplings.pair_with_labels` with ``within_labels=True``. Needs the labels:
    call :meth:`with_labels`; calling it without labels is an error, not a silent unconditional
    coupling."""

    def __init__(self, method: str = "exact", reg: float = 0.05, reg_m: float = 1.0, replace: bool = False) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.reg, self.reg_m, self.replace = method, reg, reg_m, replace

    def __call__(self, x0, x1, generator=None):
        raise TypeError("LabelAwareCoupling needs labels: call coupling.with_labels(x0, x1, y0, y1, generator)")

    def indices(self, x0, x1, generator=None):
        raise TypeError("LabelAwareCoupling needs labels: call coupling.with_labels(x0, x1, y0, y1, generator)")

    def with_labels(self, x0, x1, y0, y1, generator=None):
        return pair_with_labels(x0, x1, y0, y1, self.method, self.reg, self.reg_m, self.replace,
                                within_labels=True, generator=generator)


_BY_NAME = {"independent": IndependentCoupling, "exact": ExactOTCoupling, "sinkhorn": SinkhornCoupling,
            "unbalanced": UnbalancedCoupling}


def as_coupling(coupling) -> Coupling:
    """None -> :class:`IndependentCoupling`; a name ("independent", "exact", "sinkhorn",
    "unbalanced") -> that coupling with default arguments; a :class:`Coupling` passes through."""
    if coupling is None:
        return IndependentCoupling()
    if isinstance(coupling, str):
        if coupling not in _BY_NAME:
            raise ValueError(f"coupling must be one of {tuple(_BY_NAME)} or a Coupling object, got {coupling!r}")
        return _BY_NAME[coupling]()
    if not callable(coupling):
        raise TypeError(f"coupling must be a Coupling (callable as coupling(x0, x1, generator)), got "
                        f"{type(coupling).__name__}")
    return coupling
