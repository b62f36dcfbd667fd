"""Runs fuzz cases in a supervised child process: a crash (the child dies) or a hang (no answer
within the timeout) is an outcome of the case, never of the test process. The child is reused
across cases (importing torch costs seconds) and restarted after a crash or hang.

    python tests/fuzz/harness.py --worker     the child: JSON spec per stdin line -> outcome per line
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))


class Supervisor:
    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.child = None

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.child = subprocess.Popen([sys.executable, os.path.join(HERE, "harness.py"), "--worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, bufsize=1, env=env)

    def _stop(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.wait()
            self._close_pipes()
            self.child = None

    def _close_pipes(self) -> None:
        for pipe in (self.child.stdin, self.child.stdout):
            try:
                pipe.close()
            except OSError:  # the child died with data in the pipe
                pass

    def run(self, spec: dict) -> str:
        if self.child is None or self.child.poll() is not None:
            self._start()
        self.child.stdin.write(json.dumps(spec) + "\n")
        self.child.stdin.flush()
        ready, _, _ = select.select([self.child.stdout], [], [], self.timeout)
        if not ready:
            self._stop()
            return "hang"
        line = self.child.stdout.readline()
        if not line:
            self._stop()
            return "crash"
        return json.loads(line)["outcome"]

    def close(self) -> None:
        if self.child is not None:
            try:
                self.child.stdin.close()
                self.child.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.child.kill()
                self.child.wait()
            self._close_pipes()
            self.child = None


def run_all(specs: list[dict], timeout: float = 60.0) -> tuple[dict, list]:
    """(counts per op and outcome, the specs whose outcome is not correct / error)."""
    counts: dict = defaultdict(Counter)
    bad = []
    supervisor = Supervisor(timeout)
    try:
        for spec in specs:
            outcome = supervisor.run(spec)
            counts[spec["op"]][outcome.split(":")[0]] += 1
            if outcome not in ("correct", "error"):
                bad.append((outcome, spec))
    finally:
        supervisor.close()
    return {op: dict(c) for op, c in counts.items()}, bad


def _worker() -> None:
    sys.path.insert(0, HERE)
    import warnings

    from cases import run_case

    warnings.simplefilter("ignore")
    for line in sys.stdin:
        outcome = run_case(json.loads(line))
        sys.stdout.write(json.dumps({"outcome": outcome}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
