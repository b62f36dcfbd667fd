"""Discrete flow models with a uniform source (``flowfast.discrete``): the denoiser wrapper, the
DFM objective (ELBO or cross-entropy; independent or PairFlow-paired sources), ancestral and
CTMC-Euler K-step samplers, and PairFlow's closed-form source-data pairing over the training set
(kernel family ``dfm``).

t runs from 0 (uniform source tokens) to 1 (data); x0 = source, x1 = data; kappa_t = t.
"""

from flowfast.discrete.model import DiscreteFlowModel
from flowfast.discrete.objectives import DFMObjective, with_sources
from flowfast.discrete.pairflow import hamming_distance, pairflow_pairs, uniform_source
from flowfast.discrete.sampling import DiscreteSample, sample, step_probabilities

__all__ = ["DFMObjective", "DiscreteFlowModel", "DiscreteSample", "hamming_distance", "pairflow_pairs", "sample",
           "step_probabilities", "uniform_source", "with_sources"]
