"""The demos behind ``python -m flowfast demo``; each prints metrics and writes a plot (with matplotlib).

- :func:`run_flowmap_demo` (the default, what ``make demo`` runs): an OT-CFM teacher, an LSD flow
  map and a map distilled from the teacher on N(0, I) -> 8 gaussians; W2 at 1/2/4/8 jumps next
  to the teacher's ODE.
- :func:`run_training_demo` (``demo --cfm``): I-CFM vs OT-CFM on the same toy.
- :func:`run_pairing_demo` (``demo --coupling``): the exact minibatch-OT pairing.
"""

from flowfast.demo.cfm import run_training_demo
from flowfast.demo.flow_maps import run_flowmap_demo
from flowfast.demo.pairing import run_pairing_demo

__all__ = ["run_flowmap_demo", "run_training_demo", "run_pairing_demo"]
