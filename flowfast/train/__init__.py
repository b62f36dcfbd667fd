"""Training for flow-matching objectives: EMA, JSONL metrics, atomic checkpoints with exact resume, DDP.

    from flowfast import data
    from flowfast.models import MLP
    from flowfast.paths import OptimalTransportCFM
    from flowfast.train import Trainer

    trainer = Trainer(MLP(2), OptimalTransportCFM(sigma=0.1), data.gaussian, data.eight_gaussians,
                      out_dir="runs/otcfm", checkpoint_every=1000)
    trainer.train(20_000)                    # or train(20_000, resume=True) after an interruption
    trainer.evaluate(method="dopri5")        # {"w2": ..., "nfe": ..., ...}

    Trainer(MLP(2), "otcfm", None, load_array("points.npy"))   # N(0, I) -> a dataset in shuffled epochs

Modules: :mod:`~flowfast.train.trainer` (the loop), :mod:`~flowfast.train.objectives` (the objective
protocol, CFM paths by name), :mod:`~flowfast.train.batches` (samplers, tensors, loaders, noise),
:mod:`~flowfast.train.checkpoint`, :mod:`~flowfast.train.ema`, :mod:`~flowfast.train.metrics_log`,
:mod:`~flowfast.train.distributed`.

Distributed: when ``torch.distributed`` is initialised the model is wrapped in DDP; each rank draws its
own minibatch from its own generator stream and couples it locally; ``global_coupling=True``
all-gathers the minibatches, couples the global batch identically on every rank (a shared generator)
and each rank trains on its slice. Only rank 0 writes metrics and checkpoints.
"""

from flowfast.train.batches import load_array
from flowfast.train.checkpoint import (CHECKPOINT_NAME, read_checkpoint, read_checkpoint_config,
                                       remove_stale_temporaries)
from flowfast.train.distributed import derive_seed
from flowfast.train.metrics_log import METRICS_NAME
from flowfast.train.objectives import PATHS, make_path
from flowfast.train.trainer import Trainer

_derive_seed = derive_seed  # the name flowfast.demo imports

__all__ = ["Trainer", "make_path", "PATHS", "CHECKPOINT_NAME", "METRICS_NAME", "read_checkpoint",
           "read_checkpoint_config", "remove_stale_temporaries", "load_array"]
