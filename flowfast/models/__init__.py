"""Networks: the 2D velocity ``MLP`` (``forward(x, t)``) and the two-time flow-map nets
``FlowMapMLP`` (vectors) and ``FlowMapUNet`` (images), ``forward(x, s, t) -> v`` with
``X_{s,t}(x) = x + (t - s) v``; ``SimplexTransformer`` (sequences on the simplex, ``forward(x, s, t)
-> logits``); ``TimeEmbedding`` is their smooth embedding of a time in [0, 1]."""

from flowfast.models.embedding import TimeEmbedding, batch_time
from flowfast.models.flow_map_mlp import FlowMapMLP
from flowfast.models.mlp import MLP
from flowfast.models.simplex_transformer import SimplexTransformer
from flowfast.models.unet import FlowMapUNet

__all__ = ["MLP", "FlowMapMLP", "FlowMapUNet", "SimplexTransformer", "TimeEmbedding", "batch_time"]
