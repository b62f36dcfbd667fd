"""Randomness shared by every family: torch generators in, Philox (seed, offset) out.

The kernels draw counter-based Philox numbers (csrc/include/flowfast/random.h) from a
``(seed, offset)`` pair; these helpers derive that pair from the caller's ``torch.Generator`` so
results are reproducible from the generator state, on CPU and CUDA alike.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["check_generator", "draw_seed", "generator_device"]


def check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def generator_device(generator: Optional[torch.Generator]) -> torch.device:
    """Where draws from ``generator`` are made (torch's default CPU generator when None)."""
    return generator.device if generator is not None else torch.device("cpu")


def draw_seed(generator: Optional[torch.Generator], count: int = 1) -> tuple[int, int]:
    """(seed, offset) for the Philox kernels from a torch generator (torch's CPU RNG if None).
    ``count``: how many consecutive offsets (offset, offset + 1, ...) the caller will use; a CUDA
    generator is advanced past all of them, so the next draw does not repeat their streams.

    CPU generators are sampled (a host-side draw, no device involved); CUDA generators (Philox
    themselves) lend their seed and current offset, which is then advanced: no device-to-host
    read, so a training step does not sync."""
    if generator is not None and generator.device.type == "cuda":
        offset = generator.get_offset()
        generator.set_offset(offset + 4 * max(1, -(-count // 4)))  # torch wants multiples of 4
        return generator.initial_seed(), offset
    words = torch.randint(0, 2**62, (2,), generator=generator, dtype=torch.int64).tolist()
    return words[0], words[1]
