"""Test helpers shared by the test suite and downstream users: devices, dtypes, tolerances."""

from __future__ import annotations

import pytest
import torch

from flowfast._backend import cuda_available

FLOAT_DTYPES = (torch.float32, torch.float64)
GRAD_DTYPES = (torch.float64,)

#: Relative tolerance on an optimal objective value, per dtype (issue #3's contract).
OBJECTIVE_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def devices() -> list:
    """pytest params: "cpu" always, "cuda" (marked ``cuda``) always listed so skips are visible."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if cuda_available() else [])


def assert_close_rel_to_ref(actual: torch.Tensor, reference64: torch.Tensor, reference_lowp: torch.Tensor,
                            factor: float = 2.0, atol: float = 0.0) -> None:
    """Low-precision check: |actual - ref64| <= factor * |ref_lowp - ref64| + atol, elementwise max.

    The kernel may be as wrong as the reference computed in the same low precision, times `factor`.
    """
    ref = reference64.to(torch.float64)
    err = (actual.to(torch.float64) - ref).abs().max().item()
    ref_err = (reference_lowp.to(torch.float64) - ref).abs().max().item()
    if err > factor * ref_err + atol:
        raise AssertionError(
            f"kernel error {err:.3e} exceeds {factor} x reference error {ref_err:.3e} (+ atol {atol:.1e})"
        )


#: dtypes the assignment and Sinkhorn kernels reject (they take float32 / float64 only).
NON_KERNEL_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.float16,
                     torch.bfloat16, torch.complex64, torch.complex128)

#: Values that every bad-input test plants somewhere in an otherwise valid tensor.
NON_FINITE = (float("nan"), float("inf"), float("-inf"))


def raises_naming(exc: type, *names: str):
    """``pytest.raises(exc)`` whose message must mention every one of ``names`` (literal substrings):
    a bad-input error has to say which argument was wrong."""
    import re

    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(n)})" for n in names))


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A CLI failure as users should see it: exit code 2, one ``error:`` line naming each needle, no traceback."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def bad_input_settings(max_examples: int):
    """hypothesis settings for the bad-input suites: reproducible (derandomized), no deadline."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class HostReads:
    """Counts the reads of tensor values by the host (``bool(t)``, ``float(t)``, ``int(t)``,
    ``t.item()``, ``t.tolist()``, ``t.numpy()``) while active: each one is a device synchronization
    when ``t`` lives on a GPU. On CPU-only machines this is how the suite measures a training step's
    CUDA syncs. ``sites`` lists ``"module:function"`` of every read, in order.
    """

    _METHODS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")
    # torch functions that return a Python value computed on the device.
    _FUNCTIONS = ("allclose", "equal")

    def __init__(self) -> None:
        self.sites: list[str] = []
        self._saved: dict = {}

    def __enter__(self) -> "HostReads":
        import sys

        for name in self._METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(t, *args, __original=original, **kwargs):
                frame = sys._getframe(1)
                self.sites.append(f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}")
                return __original(t, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        for name in self._FUNCTIONS:
            original = getattr(torch, name)
            self._saved["torch." + name] = original
            setattr(torch, name, self._counted_function(original))
        return self

    def _counted_function(self, original):
        import sys

        def counted(*args, **kwargs):
            frame = sys._getframe(1)
            self.sites.append(f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}")
            return original(*args, **kwargs)

        return counted

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            if name.startswith("torch."):
                setattr(torch, name[len("torch."):], original)
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()

    def count(self, exclude: tuple[str, ...] = ()) -> int:
        """Reads whose site starts with none of ``exclude``."""
        return sum(not s.startswith(exclude) for s in self.sites)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a local process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_gloo(worker, out_dir: str, world: int = 2, timeout: float = 600.0, attempts: int = 3) -> bool:
    """Run ``worker(rank, world, port, out_dir)`` in ``world`` processes (torch.multiprocessing.spawn)
    for a gloo process group on a free local port. Returns False if gloo is unavailable; kills the
    workers and raises TimeoutError after ``timeout`` seconds (generous: a loaded machine must not
    fail a test). A port taken by another process between the probe and the bind is retried on a
    new port, up to ``attempts`` times, and so is a run where a worker died by a signal (gloo's
    transport aborts a process whose peer closed the connection under heavy load: seen once in a
    fresh-clone CI run); a worker that raised is never retried. Results travel through files in
    ``out_dir``."""
    import sys
    import time

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        return False
    for attempt in range(attempts):
        ctx = mp.spawn(worker, args=(world, free_port(), str(out_dir)), nprocs=world, join=False)
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {world} gloo workers did not finish in {timeout:g} s")
            return True
        except mp.ProcessRaisedException as error:
            if attempt + 1 == attempts or not any(s in str(error) for s in ("Address already in use", "EADDRINUSE")):
                raise
        except mp.ProcessExitedException as error:
            if attempt + 1 == attempts or error.signal_name is None:
                raise
            # Not a warning: test runs turn warnings into errors; the retry shows in captured stderr.
            print(f"spawn_gloo: a gloo worker died ({error}); retrying on a new port", file=sys.stderr)
        finally:
            for process in ctx.processes:
                if process.is_alive():
                    process.kill()
    return True
