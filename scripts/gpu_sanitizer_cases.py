"""One small call of every CUDA kernel family, for compute-sanitizer (memcheck, racecheck) in
`make gpu-check`. Each call is checked against the CPU kernels, so a wrong value fails too."""

from __future__ import annotations

import sys

import torch

import flowfast
from flowfast.ops import dfm, interpolant, simplex, sinkhorn


def main() -> int:
    assert flowfast.cuda_available(), "no usable CUDA device for flowfast"
    g = torch.Generator().manual_seed(0)
    failures = []

    def check(name, got, want, **tol):
        try:
            torch.testing.assert_close(got.cpu(), want, **tol)
        except AssertionError as e:
            failures.append(f"{name}: {e}")

    for n, m in [(40, 40), (33, 200), (5, 600)]:  # auction path, rectangular, 1024-thread block
        cost = torch.rand(3, n, m, generator=g, dtype=torch.float64)
        want = flowfast.linear_assignment(cost)
        got = flowfast.linear_assignment(cost.cuda())
        check(f"assignment {n}x{m}", got, want, rtol=0, atol=0)

    for kind in ("dense", "cloud"):
        B, n, m, d = 2, 300, 130, 40
        if kind == "dense":
            geo = (torch.rand(B, n, m, generator=g, dtype=torch.float64), None, None)
        else:
            geo = (None, torch.randn(B, n, d, generator=g, dtype=torch.float64) / 4,
                   torch.randn(B, m, d, generator=g, dtype=torch.float64) / 4)
        la = torch.full((B, n), -torch.log(torch.tensor(float(n))), dtype=torch.float64)
        lb = torch.full((B, m), -torch.log(torch.tensor(float(m))), dtype=torch.float64)
        args = (la, lb, torch.zeros(B, n, dtype=torch.float64), torch.zeros(B, m, dtype=torch.float64),
                0.05, 0.8, 0.5, 0.0, 12, 4, 0.0)
        cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
        want = sinkhorn.sinkhorn_solve(*geo, *args)
        got = sinkhorn.sinkhorn_solve(*map(cuda, geo), *map(lambda a: cuda(a) if torch.is_tensor(a) else a, args))
        check(f"sinkhorn {kind} f", got[0], want[0], rtol=0, atol=1e-9)
        f, gg = want[0], want[1]
        check(f"sinkhorn {kind} plan", sinkhorn.sinkhorn_plan(*map(cuda, geo), la.cuda(), lb.cuda(), f.cuda(), gg.cuda(), 0.05),
              sinkhorn.sinkhorn_plan(*geo, la, lb, f, gg, 0.05), rtol=1e-9, atol=1e-12)
        check(f"sinkhorn {kind} sample",
              sinkhorn.sinkhorn_sample(*map(cuda, geo), la.cuda(), lb.cuda(), gg.cuda(), 0.05, 3, 4),
              sinkhorn.sinkhorn_sample(*geo, la, lb, gg, 0.05, 3, 4), rtol=0, atol=0)

    for dtype in (torch.float32, torch.float16):
        x0, x1 = (torch.randn(257, 3, generator=g).to(dtype) for _ in range(2))
        t = torch.rand(257, generator=g).to(dtype)
        v = torch.randn(257, 3, generator=g).to(dtype)
        want = interpolant.interpolant_sample(x0, x1, t, None, 1, 0.3, 5, 6, True)[0]
        got = interpolant.interpolant_sample(x0.cuda(), x1.cuda(), t.cuda(), None, 1, 0.3, 5, 6, True)[0]
        check(f"interpolant sample {dtype}", got, want, rtol=2e-3, atol=2e-3)
        want = interpolant.interpolant_loss(v, x0, x1, t, None, None, 1, 0.3, 5, 6)
        got = interpolant.interpolant_loss(v.cuda(), x0.cuda(), x1.cuda(), t.cuda(), None, None, 1, 0.3, 5, 6)
        check(f"interpolant loss {dtype}", got, want, rtol=2e-3, atol=2e-3)

    for V in (7, 300, 5000):  # the three row layouts: 4 lanes, a warp, the block
        z, zdot, target, x = (torch.randn(3, 5, V, generator=g) for _ in range(4))
        s = torch.rand(3, generator=g) * 0.5
        t = s + 0.3
        want = simplex.flow_map_step(z, x, 0.4, return_argmax=True, return_log_probs=True)
        got = simplex.flow_map_step(z.cuda(), x.cuda(), 0.4, return_argmax=True, return_log_probs=True)
        for name, a, b in zip(("x", "argmax", "log_probs"), got, want):
            check(f"simplex step V={V} {name}", a, b, rtol=1e-5, atol=1e-5)
        for kind in ("ecld", "csd"):
            grads = []
            for dev in ("cpu", "cuda"):
                zz, zd = z.to(dev).requires_grad_(), zdot.to(dev).requires_grad_()
                loss = simplex.distill_loss(kind, zz, zd, target.to(dev), s.to(dev), t.to(dev), x=x.to(dev))
                grads.append([loss.detach().cpu(), *[a.cpu() for a in torch.autograd.grad(loss.sum(), [zz, zd])]])
            for name, a, b in zip(("loss", "grad_z", "grad_zdot"), grads[1], grads[0]):
                check(f"simplex {kind} V={V} {name}", a, b, rtol=1e-4, atol=1e-4)

    for D, V, N in [(32, 4, 200), (1500, 3, 70), (784, 2, 129)]:  # query tiles, token chunks, binary path
        data = torch.randint(0, V, (N, D), generator=g)
        keys = dfm.pack_tokens(data, V)
        for t in (1.0, 0.5):
            want = dfm.inversion_step(keys, data[:67], V, t, 0.1, seed=3, offset=1)
            got = dfm.inversion_step(keys.cuda(), data[:67].cuda(), V, t, 0.1, seed=3, offset=1)
            check(f"dfm pack D={D} V={V}", dfm.pack_tokens(data.cuda(), V), keys, rtol=0, atol=0)
            for name, a, b in zip(("x_new", "posterior", "best"), got, want):
                check(f"dfm step D={D} V={V} t={t} {name}", a, b, rtol=1e-6, atol=1e-6)

    torch.cuda.synchronize()
    for f in failures:
        print("FAILED", f)
    print(f"gpu_sanitizer_cases: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
