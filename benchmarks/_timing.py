"""Shared benchmark harness: timing, environment capture and result files.

Used by every ``benchmarks/bench_<family>.py``. Timing follows the usual recipe: warm up, then time
each repeat on its own and report the median. On a CUDA device each repeat is bracketed by CUDA
events (after a ``torch.cuda.synchronize()``), so queued GPU work is included; on the CPU it is
``time.perf_counter()`` around the call. The repeat count adapts to the cost of a call: small cases
get many repeats, big ones few, and every case has a cap on the total time it may spend.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as _metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = ["time_fn", "environment", "device_slug", "write_results", "markdown_table", "fmt_ms", "fmt_ratio", "is_oom",
           "free_memory", "short_error"]

# Distribution names (as pip knows them) of the libraries whose versions go into every result file.
PEERS = {"numpy": "numpy", "scipy": "scipy", "pot": "POT", "lap": "lap", "torchcfm": "torchcfm"}
NOT_INSTALLED = "not installed"


def time_fn(
    fn: Callable[[], Any],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int | None = None,
    min_time: float = 0.5,
    max_time: float = 10.0,
    min_repeats: int = 3,
    max_repeats: int = 200,
) -> dict:
    """Time ``fn()`` (no arguments; its result is discarded).

    Args:
        fn: the call to time. Inputs must be prepared outside it.
        device: ``"cpu"`` (host clock) or a CUDA device (CUDA events, synchronized before each repeat).
        warmup: untimed calls first (the first one pays one-time costs). The remaining warmup
            calls are skipped once one warmup call alone took ``min_time`` or more.
        repeats: exact number of timed calls; ``None`` (default) adapts: repeat until ``min_time``
            seconds are spent and at least ``min_repeats`` calls are made, stopping at
            ``max_repeats`` calls or once ``max_time`` seconds are spent (at least one call).
        min_time, max_time, min_repeats, max_repeats: the adaptive policy above.

    Returns:
        ``dict(median_s, min_s, max_s, repeats)``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        stream_device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())

        def once() -> float:
            torch.cuda.synchronize(stream_device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

    else:

        def once() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    for _ in range(warmup):
        if once() >= min_time:  # slow calls: one untimed call is warm enough
            break
    times: list[float] = []
    if repeats is not None:
        times = [once() for _ in range(max(1, int(repeats)))]
    else:
        total = 0.0
        while True:
            t = once()
            times.append(t)
            total += t
            k = len(times)
            if k >= max_repeats or total >= max_time:
                break
            if k >= min_repeats and total >= min_time:
                break
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: str | torch.device, name: str) -> str:
    """``cpu-amd-epyc``, ``cuda-h100``, ``cuda-rtx-4090``: short, file-name safe."""
    if torch.device(device).type == "cuda":
        words = [w for w in _slug(name).split("-") if w]
        drop = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon"}
        keep = []
        for w in words:
            if w in drop:
                continue
            # Memory size / packaging tokens end the model name: "80gb", "hbm3", "sxm5", "pcie", "nvl".
            if re.fullmatch(r"\d+gb|hbm\d*e?|sxm\d*|pcie|nvl|mig", w):
                break
            keep.append(w)
        return "cuda-" + ("-".join(keep) or "gpu")
    text = re.sub(r"\((r|tm)\)", "", name, flags=re.IGNORECASE)
    text = re.sub(r"@.*$", "", text)
    words = [w for w in _slug(text).split("-") if w and w not in {"cpu", "processor"}]
    return "cpu-" + ("-".join(words[:5]) or "unknown")


def _version(dist: str) -> str:
    try:
        return _metadata.version(dist)
    except _metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _extension_fingerprint() -> dict | None:
    """Which compiled flowfast._C was timed (file, sha256 prefix, mtime): tells rebuilds apart."""
    try:
        from flowfast import _C

        path = Path(_C.__file__)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        mtime = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).replace(microsecond=0)
        return {"file": path.name, "sha256_12": digest, "mtime_utc": mtime.isoformat()}
    except (ImportError, OSError, AttributeError, TypeError):
        return None


def environment(device: str | torch.device = "cpu") -> dict:
    """Where a benchmark ran: device, threads, library versions, flowfast build, date (UTC)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        cap = torch.cuda.get_device_capability(dev)
        extra = {"cuda_capability": f"{cap[0]}.{cap[1]}", "torch_cuda": torch.version.cuda}
    else:
        name = _cpu_model()
        extra = {}
    try:
        import flowfast

        build = flowfast.build_info()
        ff_version = flowfast.__version__
        ext = _extension_fingerprint()
    except ImportError as exc:  # report, don't crash: the bench scripts check flowfast themselves
        build = {"error": str(exc)}
        ff_version = NOT_INSTALLED
        ext = None
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    return {
        "device": str(dev),
        "device_name": name,
        "device_slug": device_slug(dev, name),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        # Other processes on the machine skew timings (multi-threaded torch ops most): record it.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        **extra,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "versions": {key: _version(dist) for key, dist in PEERS.items()},
        "flowfast": ff_version,
        "flowfast_build": build,
        "flowfast_extension": ext,
        "date_utc": now.isoformat(),
        "argv": list(sys.argv),
    }


def fmt_ms(seconds: float | None) -> str:
    """Seconds -> milliseconds with 3 significant-ish digits."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "—"
    return f"{r:.2f}x"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Rows (dicts) -> a GitHub markdown table; columns default to the keys in first-seen order."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _env_header(env: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    build = env.get("flowfast_build", {})
    build_s = ", ".join(f"{k}={v}" for k, v in build.items())
    threads = f"{env.get('cpu_count')} CPU threads (torch uses {env.get('torch_threads')})"
    lines = [
        f"- device: `{env.get('device')}` — {env.get('device_name')}"
        + (f" (compute capability {env['cuda_capability']}, CUDA {env.get('torch_cuda')})" if "cuda_capability" in env else ""),
        f"- host: {env.get('cpu_model')}, {threads}, OMP_NUM_THREADS={env.get('omp_num_threads')}, "
        f"load average {env.get('loadavg_1m')} at start, {env.get('loadavg_1m_end')} at end",
        f"- python {env.get('python')}, torch {env.get('torch')}, {versions}",
        f"- flowfast {env.get('flowfast')} ({build_s}; extension sha256 "
        f"{(env.get('flowfast_extension') or {}).get('sha256_12', '?')})",
        f"- date (UTC): {env.get('date_utc')}",
    ]
    return "\n".join(lines)


def write_results(
    family: str,
    rows: Sequence[dict],
    env: dict,
    out_dir: str | os.PathLike = "benchmarks/results",
    *,
    columns: Sequence[str] | None = None,
    notes: Iterable[str] = (),
    extra: dict | None = None,
    title: str | None = None,
) -> dict:
    """Write ``<family>-<device-slug>-<YYYY-MM-DD>.json`` and ``.md`` and print the markdown.

    Args:
        family: benchmark family (``"assignment"``).
        rows: one flat dict per case (the table rows; also stored verbatim in the JSON).
        env: :func:`environment` of the device the rows were measured on.
        out_dir: created if missing.
        columns: table columns (default: row keys in first-seen order).
        notes: bullet lines printed under the table and stored in the JSON.
        extra: more JSON-serializable data for the JSON file only (e.g. raw timings).
        title: markdown heading (default: family and device).

    Returns:
        ``dict(json=Path, md=Path, markdown=str)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        env = {**env, "loadavg_1m_end": round(os.getloadavg()[0], 2)}
    date = str(env.get("date_utc", ""))[:10] or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    stem = f"{family}-{env.get('device_slug', 'unknown')}-{date}"
    notes = list(notes)
    heading = title or f"{family} — {env.get('device_name', env.get('device'))}"
    md = [f"### {heading}", "", _env_header(env), "", markdown_table(rows, columns)]
    if notes:
        md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    markdown = "\n".join(md) + "\n"
    payload = {"family": family, "env": env, "columns": list(columns) if columns else None, "rows": list(rows), "notes": notes}
    if extra:
        payload["extra"] = extra
    json_path = out / f"{stem}.json"
    md_path = out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return {"json": json_path, "md": md_path, "markdown": markdown}


# Loaders of the peers several scripts time (for import_optional); script-specific ones stay there.
def load_scipy_lsa():
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment


def load_lap():
    import lap

    return lap


def load_pot():
    import ot

    return ot


def load_torchcfm_plan_sampler():
    from torchcfm.optimal_transport import OTPlanSampler

    return OTPlanSampler


def load_torchcfm_matchers():
    import torchcfm.conditional_flow_matching as cfm

    return cfm


RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_run_args(p, *, timing: bool = True, tag_prefix: str | None = None) -> None:
    """The flags the benchmark scripts share: --min-time / --max-time (scripts that time with
    :func:`time_fn`), --threads, --tag (scripts that name their files with it) and --out."""
    if timing:
        p.add_argument("--min-time", type=float, default=None, help="seconds of timed repeats per method and case")
        p.add_argument("--max-time", type=float, default=None, help="cap on timed seconds per method and case")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) first (default: torch's default; recorded in the results)")
    if tag_prefix:
        p.add_argument("--tag", default=None,
                       help=f"appended to the result file names ({tag_prefix}-TAG-…), e.g. to split a long run")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results directory")


def import_optional(loaders: dict) -> tuple[dict, dict]:
    """Run every ``name -> loader()``; a peer that fails to import is reported, never a crash.

    Returns ``(modules, why_missing)``: the loaded objects, and for each failed name a short
    reason ("not installed (...)" for an ImportError, "import failed (...)" for a broken install).
    Import-time warnings of peers are silenced so they cannot break a run under -W error.
    """
    import warnings

    mods, why = {}, {}
    for key, load in loaders.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mods[key] = load()
        except ImportError as exc:
            why[key] = f"not installed ({exc.__class__.__name__}: {exc})"
        except Exception as exc:  # a broken install: report it, keep benchmarking the others
            why[key] = f"import failed ({exc.__class__.__name__}: {exc})"
    return mods, why


def resolve_devices(script: str, requested: str):
    """Devices a benchmark runs on: "cpu", "cuda" or "all" (CPU, plus CUDA when flowfast can use it).

    Returns the list, or None (after a message) when CUDA was asked for explicitly but flowfast
    cannot use it; scripts then exit with status 2."""
    import sys

    import flowfast
    import torch

    cuda_ok = flowfast.cuda_available()
    if requested == "cuda" and not cuda_ok:
        print(f"{script}: --device cuda but flowfast.cuda_available() is False "
              f"(torch.cuda.is_available()={torch.cuda.is_available()}, build={flowfast.build_info()})",
              file=sys.stderr)
        return None
    devices = ["cpu", "cuda"] if requested == "all" else [requested]
    if "cuda" in devices and not cuda_ok:
        devices.remove("cuda")
        print(f"{script}: no usable CUDA for flowfast; CPU only", file=sys.stderr)
    return devices


# ---------------------------------------------------------------- out of memory: a status, not a crash

_OOM_TYPES = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t is not None)
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
             "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (host or device), which a benchmark records
    as the case's status instead of failing."""
    return isinstance(exc, _OOM_TYPES) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _OOM_TEXT))


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def short_error(exc: BaseException) -> str:
    """"OOM" or "failed: <Type>: <first line>" for a table cell."""
    if is_oom(exc):
        return "OOM"
    first = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
    return f"failed: {exc.__class__.__name__}" + (f": {first}" if first else "")
