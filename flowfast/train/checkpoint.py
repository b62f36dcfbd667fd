"""Trainer checkpoints: what they hold (:func:`trainer_state`), the format tag, atomic writes
(temporary file + rename), reading with one clear error for anything that is not a Trainer
checkpoint, and cleaning up the temporaries of killed saves."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import torch

from flowfast.train.distributed import gather_objects
from flowfast.train.metrics_log import METRICS_NAME, MetricsLog, atomic_write_text
from flowfast.train.objectives import load_objective_states, objective_states

__all__ = ["CHECKPOINT_NAME", "FORMAT", "RunFolder", "read_checkpoint", "require_checkpoint", "read_checkpoint_config",
           "remove_stale_temporaries", "atomic_torch_save", "cli_arguments", "trainer_state", "load_trainer_state"]

CHECKPOINT_NAME = "checkpoint.pt"
#: Stored under "format". Keys added later (``data_state``, ``objective_state``) are optional, so
#: checkpoints written before them still load and the tag did not change.
FORMAT = "flowfast.Trainer/1"


class RunFolder:
    """``out_dir``'s layout: ``checkpoint.pt``, ``metrics.jsonl``, ``config.json``. ``None``: no folder,
    every path None. Opening one removes the temporaries of saves that were killed."""

    def __init__(self, out_dir: Optional[str]) -> None:
        self.out_dir = out_dir
        if out_dir is not None and os.path.isdir(out_dir):
            remove_stale_temporaries(out_dir, CHECKPOINT_NAME)

    def _join(self, name: str) -> Optional[str]:
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self._join(CHECKPOINT_NAME)

    @property
    def metrics_path(self) -> Optional[str]:
        return self._join(METRICS_NAME)

    def prepare(self, step: int, config: dict) -> None:
        """Before training from ``step`` (rank 0): create the folder, drop metrics lines after ``step``
        (a fresh run into an old folder starts a fresh log), write ``config.json``."""
        if self.out_dir is None:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        MetricsLog(self.metrics_path).drop_after(step)
        if config:
            atomic_write_text(json.dumps(config, indent=2) + "\n", self._join("config.json"))


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
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a flowfast.Trainer checkpoint")
    return state


def require_checkpoint(path: str) -> dict:
    """:func:`read_checkpoint`, with a missing file a ValueError too."""
    state = read_checkpoint(path)
    if state is None:
        raise ValueError(f"no checkpoint at {path}")
    return state


def read_checkpoint_config(path: str) -> Optional[dict]:
    """The config stored in a Trainer checkpoint (see :func:`read_checkpoint`), None without a file."""
    state = read_checkpoint(path)
    return None if state is None else (state.get("config") or {})


def cli_arguments(state: dict, path: str, device="cpu") -> tuple[tuple, dict]:
    """The Trainer arguments ``(model, objective, source, target)`` and options that rebuild a run of
    ``python -m flowfast train`` from its checkpoint's config (:func:`flowfast.train.recipes.build_run`)."""
    from flowfast.train.recipes import build_run

    cfg = state.get("config") or {}
    try:
        args = build_run(cfg, device=device)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    options = {"batch_size": cfg.get("batch_size", 512), "seed": state["seed"], "progress": False,
               "ema_decay": cfg.get("ema_decay", 0.999 if state["ema"] is not None else None), "config": cfg,
               "grad_clip": cfg.get("grad_clip"), "warmup_steps": cfg.get("warmup_steps", 0)}
    return args, options


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
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace (atomic on POSIX):
    a reader sees the previous checkpoint or the new one, never a partial file."""
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


def trainer_state(trainer) -> dict:
    """Everything ``trainer`` needs to continue exactly (a collective under DDP: call on every rank).

    Keys: ``format``, ``step``, ``model``, ``ema`` (None without EMA), ``optimizer``, ``rng`` (every
    rank's generator states, :class:`~flowfast.train.distributed.RandomStreams`), ``window`` (the log
    window's ``[sum, count]``), ``elapsed_s``, ``seed``, ``world_size``, ``config``, ``coupling_state``
    and ``objective_state`` (``{}`` without state), ``data_state`` (``{"ranks": [...]}``, each rank's
    x1 position, see :mod:`flowfast.train.batches`)."""
    return {"format": FORMAT, "step": trainer.step, "model": trainer.model.state_dict(),
            "ema": None if trainer.ema_model is None else trainer.ema_model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "rng": trainer._streams.state(trainer.world),
            "window": trainer._window.state(), "elapsed_s": trainer._elapsed, "seed": trainer.seed,
            "world_size": trainer.world_size, "config": trainer.config, **objective_states(trainer.path),
            "data_state": {"ranks": gather_objects(trainer._x1.state_dict(), trainer.world)}}


def load_trainer_state(trainer, state: dict) -> None:
    """Restore :func:`trainer_state` into ``trainer``. Checkpoints older than ``coupling_state``,
    ``objective_state`` or ``data_state`` lack them (a sampler target has no position to restore)."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a flowfast.Trainer checkpoint")
    trainer.model.load_state_dict(state["model"])
    if trainer.ema_model is not None:
        trainer.ema_model.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.lr_override is not None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["base_lr"] = trainer.lr_override
    for group in trainer.optimizer.param_groups:  # checkpoints from before the warm-up option
        group.setdefault("base_lr", group["lr"])
    load_objective_states(trainer.path, state)
    trainer.step = int(state["step"])
    trainer._window.load(state["window"])
    trainer._elapsed = float(state["elapsed_s"])
    trainer._streams.load(state["rng"], trainer.world, trainer.step)
    ranks = (state.get("data_state") or {}).get("ranks")
    if ranks:
        mine = ranks[trainer.rank] if len(ranks) == trainer.world_size else ranks[0]  # positions agree across ranks
        try:
            trainer._x1.load_state_dict(mine)
        except ValueError as exc:  # other data (--override-config): start it afresh, loudly
            print(f"[flowfast] {exc}: the data starts from its beginning, the continuation is not bit-identical",
                  file=sys.stderr)
    if state.get("config"):
        trainer.config = {**state["config"], **trainer.config}
