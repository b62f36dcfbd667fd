"""The training loop: draws batches, calls the objective, steps the optimizer, keeps the EMA, logs and
checkpoints. The pieces it wires together live beside it (batches, objectives, ema, metrics_log,
checkpoint, distributed)."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import torch
from torch import nn

from flowfast import metrics
from flowfast.samplers import ODEResult
from flowfast.train import checkpoint as ckpt
from flowfast.train._checks import check_int, check_options
from flowfast.train.batches import TOKEN_DTYPES, IterableSource, as_source, as_target, draw_pair
from flowfast.train.distributed import (RandomStreams, World, all_reduce_sum, average_gradients, barrier,
                                        derive_seed, gather_rows, wrap_model)
from flowfast.train.ema import EMA
from flowfast.train.metrics_log import LossWindow, MetricsLog, Progress, read_losses
from flowfast.train.objectives import PreCoupled, as_objective, check_loss, integrate, resolve_sampler

__all__ = ["Trainer"]


class Trainer:
    """Trains ``model`` on an objective from source x0 (t=0) to data x1 (t=1).

    Args:
        model: an ``nn.Module``; a velocity model is called as ``model(x_t, t)``, ``t`` of shape ``(B,)``.
        path (or ``objective=``): a :mod:`flowfast.paths` object, a path name (``icfm``, ``otcfm``, ``sbcfm``,
            ``fm``, ``vp``; sigma 0.1) or any object with the protocol below.
        source: x0, a callable ``sample(n, generator) -> (n, *shape)``; None: N(0, I) shaped like x1.
        target: x1, a sampler like ``source``, a ``(N, *shape)`` tensor or numpy array (shuffled epochs, the
            incomplete last batch dropped), or a re-iterable / DataLoader of ``(B, *shape)`` batches or
            ``(x, label)`` pairs (:mod:`flowfast.train.batches`). Batches go to ``device`` and the model's dtype.
        optimizer: default ``AdamW(lr=1e-3, weight_decay=1e-5)``. batch_size: per rank (a loader's own size wins).
        ema_decay: the weights' moving average (None: none), decay ``min(ema_decay, (1 + step) / (10 + step))``.
        seed: seeds every random stream (data, t, noise, couplings, a dataset's epochs).
        log_every, out_dir, checkpoint_every, progress: a mean-loss line in ``out_dir/metrics.jsonl`` every
            ``log_every`` steps; ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end of
            :meth:`train` (``out_dir=None``: write nothing); a progress bar.
        global_coupling: under DDP, couple the all-gathered global batch, train each rank on its slice (else
            each rank couples its own). Give all ranks the same arguments (only rank 0 writes).
        grad_clip: clip the gradients' global norm to this value before each step (None: no clipping).
        warmup_steps: scale each parameter group's learning rate by ``min(1, step / warmup_steps)`` over the
            first steps (its base rate is kept in the group as ``"base_lr"``, so a resumed run continues the ramp); after
            them the rate is not touched.
        config: JSON-able metadata stored in checkpoints and ``out_dir/config.json``.

    Objective protocol (docs/architecture.md, "Trainer objectives"): required ``loss(model, x0, x1,
    generator=None) -> scalar tensor``, which couples through ``self.couple(x0, x1, generator) -> (x0,
    x1)`` (also required: the trainer couples the global batch with it, then makes it the identity inside
    ``loss``). Optional: ``sample(model, x0, *, steps, method, atol, rtol, return_path) -> ODEResult``
    replaces ``odeint(model, x0)`` in :meth:`sample` / :meth:`evaluate` and validates ``method``;
    ``uses_function_transforms = True`` when the loss applies ``torch.func`` to the model: under DDP it
    gets the bare module and the trainer averages the gradients over the ranks after ``backward``;
    ``state_dict()`` / ``load_state_dict(state)``, checkpointed as ``objective_state`` (a stateful
    ``coupling`` attribute as ``coupling_state``); ``after_step(model, step)``, after each optimizer step.

    Reproducibility: one CPU generator per rank draws the data (on CUDA a device generator seeded alike
    draws t, noise and couplings); checkpoints (:func:`flowfast.train.checkpoint.trainer_state`) hold all
    state, the data position included, so a resumed run repeats the uninterrupted run's losses bit for bit.
    """

    def __init__(self, model: nn.Module, path=None, source=None, target=None, *, objective=None,
                 optimizer: Optional[torch.optim.Optimizer] = None, batch_size: int = 512,
                 ema_decay: Optional[float] = 0.999, seed: int = 0, device="cpu", log_every: int = 100,
                 out_dir: Optional[str] = None, checkpoint_every: Optional[int] = None, progress: bool = True,
                 global_coupling: bool = False, config: Optional[dict] = None, grad_clip: Optional[float] = None,
                 warmup_steps: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (path is None) == (objective is None):
            raise TypeError("give the objective once: as path (the second argument) or as objective=")
        self.path = as_objective(path if objective is None else objective)
        check_options(batch_size=batch_size, log_every=log_every, checkpoint_every=checkpoint_every,
                      out_dir=out_dir, ema_decay=ema_decay, seed=seed, grad_clip=grad_clip,
                      warmup_steps=warmup_steps)
        if not list(model.parameters()):
            raise ValueError("model has no parameters")

        self.batch_size, self.log_every, self.seed = batch_size, log_every, seed
        self.device, self.world = torch.device(device), World.current()
        self.rank, self.world_size, self.distributed = self.world.rank, self.world.size, self.world.distributed
        self.out_dir, self.checkpoint_every, self.progress = out_dir, checkpoint_every, progress
        self.global_coupling = bool(global_coupling)
        self.config = dict(config) if config is not None else {}
        #: a learning rate that replaces the checkpoint's on resume (the CLI's --override-config)
        self.lr_override: Optional[float] = None
        self._folder = ckpt.RunFolder(out_dir)

        self.model = model.to(self.device)
        params = list(self.model.parameters())
        self.dtype = params[0].dtype
        self.uses_function_transforms = bool(getattr(self.path, "uses_function_transforms", False))
        self._net = wrap_model(self.model, self.device, self.world, self.uses_function_transforms)
        self._ema = None if ema_decay is None else EMA(self.model, ema_decay)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.optimizer = optimizer if optimizer is not None else torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-5)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.warmup_steps = warmup_steps
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self._paired_path = PreCoupled(self.path)
        self._streams = RandomStreams(seed, self.rank, self.device)
        self.generator, self.device_generator = self._streams.data, self._streams.device
        self.coupling_generator = self._streams.coupling
        self.target, self.source = target, source  # target first: source=None takes its shape from it

        self.step = 0
        self._window = LossWindow()  # the losses since the last metrics line
        self._elapsed = 0.0  # training wall time of the steps done so far (kept across resumes)
        self._metrics = MetricsLog(self._folder.metrics_path)

    # --- data and properties ------------------------------------------------------------------------
    @property
    def source(self):
        """x0's argument as given; assigning re-wraps it (:mod:`flowfast.train.batches`)."""
        return self._source_arg

    @source.setter
    def source(self, value) -> None:
        # An objective whose source differs in shape from the data (categorical: token ids (L,) ->
        # noise (L, V)) says so with source_shape(data_item_shape).
        source_shape = getattr(self.path, "source_shape", None)
        self._x0 = as_source(value, item_shape=lambda: self._x1.item_shape(), dtype=self.dtype,
                             source_shape=source_shape if callable(source_shape) else None)
        self._source_arg = value

    @property
    def target(self):
        """x1's argument as given; assigning re-wraps it, at the start of its data."""
        return self._target_arg

    @target.setter
    def target(self, value) -> None:
        self._x1 = as_target(value, batch_size=self.batch_size, seed=self.seed, world=self.world)
        self._target_arg = value

    @property
    def ema_model(self) -> Optional[nn.Module]:
        return None if self._ema is None else self._ema.model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self._folder.checkpoint_path

    @property
    def metrics_path(self) -> Optional[str]:
        return self._folder.metrics_path

    def _pair(self, n: int, generator: torch.Generator, evaluation: bool = False):
        """(x0, x1) on the trainer's device and dtype (:func:`flowfast.train.batches.draw_pair`)."""
        return (x.to(device=self.device, dtype=x.dtype if x.dtype in TOKEN_DTYPES else self.dtype)
                for x in draw_pair(self._x0, self._x1, n, generator, evaluation))

    # --- the loop -----------------------------------------------------------------------------------
    def _train_step(self) -> torch.Tensor:
        x0, x1 = self._pair(self.batch_size, self.generator)
        if self.global_coupling and self.world_size > 1:
            equal = not isinstance(self._x1, IterableSource)
            (x0g, rows), (x1g, _) = gather_rows(x0, self.world, equal), gather_rows(x1, self.world, equal)
            x0g, x1g = self.path.couple(x0g, x1g, self.coupling_generator)
            loss = self._paired_path.loss(self._net, x0g[rows], x1g[rows], generator=self.device_generator)
        else:
            loss = self.path.loss(self._net, x0, x1, generator=self.device_generator)
        self.optimizer.zero_grad(set_to_none=True)
        check_loss(loss).backward()
        if self.uses_function_transforms:
            average_gradients(self.model.parameters(), self.world)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.step < self.warmup_steps:  # after the ramp the rate is left alone (a scheduler's, the user's)
            ramp = min(1.0, (self.step + 1) / self.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * ramp
        self.optimizer.step()
        self.step += 1
        if self._ema is not None:
            self._ema.update(self.model, self.step)
        after_step = getattr(self.path, "after_step", None)
        if callable(after_step):
            after_step(self.model, self.step)
        return loss.detach()

    def train(self, steps: int, resume: bool = False) -> list[float]:
        """Train until ``self.step == steps``, the run's total (a resumed run or a second call continues);
        with ``resume``, first load ``out_dir/checkpoint.pt`` if it exists. Metrics lines beyond the
        current step (an interrupted run's, or an older run's when this one starts at 0) are dropped
        first. Returns the loss of every step run by this call (this rank's minibatch loss)."""
        check_int("steps", steps, 0)
        if resume:
            if self.out_dir is None:
                raise ValueError("resume=True needs out_dir")
            if os.path.exists(self.checkpoint_path):
                self.resume(self.checkpoint_path)
            elif self.is_main and self.progress:
                print(f"[flowfast] no checkpoint in {self.out_dir}: starting from step 0", file=sys.stderr)
        if self.is_main:
            self._folder.prepare(self.step, self.config)
        losses: list[float] = []
        pending: list[torch.Tensor] = []  # step losses not yet read back (one host read per flush)
        bar = Progress(self.progress and self.is_main, steps, self.step)
        self._net.train()
        start = time.perf_counter()

        def flush() -> None:
            values = read_losses(pending, self.step)
            losses.extend(values)
            self._window.add(values)

        try:
            while self.step < steps:
                pending.append(self._train_step())
                bar.update(self.step)
                log_now = self.step % self.log_every == 0 or self.step == steps
                every = self.checkpoint_every
                ckpt_now = self.out_dir is not None and (self.step == steps or (every and self.step % every == 0))
                if log_now or ckpt_now:
                    flush()
                    self._elapsed += time.perf_counter() - start
                    start = time.perf_counter()
                if log_now:
                    self._log(bar)
                if ckpt_now:
                    self.save(self.checkpoint_path)
        finally:
            bar.close()
        flush()
        return losses

    def _log(self, bar: Progress) -> None:
        total, count = all_reduce_sum(list(self._window.take()), self.world, self.device)
        if not self.is_main or count == 0:
            return
        loss = total / count
        self._metrics.append({"step": self.step, "loss": loss, "lr": float(self.optimizer.param_groups[0]["lr"]),
                              "time_s": round(self._elapsed, 4)})
        bar.log(self.step, loss)

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly (collective under DDP: call on every rank)."""
        return ckpt.trainer_state(self)

    def save(self, path: Optional[str] = None) -> Optional[str]:
        """Write a checkpoint atomically (rank 0; a collective under DDP). Default: ``out_dir/checkpoint.pt``."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("save() needs a path or out_dir")
        state = self.state_dict()
        if self.is_main:
            ckpt.atomic_torch_save(state, path)
        barrier(self.world)
        return path

    def load_state_dict(self, state: dict) -> None:
        ckpt.load_trainer_state(self, state)

    def resume(self, path: Optional[str] = None) -> "Trainer":
        """Load a checkpoint (default ``out_dir/checkpoint.pt``) and continue from its step. Metrics lines
        written after that step by the interrupted run are dropped from ``out_dir/metrics.jsonl``."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("resume() needs a path or out_dir")
        self.load_state_dict(ckpt.require_checkpoint(path))
        if self.is_main:
            self._metrics.drop_after(self.step)
        return self

    @classmethod
    def from_checkpoint(cls, path: str, device="cpu", **kwargs) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by ``python -m flowfast train`` (its config names
        the MLP, the path, sigma and the samplers)."""
        state = ckpt.require_checkpoint(path)
        args, options = ckpt.cli_arguments(state, path, device)
        trainer = cls(*args, device=device, **{**options, **kwargs})
        trainer.load_state_dict(state)
        return trainer

    # --- sampling and evaluation --------------------------------------------------------------------
    def sample(self, n: int, steps: Optional[int] = None, method: Optional[str] = None, ema: bool = True,
               return_path: bool = False, x0: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               atol: float = 1e-5, rtol: float = 1e-5) -> ODEResult:
        """:class:`~flowfast.samplers.ODEResult` (``.x``, ``.nfe``, ``.path`` if ``return_path``) from x0
        (t=0) to t=1 by the objective's ``sample`` if it has one, else :func:`flowfast.samplers.odeint`
        (``euler``/``midpoint``/``rk4`` with ``steps`` steps, adaptive ``dopri5`` with ``atol``/``rtol``).
        ``x0`` ``(n, *shape)`` defaults to ``n`` source draws from ``generator`` (default: a fixed stream
        derived from ``seed``, never the training one); ``ema`` uses the EMA weights when kept. ``method`` /
        ``steps`` None: the objective's default (a flow map: 4 jumps, ``"map"``; else Euler, 100 steps)."""
        model = self.ema_model if (ema and self.ema_model is not None) else self.model
        if x0 is None:
            check_int("n", n, 1)
            g = generator if generator is not None else torch.Generator().manual_seed(derive_seed(self.seed, "sample"))
            x0 = self._x0.draw(n, g)
        return integrate(self.path, model, x0.to(device=self.device, dtype=self.dtype), steps=steps,
                         method=method, atol=atol, rtol=rtol, return_path=return_path)

    def evaluate(self, n: int = 2000, steps: Optional[int] = None, method: Optional[str] = None, ema: bool = True,
                 generator: Optional[torch.Generator] = None, atol: float = 1e-5, rtol: float = 1e-5) -> dict:
        """``{"w2", "nfe", "n", "method", "steps", "ema", "step"}``: exact W2 (O(n^3), n=2000 about a
        second on CPU) between generated and target samples. A dataset gives min(n, N) distinct rows, a
        loader the first n rows of a fresh pass: ``n`` is the count compared; ``steps`` None for dopri5.
        An objective with ``evaluate_samples(samples, real) -> dict`` reports that instead of W2 (a
        categorical one: histogram distances of tokens). The default generator is a fixed stream
        derived from ``seed``."""
        check_int("n", n, 1)
        method, steps = resolve_sampler(self.path, method, steps)
        g = generator if generator is not None else torch.Generator().manual_seed(derive_seed(self.seed, "eval"))
        x0, real = self._pair(n, g, evaluation=True)
        result = self.sample(n, steps=steps, method=method, ema=ema, x0=x0, atol=atol, rtol=rtol)
        own = getattr(self.path, "evaluate_samples", None)  # objectives whose samples W2 does not fit
        scores = own(result.x, real) if callable(own) else {"w2": metrics.wasserstein2(result.x, real)}
        return {**scores, "nfe": result.nfe, "n": real.shape[0], "method": method,
                "steps": None if method == "dopri5" else steps,
                "ema": bool(ema and self.ema_model is not None), "step": self.step}
