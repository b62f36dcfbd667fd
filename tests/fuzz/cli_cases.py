"""Fuzz cases of the command line, ``python -m flowfast`` (flowfast/__main__.py): hostile argument
combinations on tiny budgets, each run as its own process with a generous timeout.

A spec is ``{"op": "cli", "command": train|sample|eval|help, "mutations": [[flag, value], ...]}``:
the command's tiny base arguments (below) with the mutations applied (a value replaces the flag's
base value; ``None`` is a bare switch; ``"<drop>"`` removes the flag). Values starting with ``@``
name fixtures made in the case's own folder (``@good``: a real checkpoint, ``@garbage``,
``@truncated``, ``@file/run``: a path under a regular file, ...; see :data:`FIXTURES`).

Outcomes:
    correct    exit 0 with the expected outputs (train: its summary and checkpoint; sample: the
               file, n finite rows; eval: a finite W2; help: usage on stdout)
    error      a non-zero exit with one ``error:`` line on stderr (argparse's usage block and its
               error line count as one message) and no traceback
    wrong:...  accepted (exit 0) although an argument is invalid, missing/odd outputs, or an
               error that is not one clear line
    nonfinite  exit 0 with a NaN/Inf loss, sample or W2
    crash      a traceback on stderr, or death by a signal
    hang       no exit within the timeout
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter, defaultdict

TIMEOUT = 240.0  # a case takes a few seconds; only a real hang gets near this

TINY_TRAIN = ["--batch-size", "8", "--hidden", "8", "--depth", "1", "--no-progress", "--log-every", "1",
              "--checkpoint-every", "1"]
#: (flag, value) pairs of each command's base arguments, in order
BASE = {
    "train": [["--steps", "4"], ["--batch-size", "8"], ["--hidden", "8"], ["--depth", "1"], ["--no-progress", None],
              ["--log-every", "1"], ["--checkpoint-every", "1"], ["--out", "@fresh"]],
    "sample": [["--checkpoint", "@good"], ["--n", "4"], ["--steps", "2"], ["--out", "@fresh.pt"]],
    "eval": [["--checkpoint", "@good"], ["--n", "4"], ["--steps", "2"]],
    "help": [],
}

# Values every command must refuse (an exit 0 with one of them is wrong:accepted).
_BAD_SEEDS = ("-1", str(2**63), str(2**70), "abc", "1e3", "")
_BAD_DEVICES = ("cuda:-1", "tpu", "", "CPU", "meta", "cpu:0", "cuda:99999999999999999999", "mps", "cuda:x")


FLOW_MAP_METHODS = ("lsd", "esd", "psd", "psd-u", "fm", "distill", "lmd", "emd", "pfmm")
_BROKEN_RUNS = ("@run_garbage", "@run_empty", "@run_truncated", "@run_ckptdir", "@run_foreign")


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def invalid_arguments(command: str, mutations: list) -> list:
    """The mutations the command must refuse (an exit 0 with any of them is wrong:accepted)."""
    given = {flag: value for flag, value in mutations}
    method = given.get("--method", "cfm")
    bad = []
    for flag, value in mutations:
        x = _num(value)
        if flag == "--seed":
            wrong = value in _BAD_SEEDS
        elif flag == "--device":
            wrong = value in _BAD_DEVICES or (value in ("cuda", "cuda:0") and not _cuda_usable())
        elif flag == "--out":
            under = isinstance(value, str) and (value.startswith("@file/") or value.startswith("/proc/"))
            if command == "sample":
                wrong = under or value in ("@dir", "/dev/full", "")
            else:
                wrong = under or value in ("@file", "/dev/full") or ("--resume" in given and value in _BROKEN_RUNS)
        elif flag == "--checkpoint":
            wrong = value != "@good"
        elif flag == "--teacher":
            wrong = value != "@good" and method in ("distill", "lmd", "emd", "pfmm")
        elif flag == "--data":
            wrong = value not in ("@data_ok", "@data_int", "@data_img", "@data_huge") or (
                value == "@data_img" and method not in FLOW_MAP_METHODS)
        elif flag in ("--steps", "--batch-size", "--lr", "--sigma", "--n", "--hidden", "--depth", "--ema-decay",
                      "--eval-n", "--task-size", "--nfm-draws") and x is None:
            wrong = True  # not a number: argparse's type
        elif flag == "--steps":
            wrong = x != int(x) or x < (0 if command == "train" else 1)
        elif flag in ("--batch-size", "--hidden", "--n", "--task-size", "--nfm-draws"):
            wrong = x < 1 or x != int(x)
        elif flag in ("--lr", "--sigma"):
            wrong = not (math.isfinite(x) and x >= 0)
        elif flag == "--ema-decay":
            wrong = not (math.isfinite(x) and x <= 1)
        elif flag in ("--depth", "--eval-n"):
            wrong = x < 0 or x != int(x)
        elif flag in ("--log-every", "--checkpoint-every"):
            wrong = x is None or x != int(x)
        elif flag in ("--method", "--path", "--source", "--target", "--coupling", "--task"):
            wrong = value == "bogus"
        else:
            wrong = False
        if wrong:
            bad.append(flag)
    return bad


_CUDA = None


def _cuda_usable() -> bool:
    global _CUDA
    if _CUDA is None:
        import flowfast

        _CUDA = bool(flowfast.cuda_available())
    return _CUDA


# --- fixtures ----------------------------------------------------------------------------------
class Fixtures:
    """The one real training run every case copies from (made once, in-process) and the per-case
    files the ``@name`` placeholders stand for."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._good = None

    def good_run(self) -> str:
        if self._good is None:
            from flowfast.__main__ import main

            run = os.path.join(self.root, "good-run")
            argv = ["train", "--steps", "2", *TINY_TRAIN, "--out", run]
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                code = main(argv)
            if code != 0 or not os.path.exists(os.path.join(run, "checkpoint.pt")):
                raise RuntimeError(f"the fixture run `python -m flowfast {' '.join(argv)}` failed ({code})")
            self._good = run
        return self._good

    def make(self, name: str, case_dir: str) -> str:
        """The path ``@name`` stands for in ``case_dir`` (made there, fresh for every case)."""
        p = lambda *parts: os.path.join(case_dir, *parts)  # noqa: E731
        good_ckpt = lambda: os.path.join(self.good_run(), "checkpoint.pt")  # noqa: E731
        if name.startswith("fresh"):  # @fresh, @fresh.pt, @fresh.npy: a path that does not exist yet
            return p("new" + name[len("fresh"):])
        if name == "good":
            os.makedirs(p("good"), exist_ok=True)
            shutil.copy(good_ckpt(), p("good", "checkpoint.pt"))
            return p("good", "checkpoint.pt")
        if name == "good_run":
            shutil.copytree(self.good_run(), p("good_run"))
            return p("good_run")
        if name in ("empty", "garbage", "truncated", "foreign", "ckptdir", "missing"):
            path = p(name + ".pt")
            self._checkpoint_like(name, path, good_ckpt)
            return path
        if name.startswith("run_"):  # a run folder whose checkpoint.pt is broken: @run_garbage, ...
            os.makedirs(p(name), exist_ok=True)
            shutil.copy(os.path.join(self.good_run(), "config.json"), p(name, "config.json"))
            self._checkpoint_like(name[4:], p(name, "checkpoint.pt"), good_ckpt)
            return p(name)
        if name == "file":
            with open(p("plain.txt"), "w") as f:
                f.write("not a folder\n")
            return p("plain.txt")
        if name == "dir":
            os.makedirs(p("adir"), exist_ok=True)
            return p("adir")
        if name.startswith("data_"):
            return self._data(name[5:], case_dir)
        raise KeyError(name)

    @staticmethod
    def _checkpoint_like(kind: str, path: str, good_ckpt) -> None:
        if kind == "empty":
            open(path, "wb").close()
        elif kind == "garbage":
            with open(path, "wb") as f:
                f.write(b"garbage\x00\xff" * 50)
        elif kind == "truncated":
            with open(good_ckpt(), "rb") as f:
                blob = f.read()
            with open(path, "wb") as f:
                f.write(blob[: len(blob) // 2])
        elif kind == "foreign":
            import torch

            torch.save({"weights": torch.zeros(3), "format": "somebody-else/1"}, path)
        elif kind == "ckptdir":
            os.makedirs(path, exist_ok=True)
        elif kind != "missing":
            raise KeyError(kind)

    @staticmethod
    def _data(kind: str, case_dir: str) -> str:
        import numpy as np

        rng = np.random.default_rng(0)
        path = os.path.join(case_dir, f"data_{kind}.npy")
        if kind == "ok":
            np.save(path, rng.normal(size=(64, 2)).astype(np.float32))
        elif kind == "nan":
            x = rng.normal(size=(64, 2)).astype(np.float32)
            x[5, 1] = np.nan
            np.save(path, x)
        elif kind == "inf":
            x = rng.normal(size=(64, 2))
            x[0, 0] = np.inf
            np.save(path, x)
        elif kind == "huge":
            np.save(path, (rng.normal(size=(64, 2)) * 1e30).astype(np.float32))
        elif kind == "empty":
            np.save(path, np.zeros((0, 2), np.float32))
        elif kind == "1d":
            np.save(path, rng.normal(size=64).astype(np.float32))
        elif kind == "int":
            np.save(path, rng.integers(0, 5, size=(64, 2)))
        elif kind == "img":
            np.save(path, rng.normal(size=(16, 1, 4, 4)).astype(np.float32))
        elif kind == "obj":
            np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        elif kind == "text":
            with open(path, "w") as f:
                f.write("1,2\n3,4\n")
        elif kind == "missing":
            pass
        else:
            raise KeyError(kind)
        return path


def argv_of(spec: dict) -> list:
    """The argument list with ``@`` placeholders (before fixtures are made)."""
    flags = [list(pair) for pair in BASE[spec["command"]]]
    for flag, value in spec["mutations"]:
        for pair in flags:
            if pair[0] == flag:
                pair[1] = value
                break
        else:
            flags.append([flag, value])
    argv = [] if spec["command"] == "help" else [spec["command"]]
    for flag, value in flags:
        if value == "<drop>":
            continue
        if flag.startswith("<positional>"):
            argv.append(value)
            continue
        argv.append(flag)
        if value is not None:
            argv.append(value)
    return argv


def _resolve(argv: list, fixtures: Fixtures, case_dir: str) -> list:
    out = []
    for token in argv:
        if isinstance(token, str) and token.startswith("@"):
            name, _, rest = token[1:].partition("/")
            path = fixtures.make(name, case_dir)
            token = os.path.join(path, rest) if rest else path
        out.append(token)
    return out


def describe(spec: dict) -> str:
    """A one-line reproduction (fixtures named by their placeholder)."""
    return "python -m flowfast " + " ".join(repr(t) if t == "" or " " in str(t) else str(t) for t in argv_of(spec))


# --- classification ----------------------------------------------------------------------------
def _clear_error(stderr: str) -> bool:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not lines or "Traceback" in stderr:
        return False
    if len(lines) == 1:
        return "error:" in lines[0]
    # argparse: the usage block, then one "prog: error: ..." line
    return lines[0].startswith("usage:") and ": error:" in lines[-1] and \
        sum(": error:" in ln for ln in lines) == 1


def _finite_json(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _expected_outputs(spec: dict, argv: list, stdout: str, case_dir: str) -> str:
    command = spec["command"]
    if command == "help":
        if argv == ["info"]:
            try:
                return "correct" if "flowfast" in json.loads(stdout) else "wrong:info"
            except ValueError:
                return "wrong:info"
        return "correct" if "usage:" in stdout else "wrong:no-usage"
    try:
        summary = json.loads([ln for ln in stdout.splitlines() if ln.strip()][-1])
    except (IndexError, ValueError):
        return "wrong:no-json"
    if command == "train":
        steps = int(float(_flag(argv, "--steps", "20000")))
        if not isinstance(summary.get("step"), int) or summary["step"] < max(steps, 0):
            return "wrong:steps"
        if summary.get("steps_run"):
            if not _finite_json(summary.get("last_loss")):
                return "nonfinite"
            if not summary.get("checkpoint") or not os.path.isfile(summary["checkpoint"]):
                return "wrong:no-checkpoint"
        if "eval" in summary and not _finite_json(summary["eval"].get("w2")):
            return "nonfinite"
        return "correct"
    if command == "sample":
        out = _flag(argv, "--out", "samples.pt")
        path = out if os.path.isabs(out) else os.path.join(case_dir, out)
        if not os.path.isfile(path):
            return "wrong:no-output"
        import numpy as np
        import torch

        try:
            x = np.load(path) if out.endswith(".npy") else torch.load(path, weights_only=True).numpy()
        except Exception:  # noqa: BLE001 - an unreadable output file is the finding
            return "wrong:unreadable-output"
        n = int(_flag(argv, "--n", "1000"))
        if x.shape[0] != n or list(x.shape) != summary.get("shape"):
            return "wrong:shape"
        return "correct" if np.isfinite(x.astype(np.float64)).all() else "nonfinite"
    # eval
    return "correct" if _finite_json(summary.get("w2")) else "nonfinite"


def _flag(argv: list, flag: str, default: str) -> str:
    value = default
    for i, token in enumerate(argv[:-1]):
        if token == flag:
            value = argv[i + 1]
    return value


def classify(spec: dict, argv: list, rc, stdout: str, stderr: str, case_dir: str) -> str:
    if rc is None:
        return "hang"
    if rc < 0:
        return f"crash:signal{-rc}"
    if "Traceback" in stderr:
        return "crash:traceback"
    if rc != 0:
        return "error" if _clear_error(stderr) else "wrong:message"
    if invalid_arguments(spec["command"], spec["mutations"]):
        return "wrong:accepted"
    return _expected_outputs(spec, argv, stdout, case_dir)


def run_case(spec: dict, fixtures: Fixtures, case_dir: str, timeout: float = TIMEOUT) -> tuple[str, str]:
    """(outcome, stderr tail) of one spec, run as ``python -m flowfast ...`` in ``case_dir``."""
    os.makedirs(case_dir, exist_ok=True)
    argv = _resolve(argv_of(spec), fixtures, case_dir)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.Popen([sys.executable, "-m", "flowfast", *argv], cwd=case_dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        rc = None
    return classify(spec, argv, rc, stdout, stderr, case_dir), stderr.strip()[-300:]


def run_all(specs: list, root: str, timeout: float = TIMEOUT) -> tuple[dict, list]:
    """(counts per command and outcome, [(outcome, reproduction, stderr tail)] of the failures)."""
    fixtures = Fixtures(root)
    counts: dict = defaultdict(Counter)
    bad = []
    for i, spec in enumerate(specs):
        outcome, tail = run_case(spec, fixtures, os.path.join(root, f"case{i:04d}"), timeout)
        counts[f"cli {spec['command']}"][outcome.split(":")[0]] += 1
        if outcome not in ("correct", "error"):
            bad.append((outcome, describe(spec), tail))
    return {op: dict(c) for op, c in counts.items()}, bad
