"""flowfast: fast couplings and flow matching for PyTorch.

Conventions: x0 = source/noise at t=0, x1 = data at t=1.
"""

from flowfast import compat, couplings, data, metrics, paths, samplers
from flowfast._backend import build_info, cuda_available
from flowfast.couplings import SinkhornResult, linear_assignment, linear_sum_assignment, ot_pairing, sinkhorn

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build_info",
    "compat",
    "couplings",
    "data",
    "metrics",
    "paths",
    "samplers",
    "cuda_available",
    "linear_assignment",
    "linear_sum_assignment",
    "ot_pairing",
    "sinkhorn",
    "SinkhornResult",
]
