"""The JSONL metrics file, the running loss window behind each of its lines, and the progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import torch

__all__ = ["METRICS_NAME", "MetricsLog", "LossWindow", "Progress", "read_losses", "atomic_write_text"]

METRICS_NAME = "metrics.jsonl"


def atomic_write_text(text: str, path: str) -> None:
    """Write via a temporary file and os.replace: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, each with a ``step``. ``path=None`` writes nothing."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def append(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def drop_after(self, step: int) -> None:
        """Remove the lines of steps after ``step`` (an interrupted run's, or an older run's when a new
        one starts at 0). A torn last line (killed mid-write) is dropped; a corrupt earlier line is a
        ValueError naming the file and line, since dropping it would lose history silently."""
        if self.path is None or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    break
                raise ValueError(f"{self.path}, line {number}: not a JSON record ({exc}); "
                                 "fix or remove the line") from None
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            atomic_write_text("".join(kept), self.path)


class LossWindow:
    """Running (sum, count) of the step losses since the last metrics line; part of the checkpoint
    (``[sum, count]``), so a resumed run logs the same means as an uninterrupted one."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, values: list[float]) -> None:
        for v in values:  # one at a time: the same sums whatever the flush points
            self.total += v
        self.count += len(values)

    def take(self) -> tuple[float, int]:
        out = (self.total, self.count)
        self.total, self.count = 0.0, 0
        return out

    def state(self) -> list:
        return [self.total, self.count]

    def load(self, state) -> None:
        self.total, self.count = float(state[0]), int(state[1])


def read_losses(pending: list, step: int) -> list[float]:
    """The step losses (0-dim tensors) as floats, in one host read; empties ``pending``. A non-finite
    loss is a FloatingPointError (the run has diverged; its checkpoint would be useless)."""
    values = torch.stack(pending).tolist() if pending else []
    pending.clear()
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"non-finite loss before step {step}: {values}")
    return values


class Progress:
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
