r"""Adapter that runs Meta's ``flow_matching`` package (PyPI ``flow-matching``) as a peer baseline
for discrete flow matching on token sequences.

The peer is CC BY-NC licensed, so it is only *imported and run* next to flowfast. None of its code
lives here: this module just builds the peer's own objects (``MixtureDiscreteProbPath`` with a
``PolynomialConvexScheduler``, ``MixturePathGeneralizedKL``, ``MixtureDiscreteEulerSolver``)
around a network that uses flowfast's convention.

Network convention (flowfast): ``net(x, s, t)``, with dense inputs ``x`` of shape (B, L, C) and
times ``s`` and ``t`` of shape (B,), returns logits (B, L, C). For the peer the net gets
``one_hot(x_t, C).float()`` and ``s = t =`` the peer's time, so both libraries train the same
network class and size. ``C`` is ``vocab`` for the uniform source and ``vocab + 1`` for the mask
source (the extra channel is the mask token id ``vocab``).

What the peer expects from the model (read from flow_matching 1.0.10):

- ``MixturePathGeneralizedKL.forward(logits, x_1, x_t, t)`` takes **logits** (B, L, C); it applies
  ``log_softmax`` itself.
- ``MixtureDiscreteEulerSolver`` calls ``model(x=x_t, t=t_vec)`` (keyword arguments, ``x_t`` long
  (B, L), ``t_vec`` float32 (B,)) and samples ``x_1`` with ``torch.multinomial``: the model must
  return **probabilities** (non-negative, last dim C), not logits.
- The peer's sampling uses the global torch RNG (``torch.rand`` and ``torch.multinomial`` without a
  generator), both in ``path.sample`` and in the solver. To keep runs reproducible from a
  ``torch.Generator`` without touching the caller's global RNG state, each peer call here runs
  under ``torch.random.fork_rng`` with the global generator seeded from a draw of ``generator``.

Step count: with ``step_size=h`` the solver makes ``ceil((t1 - t0) / h)`` steps on the grid
``[0, h, 2h, ...] + [1]``. Two traps: it asserts ``t1 - t0 > h`` (so ``h = 1``, one step, is
refused), and ``ceil(1 / (1 / n))`` is ``n + 1`` for some n (49, 98, 103, ...).
:meth:`PeerDiscreteFM.sample` uses ``step_size = 1 / steps`` whenever that gives exactly ``steps``
steps, and otherwise the same uniform grid through ``time_grid`` with ``step_size=None``. Both run
the same solver loop, so the result is one network evaluation per step either way. The last step
is the peer's own: instead of a jump it sets ``x = x_1 ~ p_{1|t}(. | x_t)``, a sample from the
model's posterior at the last grid time ``1 - 1/steps``. With one step that means one factorized
draw from ``p_{1|0}(. | x_0)``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["peer_available", "peer_version", "PeerDiscreteFM"]

_REQUIRED = ("flow_matching", "tqdm", "torchdiffeq")  # solver/__init__ imports tqdm and torchdiffeq


def peer_available() -> bool:
    """True if ``flow_matching`` and its path / loss / solver modules can be imported."""
    if any(importlib.util.find_spec(m) is None for m in _REQUIRED):
        return False
    try:
        import flow_matching.loss  # noqa: F401
        import flow_matching.path  # noqa: F401
        import flow_matching.solver  # noqa: F401
    except Exception:  # a broken install counts as unavailable
        return False
    return True


def peer_version() -> Optional[str]:
    try:
        return importlib.metadata.version("flow-matching")
    except importlib.metadata.PackageNotFoundError:
        return None


def _seed_from(generator: Optional[torch.Generator]) -> int:
    if generator is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return int(torch.randint(0, 2**62, (), generator=generator, dtype=torch.int64,
                             device=generator.device))


class _ForkedRng:
    """Runs a block with the global RNG of ``device`` seeded from ``seed``, then restores it."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.device = device
        devices = [] if device.type != "cuda" else [device.index if device.index is not None
                                                    else torch.cuda.current_device()]
        self._fork = torch.random.fork_rng(devices=devices)

    def __enter__(self):
        self._fork.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        if self.device.type == "cuda":
            idx = self.device.index
            if idx is None:
                idx = torch.cuda.current_device()
            torch.cuda.default_generators[idx].manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


class _PeerModel(nn.Module):
    """The peer's model view of a flowfast-convention ``net(x_dense, s, t)``.

    ``forward(x=ids (B, L), t=(B,))`` returns logits (B, L, C) if ``probs`` is False (for the loss)
    and probabilities if True (for the solver). With the mask source the mask channel's logit is set
    to -inf, so the posterior never predicts the mask token (it is never a data token).
    """

    def __init__(self, net: nn.Module, channels: int, mask_id: Optional[int]) -> None:
        super().__init__()
        self.net = net
        self.channels = channels
        self.mask_id = mask_id
        self.probs = False
        self.nfe = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        dense = F.one_hot(x, self.channels).to(torch.get_default_dtype())
        t = t.to(dense.dtype)
        logits = self.net(dense, t, t, **extras)
        if self.mask_id is not None:
            logits = logits.masked_fill(
                F.one_hot(torch.tensor(self.mask_id, device=logits.device), self.channels).bool(),
                float("-inf"))
        self.nfe += 1
        if self.probs:
            return torch.softmax(logits.float(), dim=-1)
        return logits


def _wrapper_class():
    from flow_matching.utils import ModelWrapper

    class _SolverModel(ModelWrapper):
        """ModelWrapper for the solver: returns probabilities."""

        def forward(self, x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
            self.model.probs = True
            try:
                return self.model(x=x, t=t, **extras)
            finally:
                self.model.probs = False

    return _SolverModel


class PeerDiscreteFM:
    r"""Discrete flow matching with the ``flow_matching`` package, on a flowfast-convention network.

    Args:
        net: ``net(x, s, t)``, x (B, L, C) float, s and t (B,), returns logits (B, L, C), with
            ``C = vocab`` (uniform source) or ``vocab + 1`` (mask source).
        vocab: number of data tokens V; data ids are in ``[0, V)``.
        source: ``"uniform"`` (x0 uniform over the V tokens) or ``"mask"`` (x0 = the extra token
            ``V`` everywhere). The peer itself has no source option: its path only mixes a given
            x0 with x1, so the source is chosen by how x0 is drawn (here).
        scheduler_power: ``n`` of ``PolynomialConvexScheduler`` (:math:`\kappa_t = t^n`). With
            n < 1 the rate :math:`\dot\kappa_0` is infinite: the solver's first step gets a NaN
            intensity and silently makes no jumps (no error).
        t_max: training times are ``U[0, 1) * t_max``; the loss weight
            :math:`\dot\kappa_t/(1-\kappa_t)` diverges at t = 1 (the peer's examples use 1 - 1e-3).
    """

    def __init__(self, net: nn.Module, vocab: int, source: str = "uniform",
                 scheduler_power: float = 1.0, t_max: float = 1.0 - 1e-3) -> None:
        if not peer_available():
            raise ImportError("flow_matching is not importable (pip install --no-deps "
                              "flow-matching tqdm torchdiffeq)")
        if source not in ("uniform", "mask"):
            raise ValueError(f"source must be 'uniform' or 'mask', got {source!r}")
        if not (isinstance(scheduler_power, (int, float)) and scheduler_power > 0):
            raise ValueError(f"scheduler_power must be a positive number, got {scheduler_power!r}")
        from flow_matching.loss import MixturePathGeneralizedKL
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler
        from flow_matching.solver import MixtureDiscreteEulerSolver

        self.vocab = int(vocab)
        self.source = source
        self.channels = self.vocab + (1 if source == "mask" else 0)
        self.mask_id = self.vocab if source == "mask" else None
        self.t_max = float(t_max)
        self.net = net
        self.model = _PeerModel(net, self.channels, self.mask_id)
        self.path = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=float(scheduler_power)))
        self.loss_fn = MixturePathGeneralizedKL(path=self.path, reduction="mean")
        self.solver = MixtureDiscreteEulerSolver(model=_wrapper_class()(self.model), path=self.path,
                                                 vocabulary_size=self.channels)
        self.last_nfe = 0
        self.last_grid_mode = ""

    def _device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def source_sample(self, shape, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        device = device if device is not None else self._device()
        if self.source == "mask":
            return torch.full(shape, self.mask_id, dtype=torch.long, device=device)
        return torch.randint(0, self.vocab, shape, generator=generator, device=device)

    def loss(self, x1: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The peer's generalized-KL loss on a batch of data ids ``x1`` (B, L), mean over tokens."""
        if x1.ndim != 2 or x1.dtype != torch.long:
            raise ValueError(f"x1 must be a LongTensor (B, L), got {x1.dtype} {tuple(x1.shape)}")
        b = x1.shape[0]
        x0 = self.source_sample(x1.shape, generator, x1.device)
        t = torch.rand(b, generator=generator, device=x1.device) * self.t_max
        with _ForkedRng(_seed_from(generator), x1.device):
            ps = self.path.sample(x_0=x0, x_1=x1, t=t)  # draws with the global RNG
        logits = self.model(x=ps.x_t, t=ps.t)
        return self.loss_fn(logits=logits, x_1=ps.x_1, x_t=ps.x_t, t=ps.t)

    @torch.no_grad()
    def sample(self, n: int, length: int, steps: int, generator: Optional[torch.Generator] = None,
               return_nfe: bool = False):
        """``n`` sequences of ``length`` ids in ``[0, vocab)`` with the peer's Euler solver,
        ``steps`` uniform steps (``step_size = 1 / steps`` where the peer accepts it). Returns the
        ids, or ``(ids, nfe)`` if ``return_nfe``; the count is also left in ``self.last_nfe``."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        device = self._device()
        x0 = self.source_sample((n, length), generator, device)
        h = 1.0 / steps
        kwargs = {}
        if steps >= 2 and math.ceil(1.0 / h) == steps:
            kwargs = dict(step_size=h)  # the peer's own grid: [0, h, ..., (steps-1) h] + [1]
            self.last_grid_mode = "step_size"
        else:  # one step (refused by the step_size path) or ceil(1/(1/steps)) != steps
            grid = torch.tensor([i * h for i in range(steps)] + [1.0])
            kwargs = dict(step_size=None, time_grid=grid)
            self.last_grid_mode = "time_grid"
        was_training = self.net.training
        self.net.eval()
        self.model.nfe = 0
        try:
            with _ForkedRng(_seed_from(generator), device):
                x = self.solver.sample(x_init=x0, **kwargs)
        finally:
            self.net.train(was_training)
        self.last_nfe = self.model.nfe
        if self.mask_id is not None and bool((x == self.mask_id).any()):
            # cannot happen: the mask logit is -inf
            raise RuntimeError("peer sample still contains mask tokens")
        return (x, self.last_nfe) if return_nfe else x


# ----------------------------------------------------------------------------------------------
# self-check: python benchmarks/_flow_matching_peer.py
# ----------------------------------------------------------------------------------------------

class _StandInNet(nn.Module):
    """MLP over the flattened dense input (B, L*C) plus time features -> logits (B, L, C)."""

    def __init__(self, length: int, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.length, self.channels = length, channels
        self.body = nn.Sequential(
            nn.Linear(length * channels + 6, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, length * channels))

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tf = torch.stack([s, t, torch.sin(math.pi * t), torch.cos(math.pi * t),
                          torch.sin(2 * math.pi * t), torch.cos(2 * math.pi * t)], dim=-1)
        h = torch.cat([x.reshape(b, -1), tf.to(x.dtype)], dim=-1)
        return self.body(h).view(b, self.length, self.channels)


def _markov_chain(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    init = torch.softmax(torch.randn(vocab, generator=g), 0)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), 1)  # peaked rows
    return init, trans


def _draw_chain(init, trans, n, length, g):
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.multinomial(init.expand(n, -1), 1, generator=g).squeeze(1)
    for i in range(1, length):
        x[:, i] = torch.multinomial(trans[x[:, i - 1]], 1, generator=g).squeeze(1)
    return x


def _chain_nll(init, trans, x):
    """Mean per-token NLL (nats) of sequences x under the true chain."""
    lp = torch.log(init)[x[:, 0]] + torch.log(trans)[x[:, :-1], x[:, 1:]].sum(1)
    return float(-lp.mean() / x.shape[1])


def _bigram_tv(trans, x):
    """Total variation between the empirical and true transition rows, weighted by row counts."""
    v = trans.shape[0]
    counts = torch.zeros(v, v)
    counts.index_put_((x[:, :-1].reshape(-1), x[:, 1:].reshape(-1)),
                      torch.ones(x[:, 1:].numel()), accumulate=True)
    rows = counts.sum(1, keepdim=True)
    emp = counts / rows.clamp_min(1)
    return float(((emp - trans).abs().sum(1) * 0.5 * rows.squeeze(1)).sum() / rows.sum())


def _self_check(source: str = "uniform", train_steps: int = 200) -> None:
    import time

    torch.manual_seed(0)
    vocab, length, batch = 6, 8, 256
    init, trans = _markov_chain(vocab)
    g = torch.Generator().manual_seed(1)
    channels = vocab + (1 if source == "mask" else 0)
    net = _StandInNet(length, channels)
    peer = PeerDiscreteFM(net, vocab, source=source)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for step in range(train_steps):
        x1 = _draw_chain(init, trans, batch, length, g)
        loss = peer.loss(x1, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == train_steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}")
    t_train = time.perf_counter() - t0
    ref = _draw_chain(init, trans, 4000, length, torch.Generator().manual_seed(2))
    unif = torch.randint(0, vocab, (4000, length), generator=torch.Generator().manual_seed(3))
    print(f"source={source}  V={vocab} L={length}  trained {train_steps} steps in {t_train:.1f}s")
    print(f"  reference: data NLL {_chain_nll(init, trans, ref):.4f} nats/token "
          f"(bigram TV {_bigram_tv(trans, ref):.3f}),  "
          f"uniform NLL {_chain_nll(init, trans, unif):.4f} "
          f"(TV {_bigram_tv(trans, unif):.3f})")
    for steps in (1, 2, 4, 8, 32):
        x, nfe = peer.sample(4000, length, steps, torch.Generator().manual_seed(10 + steps),
                             return_nfe=True)
        assert x.dtype == torch.long and x.shape == (4000, length) and int(x.min()) >= 0 \
            and int(x.max()) < vocab
        print(f"  steps {steps:2d}  nfe {nfe:2d} ({peer.last_grid_mode:9s})  NLL "
              f"{_chain_nll(init, trans, x):.4f} nats/token  bigram TV {_bigram_tv(trans, x):.3f}")
    # same generator seed -> same samples; the caller's global RNG is left alone
    state = torch.random.get_rng_state()
    a = peer.sample(64, length, 4, torch.Generator().manual_seed(5))
    b = peer.sample(64, length, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(state, torch.random.get_rng_state())
    print("  reproducible from the generator, global RNG untouched: ok")


if __name__ == "__main__":
    import sys
    import warnings

    warnings.simplefilter("error")  # like the test suite: any warning fails the check
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    print(f"flow_matching {peer_version()}  available={peer_available()}")
    _self_check("uniform")
    if "--mask" in sys.argv:
        _self_check("mask")
