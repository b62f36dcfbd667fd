"""The one table of CFM path kinds: the names the Python layers use, the codes of the
`interpolant` kernels (``ff::PathKind`` in csrc/include/flowfast/interpolant_math.h) and the
per-kind constants. :mod:`flowfast.paths`, :mod:`flowfast.ops.interpolant` and the reference read
it from here."""

from __future__ import annotations

#: path name -> kernel code (ff::PathKind)
KINDS = {"linear": 0, "bridge": 1, "target": 2, "vp": 3}
LINEAR, BRIDGE, TARGET, VP = (KINDS[k] for k in ("linear", "bridge", "target", "vp"))

#: SB-CFM's velocity divides by 2t(1-t); torchcfm's guard, kept for identical values
#: (= ff::kBridgeGuard).
BRIDGE_GUARD = 1e-8

#: kinds whose target velocity u_t depends on the noise that made x_t (not only on x0, x1, t)
VELOCITY_USES_NOISE = frozenset({BRIDGE, TARGET})

#: kinds whose sigma must be > 0 (the bridge collapses to a point without noise)
NEEDS_POSITIVE_SIGMA = frozenset({BRIDGE})
