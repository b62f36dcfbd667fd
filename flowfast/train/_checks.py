"""The Trainer's argument checks, one message style: ``<name> must be ..., got <value>``."""

from __future__ import annotations


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_options(*, batch_size, log_every, checkpoint_every, out_dir, ema_decay, seed, grad_clip=None,
                  warmup_steps=0) -> None:
    check_int("batch_size", batch_size, 1)
    check_int("log_every", log_every, 1)
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every, 1)
        if out_dir is None:
            raise ValueError("checkpoint_every needs out_dir")
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0.0 <= ema_decay < 1.0):
        raise ValueError(f"ema_decay must be None or a number in [0, 1), got {ema_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or not (grad_clip > 0 and grad_clip < float("inf"))):
        raise ValueError(f"grad_clip must be None or a finite number > 0, got {grad_clip!r}")
    check_int("warmup_steps", warmup_steps, 0)
