"""Training loop for flow-matching paths: EMA, JSONL metrics, atomic checkpoints with exact resume, DDP.

    from flowfast import data
    from flowfast.models import MLP
    from flowfast.paths import OptimalTransportCFM
    from flowfast.train import Trainer

    trainer = Trainer(MLP(2), OptimalTransportCFM(sigma=0.1), data.gaussian, data.eight_gaussians,
                      out_dir="runs/otcfm", checkpoint_every=1000)
    trainer.train(20_000)                    # or train(20_000, resume=True) after an interruption
    trainer.evaluate(method="dopri5")        # {"w2": ..., "nfe": ..., ...}

Reproducibility: every random draw of a step (source and target samples, t, path noise, the
coupling's random choices) comes from one ``torch.Generator`` seeded from ``seed`` (on CUDA a second,
device generator seeded the same way draws t, noise and couplings). Checkpoints hold the model, the
EMA copy, the optimizer, the step, the generator states and the running log window, so a run resumed
from a checkpoint repeats the uninterrupted run's losses bit for bit (same device, threads and build).

Distributed: when ``torch.distributed`` is initialised the model is wrapped in DDP; each rank draws its
own minibatch from its own generator stream and couples it locally; ``global_coupling=True``
all-gathers the minibatches, couples the global batch identically on every rank (a shared generator)
and each rank trains on its slice. Only rank 0 writes metrics and checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn

from flowfast import metrics, paths
from flowfast.samplers import METHODS, ODEResult, odeint

__all__ = ["Trainer", "make_path", "PATHS", "CHECKPOINT_NAME", "METRICS_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
_FORMAT = "flowfast.Trainer/1"

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


def _derive_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for an independent stream, derived from (seed, tag)."""
    digest = hashlib.blake2b(f"flowfast/{seed}/{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _identity_couple(x0, x1, generator=None):
    return x0, x1


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def read_checkpoint(path: str) -> Optional[dict]:
    """A Trainer checkpoint's state, or None when there is no file. A file that is not a readable
    flowfast checkpoint (a directory, truncated, garbage, another format) is a ValueError naming it."""
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, another format: one clear message
        raise ValueError(f"{path} is not a readable flowfast checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a flowfast.Trainer checkpoint")
    return state


def read_checkpoint_config(path: str) -> Optional[dict]:
    """The config stored in a Trainer checkpoint (see :func:`read_checkpoint`), None without a file."""
    state = read_checkpoint(path)
    return None if state is None else (state.get("config") or {})


def remove_stale_temporaries(folder: str, name: str) -> list[str]:
    """Delete ``.name.tmp.<pid>`` files left by saves that were killed (their pid is gone)."""
    removed = []
    prefix = f".{name}.tmp."
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix) or not entry[len(prefix):].isdigit():
            continue
        pid = int(entry[len(prefix):])
        if pid != os.getpid() and not _process_alive(pid):
            try:
                os.remove(os.path.join(folder, entry))
                removed.append(entry)
            except OSError:
                pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace (atomic on POSIX)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Progress:
    """tqdm when importable, else a line on stderr at every log step; nothing when disabled."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.enabled, self.total, self.bar = enabled, total, None
        self.start, self.initial = time.perf_counter(), initial
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            return
        rate = (step - self.initial) / max(time.perf_counter() - self.start, 1e-9)
        width = len(str(self.total))
        print(f"[flowfast] step {step:>{width}}/{self.total}  loss {loss:.4f}  {rate:.1f} it/s",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains a velocity model ``model(x_t, t)`` on a CFM path between two samplers.

    Args:
        model: an ``nn.Module`` called as ``model(x_t, t)`` with ``t`` of shape ``(B,)``.
        path: a :mod:`flowfast.paths` object (anything with ``loss(model, x0, x1, generator=...)`` and
            ``couple``) or its name (``icfm``, ``otcfm``, ``sbcfm``, ``fm``, ``vp``; sigma 0.1).
        source, target: callables ``sample(n, generator) -> (n, *shape)`` for x0 (t=0) and x1 (t=1),
            e.g. :mod:`flowfast.data` samplers. They are called with a CPU generator; the result is
            moved to ``device`` and cast to the model's dtype.
        optimizer: default ``AdamW(lr=1e-3, weight_decay=1e-5)`` over ``model.parameters()``.
        batch_size: per-rank minibatch size.
        ema_decay: decay of the exponential moving average of the parameters, ``None`` for no EMA. The
            effective decay is ``min(ema_decay, (1 + step) / (10 + step))`` so early averages are not
            dominated by the initial weights.
        seed: seeds every random stream (see the module docstring).
        device: where the model trains.
        log_every: write a metrics line (mean loss over the last ``log_every`` steps) every so many steps.
        out_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt`` (``None``: write nothing).
        checkpoint_every: also checkpoint every so many steps (a checkpoint is always written at the
            end of :meth:`train` when ``out_dir`` is set).
        progress: show a progress bar (tqdm, else a periodic line on stderr).
        global_coupling: under DDP, couple the all-gathered global batch instead of each rank's own.
            Under DDP give every rank the same arguments (``out_dir`` included; only rank 0 writes):
            logging and checkpointing are collectives.
        config: JSON-able metadata stored in checkpoints and ``out_dir/config.json`` (the CLI stores
            what :meth:`from_checkpoint` needs to rebuild the run).
    """

    def __init__(self, model: nn.Module, path, source: Callable, target: Callable, *,
                 optimizer: Optional[torch.optim.Optimizer] = None, batch_size: int = 512,
                 ema_decay: Optional[float] = 0.999, seed: int = 0, device="cpu", log_every: int = 100,
                 out_dir: Optional[str] = None, checkpoint_every: Optional[int] = None, progress: bool = True,
                 global_coupling: bool = False, config: Optional[dict] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(path, str):
            path = make_path(path)
        if not callable(getattr(path, "loss", None)) or not callable(getattr(path, "couple", None)):
            raise TypeError("path must be a flowfast.paths object (with loss and couple) or a path name")
        for name, fn in (("source", source), ("target", target)):
            if not callable(fn):
                raise TypeError(f"{name} must be a callable sample(n, generator), got {type(fn).__name__}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.log_every = _check_int("log_every", log_every, 1)
        if checkpoint_every is not None:
            _check_int("checkpoint_every", checkpoint_every, 1)
            if out_dir is None:
                raise ValueError("checkpoint_every needs out_dir")
        if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                      or not 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay must be None or a number in [0, 1), got {ema_decay!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")

        self.device = torch.device(device)
        self.path, self.source, self.target = path, source, target
        self.seed, self.ema_decay = seed, (None if ema_decay is None else float(ema_decay))
        self.out_dir, self.checkpoint_every, self.progress = out_dir, checkpoint_every, progress
        if out_dir is not None and os.path.isdir(out_dir):
            remove_stale_temporaries(out_dir, CHECKPOINT_NAME)
        self.config = dict(config) if config is not None else {}
        #: a learning rate that replaces the checkpoint's on resume (the CLI's --override-config)
        self.lr_override: Optional[float] = None

        dist = torch.distributed
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.global_coupling = bool(global_coupling)

        self.model = model.to(self.device)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self._net = DistributedDataParallel(self.model, device_ids=ids)  # broadcasts rank 0's weights
        else:
            self._net = self.model
        self.ema_model = None
        if self.ema_decay is not None:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        params = list(self.model.parameters())
        if not params:
            raise ValueError("model has no parameters")
        self.dtype = params[0].dtype
        self.optimizer = optimizer if optimizer is not None else torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-5)

        self._paired_path = copy.copy(path)
        self._paired_path.couple = _identity_couple  # the global batch is coupled before slicing
        rank_seed = seed if self.rank == 0 else _derive_seed(seed, f"rank{self.rank}")
        self.generator = torch.Generator().manual_seed(rank_seed)  # data (+ t, noise, couplings on CPU)
        self.device_generator = (self.generator if self.device.type == "cpu"
                                 else torch.Generator(self.device).manual_seed(rank_seed))
        self.coupling_generator = torch.Generator(self.device).manual_seed(_derive_seed(seed, "global-coupling"))

        self.step = 0
        self._window = [0.0, 0]  # running (sum, count) of the losses since the last metrics line
        self._elapsed = 0.0  # training wall time of the steps done so far (kept across resumes)

    # --- properties ---------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Optional[str]:
        return None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT_NAME)

    @property
    def metrics_path(self) -> Optional[str]:
        return None if self.out_dir is None else os.path.join(self.out_dir, METRICS_NAME)

    # --- one step -----------------------------------------------------------------------------------
    def _draw(self, sampler: Callable) -> torch.Tensor:
        x = sampler(self.batch_size, self.generator)
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != self.batch_size:
            raise ValueError(f"a sampler returned {type(x).__name__} "
                             f"{tuple(getattr(x, 'shape', ()))}; expected a ({self.batch_size}, ...) tensor")
        return x.to(device=self.device, dtype=self.dtype)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def _train_step(self) -> torch.Tensor:
        x0, x1 = self._draw(self.source), self._draw(self.target)
        if self.global_coupling and self.world_size > 1:
            x0g, x1g = self.path.couple(self._gather(x0), self._gather(x1), self.coupling_generator)
            rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            loss = self._paired_path.loss(self._net, x0g[rows], x1g[rows], generator=self.device_generator)
        else:
            loss = self.path.loss(self._net, x0, x1, generator=self.device_generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema_model.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)

    # --- the loop -----------------------------------------------------------------------------------
    def train(self, steps: int, resume: bool = False) -> list[float]:
        """Train until ``self.step == steps`` (``steps`` is the run's total, so a resumed run or a second
        call continues where the last one stopped).

        Metrics lines are appended to ``out_dir/metrics.jsonl`` every ``log_every`` steps and at the last
        step; lines beyond the current step (left by an interrupted run, or by an older run when this one
        starts at step 0) are dropped first. A checkpoint is written every ``checkpoint_every`` steps and
        at the last step.

        Args:
            steps: total number of optimizer steps (>= 0).
            resume: first load ``out_dir/checkpoint.pt`` if it exists (else start from scratch).

        Returns:
            the loss of every step run by this call (this rank's minibatch loss).
        """
        _check_int("steps", steps, 0)
        if resume:
            if self.out_dir is None:
                raise ValueError("resume=True needs out_dir")
            if os.path.exists(self.checkpoint_path):
                self.resume(self.checkpoint_path)
            elif self.is_main and self.progress:
                print(f"[flowfast] no checkpoint in {self.out_dir}: starting from step 0", file=sys.stderr)
        if self.out_dir is not None and self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self._drop_metrics_after(self.step)  # a fresh run into an old folder starts a fresh log
            if self.config:
                _atomic_write_text(json.dumps(self.config, indent=2) + "\n", os.path.join(self.out_dir, "config.json"))
        losses: list[float] = []
        pending: list[torch.Tensor] = []
        bar = _Progress(self.progress and self.is_main, steps, self.step)
        self._net.train()
        start = time.perf_counter()

        def flush() -> None:
            values = torch.stack(pending).tolist() if pending else []
            pending.clear()
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"non-finite loss before step {self.step}: {values}")
            losses.extend(values)
            for v in values:  # one at a time: the same sums whatever the flush points
                self._window[0] += v
            self._window[1] += len(values)

        try:
            while self.step < steps:
                pending.append(self._train_step())
                bar.update(self.step)
                log_now = self.step % self.log_every == 0 or self.step == steps
                ckpt_now = self.out_dir is not None and (
                    self.step == steps or (self.checkpoint_every is not None and self.step % self.checkpoint_every == 0))
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

    def _log(self, bar: _Progress) -> None:
        total, count = self._window
        if self.distributed:
            buf = torch.tensor([total, float(count)], dtype=torch.float64,
                               device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(buf)
            total, count = float(buf[0]), int(buf[1])
        self._window = [0.0, 0]
        if not self.is_main or count == 0:
            return
        loss = total / count
        record = {"step": self.step, "loss": loss, "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "time_s": round(self._elapsed, 4)}
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        bar.log(self.step, loss)

    # --- checkpoints --------------------------------------------------------------------------------
    def _rng_states(self) -> dict:
        local = {"data": self.generator.get_state(),
                 "device": None if self.device_generator is self.generator else self.device_generator.get_state()}
        if self.distributed:
            gathered = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        return {"ranks": gathered, "coupling": self.coupling_generator.get_state()}

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly (collective under DDP: call on every rank)."""
        return {
            "format": _FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": None if self.ema_model is None else self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self._rng_states(),
            "window": list(self._window),
            "elapsed_s": self._elapsed,
            "seed": self.seed,
            "world_size": self.world_size,
            "config": self.config,
            "coupling_state": self._coupling_state(),
        }

    def _coupling(self):
        """The path's coupling object when it has one with state (e.g. a teacher), else None."""
        coupling = getattr(self.path, "coupling", None)
        return coupling if callable(getattr(coupling, "state_dict", None)) else None

    def _coupling_state(self) -> dict:
        coupling = self._coupling()
        return {} if coupling is None else coupling.state_dict()

    def save(self, path: Optional[str] = None) -> Optional[str]:
        """Write a checkpoint atomically (rank 0; a collective under DDP). Default: ``out_dir/checkpoint.pt``."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("save() needs a path or out_dir")
        state = self.state_dict()
        if self.is_main:
            _atomic_torch_save(state, path)
        if self.distributed:
            torch.distributed.barrier()
        return path

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError("not a flowfast.Trainer checkpoint")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_override is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_override
        coupling_state = state.get("coupling_state") or {}  # absent in checkpoints before couplings had state
        if coupling_state:
            coupling = self._coupling()
            if coupling is None:
                raise ValueError("the checkpoint holds a coupling's state but this trainer's path has no stateful coupling")
            coupling.load_state_dict(coupling_state)
        self.step = int(state["step"])
        self._window = [float(state["window"][0]), int(state["window"][1])]
        self._elapsed = float(state["elapsed_s"])
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.world_size:
            mine = ranks[self.rank]
            self.generator.set_state(mine["data"])
            if mine["device"] is not None and self.device_generator is not self.generator:
                self.device_generator.set_state(mine["device"])
            try:
                self.coupling_generator.set_state(state["rng"]["coupling"])
            except RuntimeError:  # saved on another device type
                pass
        else:  # another world size: fresh but deterministic streams per (seed, step, rank)
            print(f"[flowfast] checkpoint from {len(ranks)} rank(s), running on {self.world_size}: "
                  "random streams are re-seeded, the continuation is not bit-identical", file=sys.stderr)
            s = _derive_seed(self.seed, f"resume{self.step}/rank{self.rank}")
            self.generator.manual_seed(s)
            if self.device_generator is not self.generator:
                self.device_generator.manual_seed(s)
            self.coupling_generator.manual_seed(_derive_seed(self.seed, f"resume{self.step}/global-coupling"))
        if state.get("config"):
            self.config = {**state["config"], **self.config}

    def resume(self, path: Optional[str] = None) -> "Trainer":
        """Load a checkpoint (default ``out_dir/checkpoint.pt``) and continue from its step. Metrics lines
        written after that step by the interrupted run are dropped from ``out_dir/metrics.jsonl``."""
        path = path if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("resume() needs a path or out_dir")
        state = read_checkpoint(path)
        if state is None:
            raise ValueError(f"no checkpoint at {path}")
        self.load_state_dict(state)
        if self.is_main:
            self._drop_metrics_after(self.step)
        return self

    def _drop_metrics_after(self, step: int) -> None:
        if self.metrics_path is None or not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            lines = [ln for ln in f if ln.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # torn by a kill mid-write: the line never completed
                    break
                raise ValueError(f"{self.metrics_path}, line {number}: not a JSON record ({exc}); "
                                 "fix or remove the line") from None
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            _atomic_write_text("".join(kept), self.metrics_path)

    @classmethod
    def from_checkpoint(cls, path: str, device="cpu", **kwargs) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by ``python -m flowfast train`` (its config names
        the MLP, the path, sigma and the samplers)."""
        from flowfast import data
        from flowfast.models import MLP

        state = read_checkpoint(path)
        if state is None:
            raise ValueError(f"no checkpoint at {path}")
        cfg = state.get("config") or {}
        missing = [k for k in ("model", "path", "sigma", "source", "target") if k not in cfg]
        if missing:
            raise ValueError(f"{path} has no {missing} in its config; rebuild the Trainer yourself and call resume()")
        model = MLP(**cfg["model"])
        options = {"batch_size": cfg.get("batch_size", 512), "seed": state["seed"], "progress": False,
                   "ema_decay": cfg.get("ema_decay", 0.999 if state["ema"] is not None else None), "config": cfg}
        options.update(kwargs)
        trainer = cls(model, make_path(cfg["path"], cfg["sigma"]), data.get_sampler(cfg["source"]),
                      data.get_sampler(cfg["target"]), device=device, **options)
        trainer.load_state_dict(state)
        return trainer

    # --- sampling and evaluation --------------------------------------------------------------------
    def sample(self, n: int, steps: int = 100, method: str = "euler", ema: bool = True, return_path: bool = False,
               x0: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               atol: float = 1e-5, rtol: float = 1e-5) -> ODEResult:
        """Integrate the model from source samples (x0 at t=0) to t=1 with :func:`flowfast.samplers.odeint`.

        Args:
            n: number of samples (ignored when ``x0`` is given).
            steps, method: fixed-step ``euler``/``midpoint``/``rk4`` with ``steps`` steps, or ``dopri5``
                (adaptive, ``atol``/``rtol``).
            ema: use the EMA weights (when the trainer keeps them; else the raw weights).
            x0: start points; default ``source(n, generator)``.
            generator: for x0; default a fixed stream derived from ``seed`` (never the training stream).

        Returns:
            :class:`flowfast.samplers.ODEResult`: ``.x`` the samples, ``.nfe``, ``.path`` if ``return_path``.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        model = self.ema_model if (ema and self.ema_model is not None) else self.model
        if x0 is None:
            _check_int("n", n, 1)
            g = generator if generator is not None else torch.Generator().manual_seed(_derive_seed(self.seed, "sample"))
            x0 = self.source(n, g)
        x0 = x0.to(device=self.device, dtype=self.dtype)
        was_training = model.training
        model.eval()
        try:
            return odeint(model, x0, method=method, steps=steps, return_path=return_path, atol=atol, rtol=rtol)
        finally:
            model.train(was_training)

    def evaluate(self, n: int = 2000, steps: int = 100, method: str = "euler", ema: bool = True,
                 generator: Optional[torch.Generator] = None, atol: float = 1e-5, rtol: float = 1e-5) -> dict:
        """Exact W2 (:func:`flowfast.metrics.wasserstein2`) between ``n`` generated and ``n`` target samples.

        The exact solver is O(n^3): n=2000 takes about a second on CPU, 10000 (the papers' protocol) minutes.
        The default generator is a fixed stream derived from ``seed``, so repeated calls compare like with like.

        Returns:
            ``{"w2", "nfe", "n", "method", "steps", "ema", "step"}`` (``steps`` is None for dopri5).
        """
        _check_int("n", n, 1)
        g = generator if generator is not None else torch.Generator().manual_seed(_derive_seed(self.seed, "eval"))
        x0 = self.source(n, g)
        real = self.target(n, g).to(device=self.device, dtype=self.dtype)
        result = self.sample(n, steps=steps, method=method, ema=ema, x0=x0, atol=atol, rtol=rtol)
        return {"w2": metrics.wasserstein2(result.x, real), "nfe": result.nfe, "n": n, "method": method,
                "steps": None if method == "dopri5" else steps,
                "ema": bool(ema and self.ema_model is not None), "step": self.step}
