"""What the trainer needs from a training objective, and the CFM paths it knows by name.

The protocol (documented for users in the :class:`~flowfast.train.Trainer` docstring and in
docs/architecture.md, "Trainer objectives"):

    loss(model, x0, x1, generator=None) -> scalar tensor     required; couples through self.couple
    couple(x0, x1, generator) -> (x0, x1)                    required
    sample(model, x0, *, steps, method, atol, rtol, return_path) -> ODEResult   optional
    uses_function_transforms = True                          optional (torch.func on the model)
    state_dict() / load_state_dict(state)                    optional, saved as "objective_state"
    after_step(model, step)                                  optional, after every optimizer step
    coupling.state_dict() / load_state_dict(state)           optional, saved as "coupling_state"
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from flowfast import paths
from flowfast.samplers import METHODS, ODEResult, odeint

__all__ = ["PATHS", "make_path", "as_objective", "PreCoupled", "integrate", "objective_states",
           "load_objective_states", "resolve_sampler"]

#: CLI names of the CFM paths.
PATHS = {
    "icfm": paths.IndependentCFM,
    "otcfm": paths.OptimalTransportCFM,
    "sbcfm": paths.SchrodingerBridgeCFM,
    "fm": paths.TargetCFM,
    "vp": paths.VariancePreservingCFM,
}


def make_path(name: str, sigma: float = 0.1):
    """A CFM path by name: ``icfm``, ``otcfm``, ``sbcfm``, ``fm`` (Lipman, sigma = sigma_min) or ``vp``.

    ``sigma`` defaults to 0.1, the 2D-toy protocol's value."""
    try:
        cls = PATHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown path {name!r}; choose one of {sorted(PATHS)}") from None
    return cls(sigma=sigma)


def as_objective(objective):
    """A path name becomes its path object; anything else must have ``loss`` and ``couple``."""
    if isinstance(objective, str):
        objective = make_path(objective)
    if not callable(getattr(objective, "loss", None)) or not callable(getattr(objective, "couple", None)):
        raise TypeError("path (the objective) must be a flowfast.paths object, a path name, or an object with "
                        f"loss(model, x0, x1, generator) and couple(x0, x1, generator); got {type(objective).__name__}")
    return objective


def _identity_couple(x0, x1, generator=None):
    return x0, x1


class PreCoupled:
    """The objective's loss on a batch that is coupled already (the global coupling's slice): for the
    call, the objective's ``couple`` is the identity, so whatever its loss reads of the objective's
    other attributes (a teacher refreshed by ``after_step``, restored state) is current."""

    def __init__(self, objective) -> None:
        self.objective = objective

    def loss(self, model, x0, x1, generator=None):
        with _couple_disabled(self.objective):
            return self.objective.loss(model, x0, x1, generator=generator)


@contextlib.contextmanager
def _couple_disabled(objective):
    missing = object()
    own = getattr(objective, "__dict__", {}).get("couple", missing)  # an instance's own couple comes back after
    objective.couple = _identity_couple
    try:
        yield
    finally:
        if own is missing:
            del objective.couple
        else:
            objective.couple = own


def check_loss(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(f"the objective's loss must return a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(getattr(loss, 'shape', ()))}")
    return loss


def resolve_sampler(objective, method: Optional[str], steps: Optional[int]) -> tuple[str, int]:
    """``(method, steps)`` with the objective's defaults filled in: its ``default_sampler`` (a flow
    map's ``("map", 4)``), else Euler with 100 steps; a given method without steps gets 4 jumps for
    ``"map"``, 100 ODE steps otherwise."""
    default_method, default_steps = getattr(objective, "default_sampler", ("euler", 100))
    if method is None:
        return default_method, default_steps if steps is None else steps
    return method, (4 if method == "map" else 100) if steps is None else steps


def integrate(objective, model: nn.Module, x0: torch.Tensor, *, steps: Optional[int], method: Optional[str],
              atol: float, rtol: float, return_path: bool) -> ODEResult:
    """Samples from x0 (t=0) to t=1, with ``model`` in eval mode: the objective's own ``sample`` when
    it has one (a flow map's K jumps; it validates ``method``), else :func:`flowfast.samplers.odeint`
    of the velocity model. ``method`` / ``steps`` None: :func:`resolve_sampler`."""
    method, steps = resolve_sampler(objective, method, steps)
    own = getattr(objective, "sample", None)
    if not callable(own) and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    was_training = model.training
    model.eval()
    try:
        if callable(own):
            return own(model, x0, steps=steps, method=method, atol=atol, rtol=rtol, return_path=return_path)
        return odeint(model, x0, method=method, steps=steps, return_path=return_path, atol=atol, rtol=rtol)
    finally:
        model.train(was_training)


def _coupling(objective):
    """The objective's coupling object when it has one with state (e.g. a teacher), else None."""
    coupling = getattr(objective, "coupling", None)
    return coupling if callable(getattr(coupling, "state_dict", None)) else None


def _stateful(objective) -> bool:
    return callable(getattr(objective, "state_dict", None))


def objective_states(objective) -> dict:
    """The checkpoint entries ``coupling_state`` and ``objective_state`` (each ``{}`` without state)."""
    coupling = _coupling(objective)
    return {"coupling_state": {} if coupling is None else coupling.state_dict(),
            "objective_state": objective.state_dict() if _stateful(objective) else {}}


def load_objective_states(objective, state: dict) -> None:
    """Restore what :func:`objective_states` saved; checkpoints older than either entry lack it."""
    coupling_state = state.get("coupling_state") or {}
    if coupling_state:
        coupling = _coupling(objective)
        if coupling is None:
            raise ValueError("the checkpoint holds a coupling's state but this trainer's path has no stateful coupling")
        coupling.load_state_dict(coupling_state)
    objective_state = state.get("objective_state") or {}
    if objective_state:
        if not callable(getattr(objective, "load_state_dict", None)):
            raise ValueError(f"the checkpoint holds an objective state but this trainer's objective "
                             f"({type(objective).__name__}) has no load_state_dict")
        objective.load_state_dict(objective_state)
