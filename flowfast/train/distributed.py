"""What the trainer does differently under ``torch.distributed``: the DDP wrap (or, for objectives
that apply function transforms to the model, a plain module plus an explicit gradient all-reduce),
gathering minibatches for global coupling, per-rank random streams and their checkpoint states.

Single-process runs go through the same functions: with ``World.size == 1`` they do nothing.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

__all__ = ["derive_seed", "World", "RandomStreams", "wrap_model", "gather_rows", "average_gradients",
           "all_reduce_sum", "gather_objects", "barrier"]


def derive_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for an independent stream, derived from (seed, tag)."""
    digest = hashlib.blake2b(f"flowfast/{seed}/{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``distributed`` (a process group is initialised), rank, size."""

    distributed: bool = False
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> "World":
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(True, dist.get_rank(), dist.get_world_size())
        return cls()


def _device_ids(device: torch.device):
    if device.type != "cuda":
        return None
    return [device.index if device.index is not None else torch.cuda.current_device()]


def wrap_model(model: nn.Module, device: torch.device, world: World, function_transforms: bool) -> nn.Module:
    """The module the loss calls: ``model`` itself outside DDP; under DDP a DistributedDataParallel
    wrapper (it broadcasts rank 0's weights and averages gradients in backward), except for
    objectives that apply ``torch.func`` transforms to the model, which DDP's forward does not
    support: there the weights are broadcast here and the trainer calls :func:`average_gradients`."""
    if not world.distributed:
        return model
    if function_transforms:
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(t.data, 0)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=_device_ids(device))


@torch.no_grad()
def average_gradients(params: Iterable[torch.Tensor], world: World) -> None:
    """Replace every parameter's ``.grad`` by its mean over the ranks, one all-reduce per dtype.

    A gradient missing on one rank counts as zero there; a parameter without a gradient on every
    rank keeps ``grad=None`` (so the optimizer skips it on all ranks alike). One presence flag per
    parameter travels in the same buffer, so this needs no extra collective."""
    if world.size == 1:
        return
    groups: dict = {}
    for p in params:
        if p.requires_grad:
            groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                         + [torch.tensor([float(p.grad is not None) for p in group], dtype=dtype, device=device)])
        torch.distributed.all_reduce(flat)
        flat /= world.size
        offset = 0
        for p, present in zip(group, flat[-len(group):].tolist()):
            size = p.numel()
            if present:
                mean = flat[offset:offset + size].view_as(p)
                if p.grad is not None:
                    p.grad.copy_(mean)
                else:
                    p.grad = mean.clone()
            offset += size


def gather_rows(x: torch.Tensor, world: World, equal_sizes: bool) -> tuple[torch.Tensor, slice]:
    """All ranks' minibatches ``(B_r, *shape)`` concatenated in rank order, and the rows that are this
    rank's. With ``equal_sizes=False`` (batches from a loader) the sizes are exchanged first and the
    batches padded to the largest for the all_gather."""
    if equal_sizes:
        sizes = [x.shape[0]] * world.size
    else:
        mine = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        parts = [torch.empty_like(mine) for _ in range(world.size)]
        torch.distributed.all_gather(parts, mine)
        sizes = [int(s) for s in torch.cat(parts).tolist()]
    width = max(sizes)
    padded = x.contiguous()
    if x.shape[0] < width:
        padded = torch.cat([padded, padded.new_zeros((width - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    torch.distributed.all_gather(parts, padded)
    start = sum(sizes[:world.rank])
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), slice(start, start + sizes[world.rank])


def all_reduce_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum a few floats over the ranks (float64; on the GPU for NCCL)."""
    if not world.distributed:
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(buf)
    return buf.tolist()


def gather_objects(obj, world: World) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` outside DDP."""
    if not world.distributed:
        return [obj]
    gathered = [None] * world.size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def barrier(world: World) -> None:
    if world.distributed:
        torch.distributed.barrier()


class RandomStreams:
    """The trainer's generators. ``data``: CPU, draws source/target samples (and on CPU also t,
    path noise and couplings); ``device``: t, noise and couplings on CUDA (``data`` itself on CPU);
    ``coupling``: the global coupling's, the same on every rank. Rank 0 uses ``seed`` itself, other
    ranks a stream derived from (seed, rank), so a single-process run is rank 0 of any world."""

    def __init__(self, seed: int, rank: int, device: torch.device) -> None:
        self.seed, self.rank = seed, rank
        rank_seed = seed if rank == 0 else derive_seed(seed, f"rank{rank}")
        self.data = torch.Generator().manual_seed(rank_seed)
        self.device = self.data if device.type == "cpu" else torch.Generator(device).manual_seed(rank_seed)
        self.coupling = torch.Generator(device).manual_seed(derive_seed(seed, "global-coupling"))

    def state(self, world: World) -> dict:
        """All ranks' states (a collective under DDP), as stored under the checkpoint's ``rng``."""
        local = {"data": self.data.get_state(),
                 "device": None if self.device is self.data else self.device.get_state()}
        return {"ranks": gather_objects(local, world), "coupling": self.coupling.get_state()}

    def load(self, state: dict, world: World, step: int) -> None:
        ranks = state["ranks"]
        if len(ranks) == world.size:
            mine = ranks[world.rank]
            self.data.set_state(mine["data"])
            if mine["device"] is not None and self.device is not self.data:
                self.device.set_state(mine["device"])
            try:
                self.coupling.set_state(state["coupling"])
            except RuntimeError:  # saved on another device type
                pass
            return
        # another world size: fresh but deterministic streams per (seed, step, rank)
        print(f"[flowfast] checkpoint from {len(ranks)} rank(s), running on {world.size}: "
              "random streams are re-seeded, the continuation is not bit-identical", file=sys.stderr)
        s = derive_seed(self.seed, f"resume{step}/rank{world.rank}")
        self.data.manual_seed(s)
        if self.device is not self.data:
            self.device.manual_seed(s)
        self.coupling.manual_seed(derive_seed(self.seed, f"resume{step}/global-coupling"))
