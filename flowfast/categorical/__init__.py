"""Categorical flow maps: flow maps towards the probability simplex for token sequences.

x1 = token ids ``(B, L)``, x0 ~ N(0, I) ``(B, L, V)``, x_t = (1 - t) x0 + t onehot(x1)
(:mod:`path`); the map X_{s,t}(x) = x + gamma (softmax(net(x, s, t)) - x) (:mod:`flow_map`),
trained by VFM cross-entropy on the diagonal plus CSD or ECLD off it (:mod:`objectives`, the fused
``simplex`` kernels), sampled in K jumps or K Euler steps with classifier-free guidance
(:mod:`sampling`) or reward guidance through the look-ahead endpoint (:mod:`guidance`).
Benchmark tasks with exact metrics: :mod:`tasks`.
"""

from flowfast.categorical.flow_map import MIN_ONE_MINUS_S, CategoricalFlowMap, flow_map_step
from flowfast.categorical.guidance import SMCSample, gradient_guided_sample, smc_sample
from flowfast.categorical.objectives import METHODS, CategoricalObjective, with_labels
from flowfast.categorical.path import check_token_batch, input_scale, interpolate, source_noise
from flowfast.categorical.sampling import READOUTS, SAMPLE_METHODS, CategoricalSample, readout, sample

__all__ = ["METHODS", "MIN_ONE_MINUS_S", "READOUTS", "SAMPLE_METHODS", "CategoricalFlowMap", "CategoricalObjective",
           "CategoricalSample", "SMCSample", "check_token_batch", "flow_map_step", "gradient_guided_sample", "input_scale",
           "interpolate", "readout", "sample", "smc_sample", "source_noise", "with_labels"]
