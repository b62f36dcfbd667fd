"""A run described by a JSON-able config: the model, the objective and the data it trains on.

``python -m flowfast train`` writes such a config into every checkpoint, and
:meth:`flowfast.train.Trainer.from_checkpoint` rebuilds the run from it, so both go through
:func:`build_run`. Keys:

- ``method``: ``"cfm"`` (a velocity MLP on the CFM path ``path`` with ``sigma``) or a flow-map
  objective of :data:`flowfast.flowmaps.OBJECTIVES` (``lsd``, ``esd``, ``psd``, ``distill``, ...);
- ``model_kind`` / ``model``: ``"mlp"`` (:class:`flowfast.models.MLP`), ``"flowmap_mlp"`` or
  ``"flowmap_unet"`` (wrapped in a :class:`flowfast.flowmaps.FlowMap`) and the constructor kwargs;
  ``loss_weight``: a learned two-time loss weight for flow maps;
- ``source`` / ``target``: toy sampler names (:data:`flowfast.data.SAMPLERS`), or ``data``: a
  ``.npy`` / ``.pt`` file of x1 rows with ``source`` None (standard normal noise like the data);
- ``coupling`` (flow maps): ``independent``, ``exact`` or ``sinkhorn``; ``teacher``: the checkpoint
  of the velocity a distillation method distils;
- categorical flow maps: ``method`` one of :data:`flowfast.categorical.METHODS` (``vfm``, ``csd``,
  ``ecld``), ``model_kind`` ``"simplex_transformer"``, ``task`` a name of
  :data:`flowfast.categorical.tasks.TASKS` and ``task_size`` its training set's size (drawn with a
  fixed seed; ``digits`` trains on its fixed training split);
- NFM: ``method`` ``"tarflow"`` trains the teacher (``model_kind`` ``"tarflow"``, ``model`` the
  :class:`flowfast.nfm.TarFlow` kwargs, ``eta`` the noise augmentation, ``source`` None); a ``cfm``
  run with ``coupling`` ``"nfm"`` and ``teacher`` (that checkpoint) pairs its data through the flow
  (:func:`flowfast.nfm.nfm_coupling`; ``nfm_draws``: cached encodings per dataset row);
- discrete flow models: ``method`` ``"dfm"`` (uniform-source DFM, ELBO, independent sources) or
  ``"pairflow"`` (the same on PairFlow pairs, computed from the task data with a fixed seed when
  the run is built), ``model_kind`` ``"discrete_transformer"`` (a SimplexTransformer fed one-hot
  tokens, :class:`flowfast.discrete.DiscreteFlowModel`), ``task`` / ``task_size`` as above.
"""

from __future__ import annotations

from typing import Optional

import torch

from flowfast.train.objectives import make_path

__all__ = ["CATEGORICAL_METHODS", "DISCRETE_METHODS", "TOKEN_METHODS", "build_run", "flow_map_model", "is_categorical_config", "is_flow_map_config",
           "is_tarflow_config", "load_teacher", "LazyTeacher", "MODEL_KINDS", "task_data"]

MODEL_KINDS = ("mlp", "flowmap_mlp", "flowmap_unet", "simplex_transformer", "discrete_transformer", "tarflow")
CATEGORICAL_METHODS = ("vfm", "csd", "ecld")  # flowfast.categorical.METHODS, without importing it here
DISCRETE_METHODS = ("dfm", "pairflow")
TOKEN_METHODS = CATEGORICAL_METHODS + DISCRETE_METHODS  # the methods that train on a token --task
TASK_DATA_SEED = 0


def is_flow_map_config(cfg: dict) -> bool:
    return cfg.get("method", "cfm") not in ("cfm", "tarflow")


def is_tarflow_config(cfg: dict) -> bool:
    return cfg.get("method") == "tarflow"


def is_categorical_config(cfg: dict) -> bool:
    return cfg.get("method") in CATEGORICAL_METHODS


def is_discrete_config(cfg: dict) -> bool:
    return cfg.get("method") in DISCRETE_METHODS


def flow_map_model(item_shape: tuple, width: int, depth: int) -> tuple[str, dict]:
    """The default flow-map net for data of shape ``item_shape``: an MLP for vectors, the U-Net
    for ``(C, H, W)`` images."""
    if len(item_shape) == 1:
        return "flowmap_mlp", {"dim": int(item_shape[0]), "hidden": width, "depth": depth}
    if len(item_shape) == 3 and item_shape[1] == item_shape[2]:
        return "flowmap_unet", {"channels": int(item_shape[0]), "size": int(item_shape[1])}
    raise ValueError(f"no default flow-map network for samples of shape {tuple(item_shape)}: vectors (d,) get "
                     "FlowMapMLP, square images (C, H, H) FlowMapUNet; build the model in Python for others")


def _model(cfg: dict):
    from flowfast import flowmaps
    from flowfast.models import MLP, FlowMapMLP, FlowMapUNet

    kind = cfg.get("model_kind", "mlp")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model_kind {kind!r} in the config; expected one of {MODEL_KINDS}")
    if (kind == "tarflow") != is_tarflow_config(cfg):
        raise ValueError(f"model_kind {kind!r} does not fit method {cfg.get('method', 'cfm')!r}: method 'tarflow' "
                         "trains a model_kind 'tarflow'")
    if kind == "tarflow":
        from flowfast.nfm import TarFlow

        return TarFlow(**cfg["model"])
    if kind == "mlp":
        if is_flow_map_config(cfg):
            raise ValueError(f"method {cfg['method']!r} trains a flow map, but model_kind is 'mlp' (a velocity net)")
        return MLP(**cfg["model"])
    if not is_flow_map_config(cfg):
        raise ValueError(f"model_kind {kind!r} is a flow-map net; method 'cfm' trains a velocity MLP")
    if (kind == "discrete_transformer") != is_discrete_config(cfg):
        raise ValueError(f"model_kind {kind!r} does not fit method {cfg['method']!r}: the discrete methods "
                         f"{DISCRETE_METHODS} train a discrete_transformer")
    if kind == "discrete_transformer":
        from flowfast.discrete import DiscreteFlowModel
        from flowfast.models import SimplexTransformer

        return DiscreteFlowModel(SimplexTransformer(**cfg["model"]), cfg["model"]["vocab"])
    if (kind == "simplex_transformer") != is_categorical_config(cfg):
        raise ValueError(f"model_kind {kind!r} does not fit method {cfg['method']!r}: the categorical methods "
                         f"{CATEGORICAL_METHODS} train a simplex_transformer, the others a flow-map MLP/U-Net")
    if kind == "simplex_transformer":
        from flowfast.categorical import CategoricalFlowMap
        from flowfast.models import SimplexTransformer

        return CategoricalFlowMap(SimplexTransformer(**cfg["model"]), cfg["model"]["vocab"])
    net = (FlowMapMLP if kind == "flowmap_mlp" else FlowMapUNet)(**cfg["model"])
    return flowmaps.FlowMap(net, loss_weight=bool(cfg.get("loss_weight", False)))


def load_teacher(path: str, device="cpu"):
    """The frozen velocity of a checkpoint (its EMA weights when kept): ``teacher(x, t)``."""
    from flowfast import flowmaps
    from flowfast.train.trainer import Trainer

    trainer = Trainer.from_checkpoint(path, device=device)
    model = trainer.ema_model if trainer.ema_model is not None else trainer.model
    model.requires_grad_(False).eval()
    return model.velocity if isinstance(model, flowmaps.FlowMap) else model


class LazyTeacher:
    """``teacher(x, t)`` loaded from its checkpoint at the first call: sampling or evaluating a
    distilled run never needs the teacher (it may have moved), only training does."""

    def __init__(self, path: str, device) -> None:
        self.path, self.device, self._velocity = path, device, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._velocity is None:
            self._velocity = load_teacher(self.path, self.device)
        return self._velocity(x, t)


def _objective(cfg: dict, device, target):
    if is_tarflow_config(cfg):
        from flowfast.nfm import TarFlowObjective

        return TarFlowObjective(cfg.get("eta", 0.05))
    if not is_flow_map_config(cfg):
        path = make_path(cfg["path"], cfg["sigma"])
        if cfg.get("coupling") == "nfm":
            path.coupling = _nfm_coupling(cfg, device, target)
        return path
    if is_categorical_config(cfg):
        from flowfast.categorical import CategoricalObjective

        return CategoricalObjective(cfg["model"]["vocab"], cfg["method"])
    if is_discrete_config(cfg):
        from flowfast.discrete import DFMObjective

        return DFMObjective(cfg["model"]["vocab"], "elbo", paired=cfg["method"] == "pairflow")
    from flowfast import flowmaps

    teacher = None
    if cfg.get("teacher"):
        teacher = LazyTeacher(cfg["teacher"], device)
    kwargs = {}
    if cfg.get("coupling") not in (None, "independent"):
        kwargs["coupling"] = cfg["coupling"]
    return flowmaps.make_objective(cfg["method"], teacher=teacher, **kwargs)


def _data(cfg: dict):
    from flowfast import data
    from flowfast.train.batches import load_array

    if cfg.get("task"):
        tokens = task_data(cfg["task"], cfg.get("task_size", 20000))
        if cfg.get("method") == "pairflow":
            from flowfast.discrete import pairflow_pairs, with_sources

            sources = pairflow_pairs(tokens, cfg["model"]["vocab"], generator=torch.Generator().manual_seed(TASK_DATA_SEED))
            tokens = with_sources(tokens, sources)
        return None, tokens
    if cfg.get("data"):
        source = data.get_sampler(cfg["source"]) if cfg.get("source") else None
        return source, load_array(cfg["data"])
    source = data.get_sampler(cfg["source"]) if cfg.get("source") else None
    return source, data.get_sampler(cfg["target"])


def _nfm_coupling(cfg: dict, device, target):
    """The NFM coupling of a cfm run, loaded at its first pairing (:class:`flowfast.nfm.teacher.LazyNFMCoupling`):
    sigma_f from the dataset (a sampler: SCALE_SAMPLES draws with a fixed seed) unless the checkpoint
    restores it, the cache over the dataset's rows as the trainer will see them (float32 on device)."""
    from flowfast.nfm.teacher import SCALE_SAMPLES, LazyNFMCoupling

    if not cfg.get("teacher"):
        raise ValueError("coupling 'nfm' needs a teacher: the checkpoint of a `python -m flowfast train-nf` run")
    if isinstance(target, torch.Tensor):
        rows, draws = (lambda: target.to(device=device, dtype=torch.float32)), cfg.get("nfm_draws")
    else:
        rows, draws = (lambda: target(SCALE_SAMPLES, torch.Generator().manual_seed(TASK_DATA_SEED)).float()), None
    return LazyNFMCoupling(cfg["teacher"], rows, device=device, draws=draws, seed=TASK_DATA_SEED)


def task_data(name: str, size: int) -> torch.Tensor:
    """The training tokens of a categorical task: ``size`` sequences drawn with a fixed seed (the
    digits task: its fixed training split)."""
    from flowfast.categorical.tasks import get_task

    task = get_task(name)
    if name == "digits":
        return task.train
    return task.sample(int(size), torch.Generator().manual_seed(TASK_DATA_SEED))


def build_run(cfg: dict, device="cpu", seed: Optional[int] = None):
    """``(model, objective, source, target)`` for a config (see the module docstring). With
    ``seed``, the model's initial weights are drawn after ``torch.manual_seed(seed)``."""
    needed = ["model"] + (["path", "sigma"] if not is_flow_map_config(cfg) and not is_tarflow_config(cfg) else ["method"])
    needed += [] if cfg.get("data") or cfg.get("task") else ["source", "target"]
    missing = [key for key in needed if key not in cfg]
    if missing:
        raise ValueError(f"the run's config has no {missing}; rebuild the Trainer yourself and call resume()")
    source, target = _data(cfg)
    objective = _objective(cfg, device, target)
    if seed is not None:
        torch.manual_seed(seed)
    return _model(cfg), objective, source, target
