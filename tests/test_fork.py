"""Forked workers after the parent used OpenMP (issue 24): with GNU OpenMP a forked child's next
parallel region used to wait forever for threads that do not exist in it. Each case runs in a
child process so a hang is a failure (the generous timeout is a hang detector, not a timing)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import torch, flowfast
    from flowfast.couplings import pair

    def assign(seed):
        C = torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(seed))
        return sorted(flowfast.linear_assignment(C)[0].tolist()) == list(range(64))

    def entropic(seed):
        C = torch.rand(300, 300, generator=torch.Generator().manual_seed(seed))
        return float(flowfast.sinkhorn(C, eps=0.05).marginal_error) < 1e-4

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, k):
            g = torch.Generator().manual_seed(k)
            x0, x1, _ = pair(torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g))
            return x1

    if __name__ == "__main__":
        # the parent's OpenMP team exists now (batched assignment, dense Sinkhorn)
        flowfast.linear_assignment(torch.rand(4, 64, 64))
        flowfast.sinkhorn(torch.rand(300, 300), eps=0.05)
        with mp.get_context("fork").Pool(2) as pool:
            assert all(pool.map(assign, range(4)))
            assert all(pool.map(entropic, range(4)))
        loader = torch.utils.data.DataLoader(Pairs(), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork")
        assert sum(batch.shape[0] for batch in loader) == 4
        print("ok", flush=True)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_workers_run_the_kernels_after_the_parent_used_openmp():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.stdout, done.stderr[-2000:])
