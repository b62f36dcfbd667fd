#!/usr/bin/env python
"""Flow-map training steps against the plain flow-matching step on the same net and batch.

One optimizer step (loss, backward, Adam) of each objective on a ``FlowMap(FlowMapMLP)``:
``fm`` (the diagonal only: one forward + backward, the flow-matching baseline), ``lsd`` (75% of the
rows on the diagonal, the rest one forward-mode JVP in t plus one no-grad teacher evaluation),
``esd`` (an augmented JVP in (s, x)), ``psd`` (three evaluations, two without grad). Reported: the
median step time and the ratio to ``fm``. Then the profile of one LSD step split into its parts
(diagonal term, JVP forward, teacher, backward), and LSD under ``torch.compile``: each backend is
tried and a failure is reported as such (not hidden), with the first call's compile time.

The peer comparison (rectified-flow-pytorch's MeanFlow / LsdFlow, W2 and step time) is
``benchmarks/bench_flowmap_peer.py``.

    python benchmarks/bench_flowmaps.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from flowfast import flowmaps  # noqa: E402
from flowfast.flowmaps.derivatives import time_derivative  # noqa: E402
from flowfast.flowmaps.objective import per_sample_mse  # noqa: E402
from flowfast.models import FlowMapMLP  # noqa: E402

OBJECTIVES = {"fm": flowmaps.FlowMatchingDiagonal, "lsd": flowmaps.LSD, "esd": flowmaps.ESD, "psd": flowmaps.PSD}


def make_step(objective, flow_map, x0, x1, seed=0):
    optimizer = torch.optim.Adam(flow_map.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(seed)

    def step():
        loss = objective.loss(flow_map, x0, x1, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def lsd_parts(flow_map, x0, x1, timing):
    """Time the pieces of an LSD step on its own rows: 3/4 diagonal, 1/4 off-diagonal."""
    n = x0.shape[0]
    m = n // 4
    g = torch.Generator().manual_seed(0)
    t_diag = torch.rand(n - m, generator=g)
    s_off, t_off = torch.rand(m, generator=g) * 0.5, 0.5 + torch.rand(m, generator=g) * 0.5
    xs = (1 - s_off[:, None]) * x0[:m] + s_off[:, None] * x1[:m]
    xt = (1 - t_diag[:, None]) * x0[m:] + t_diag[:, None] * x1[m:]

    def diagonal():
        per_sample_mse(flow_map.v(xt, t_diag, t_diag), x1[m:] - x0[m:]).mean().backward()

    def jvp_forward():
        time_derivative(flow_map, xs, s_off, t_off)

    landing = time_derivative(flow_map, xs, s_off, t_off)[0].detach()

    def teacher():
        with torch.no_grad():
            flow_map.velocity(landing, t_off)

    def jvp_forward_backward():
        landing_, rate = time_derivative(flow_map, xs, s_off, t_off)
        rate.square().mean().backward()

    return {name: timing(fn) for name, fn in (("diagonal fwd+bwd (3/4 rows)", diagonal),
                                              ("JVP forward (1/4 rows)", jvp_forward),
                                              ("teacher no-grad (1/4 rows)", teacher),
                                              ("JVP fwd+bwd (1/4 rows)", jvp_forward_backward))}


def compiled_lsd(flow_map, x0, x1, backend):
    """An LSD step with the loss under torch.compile(backend); returns (step, compile seconds) or raises."""
    objective = flowmaps.LSD()
    generator = torch.Generator().manual_seed(0)
    loss_fn = torch.compile(lambda a, b: objective.loss(flow_map, a, b, generator), backend=backend)
    optimizer = torch.optim.Adam(flow_map.parameters(), lr=1e-4)

    def step():
        loss = loss_fn(x0, x1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


def compile_probe(backend, batch, width, min_time, max_time) -> dict:
    """Time a compiled LSD step in a child process: a failed compile can leave torch's forward-AD
    state entered (every later JVP in the process then fails), so it must not share ours."""
    import json
    import subprocess

    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import bench_flowmaps as b; print(json.dumps(b.probe({backend!r}, {batch}, {width}, {min_time}, {max_time})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"child exited {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def probe(backend, batch, width, min_time, max_time) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x0, x1 = torch.randn(batch, 2), torch.randn(batch, 2) * 2 + 3
    flow_map = flowmaps.FlowMap(FlowMapMLP(2, hidden=width, depth=4))
    try:
        step, compile_s = compiled_lsd(flow_map, x0, x1, backend)
        return {"step_s": _timing.time_fn(step, min_time=min_time, max_time=max_time)["median_s"],
                "compile_s": compile_s}
    except Exception as exc:  # reported in the table, the eager path is what users get
        text = str(exc).strip()
        return {"error": f"{type(exc).__name__}: {text.splitlines()[-1][:160] if text else ''}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _timing.add_run_args(parser)
    parser.add_argument("--quick", action="store_true", help="one small case, short timings")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or 1)
    min_time = args.min_time or (0.2 if args.quick else 1.0)
    max_time = args.max_time or (1.0 if args.quick else 5.0)
    timing = lambda fn: _timing.time_fn(fn, min_time=min_time, max_time=max_time)["median_s"]  # noqa: E731
    cases = [(256, 128)] if args.quick else [(256, 128), (256, 512), (2048, 128), (2048, 512)]
    rows, notes, profile = [], [], []
    for batch, width in cases:
        torch.manual_seed(0)
        x0, x1 = torch.randn(batch, 2), torch.randn(batch, 2) * 2 + 3
        times = {}
        for name, cls in OBJECTIVES.items():
            torch.manual_seed(0)
            flow_map = flowmaps.FlowMap(FlowMapMLP(2, hidden=width, depth=4))
            times[name] = timing(make_step(cls(), flow_map, x0, x1))
        row = {"batch": batch, "net": f"FlowMapMLP 4x{width}"}
        for name, seconds in times.items():
            row[f"{name} step"] = _timing.fmt_ms(seconds)
            if name != "fm":
                row[f"{name} / fm"] = round(seconds / times["fm"], 2)
        for backend in ("aot_eager", "inductor"):
            probe = compile_probe(backend, batch, width, min_time, max_time)
            if "step_s" in probe:
                row[f"lsd compiled ({backend})"] = _timing.fmt_ms(probe["step_s"])
                row[f"eager / compiled ({backend})"] = round(times["lsd"] / probe["step_s"], 2)
                notes.append(f"torch.compile(backend={backend!r}) of the LSD loss, batch {batch}, width {width}: "
                             f"first call {probe['compile_s']:.1f} s")
            else:
                row[f"lsd compiled ({backend})"] = "fails"
                notes.append(f"torch.compile(backend={backend!r}) of the LSD loss fails on torch "
                             f"{torch.__version__}: {probe['error']}")
        rows.append(row)
        torch.manual_seed(0)
        parts = lsd_parts(flowmaps.FlowMap(FlowMapMLP(2, hidden=width, depth=4)), x0, x1, timing)
        profile.append({"batch": batch, "net": f"FlowMapMLP 4x{width}", "lsd step": _timing.fmt_ms(times["lsd"]),
                        **{k: _timing.fmt_ms(v) for k, v in parts.items()}})
    notes.append("LSD step profile (same cases): " + "; ".join(
        f"B={p['batch']} {p['net']}: " + ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("batch", "net"))
        for p in profile))
    notes.append("the JVP's tangent is seeded only in t, so the time embedding is a small part of it: the forward-mode "
                 "cost is the tangent riding through every hidden layer; see the profile for where an LSD step goes")
    family = "flowmaps" + ("-quick" if args.quick else "")
    _timing.write_results(family, rows, _timing.environment("cpu"), args.out, notes=notes, extra={"profile": profile})
    return 0


if __name__ == "__main__":
    sys.exit(main())
