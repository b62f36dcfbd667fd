"""Ctrl-C stops long kernels (issue 24): a SIGINT during a long Sinkhorn or assignment solve
raises KeyboardInterrupt in the caller instead of being ignored until the kernel ends. Each case
runs in a child process whose uninterrupted run would take far longer than the generous wait; the
assertion is on the outcome (interrupted, not finished), never on a duration."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys, torch, flowfast
    torch.manual_seed(0)
    {setup}
    print("started", flush=True)
    try:
        {call}
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")

CASES = {
    "sinkhorn-clouds": ("x, y = torch.randn(20000, 2), torch.randn(20000, 2)",
                        "flowfast.sinkhorn(x=x, y=y, eps=1e-3, tol=0.0, max_iter=10**6)"),
    "sinkhorn-dense": ("C = torch.rand(3000, 3000)",
                       "flowfast.sinkhorn(C, eps=1e-4, tol=0.0, max_iter=10**7, eps_scaling=False)"),
    "assignment": ("C = torch.rand(12000, 12000)", "flowfast.linear_assignment(C)"),
}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("case", sorted(CASES))
def test_sigint_interrupts_a_long_kernel(case):
    setup, call = CASES[case]
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(setup=setup, call=call)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        # Let the call enter the kernel (an interrupt before it is a KeyboardInterrupt as well).
        try:
            child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert out.strip() == "interrupted", (out, err[-2000:])
