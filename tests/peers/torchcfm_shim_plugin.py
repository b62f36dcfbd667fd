"""pytest plugin (``-p torchcfm_shim_plugin``): torchcfm's own test suite with its two modules
replaced by :mod:`flowfast.compat.torchcfm`.

Loaded before the suite's modules are collected, it puts the shim into ``sys.modules`` under
``torchcfm.conditional_flow_matching`` and ``torchcfm.optimal_transport``, so the suite's
``from torchcfm.optimal_transport import OTPlanSampler`` and the like resolve to flowfast's classes.
The rest of torchcfm (``torchcfm.models``) is torchcfm's own.
"""

from __future__ import annotations

import sys

import flowfast.compat.torchcfm as _shim

SHIMMED = ("torchcfm.conditional_flow_matching", "torchcfm.optimal_transport")

for _name in SHIMMED:
    sys.modules[_name] = _shim


def pytest_terminal_summary(terminalreporter):
    # shown also with -q: the runner (tests/test_torchcfm_shim_suite.py) checks for this line
    substituted = all(sys.modules.get(name) is _shim for name in SHIMMED)
    terminalreporter.write_line(f"torchcfm shim: {', '.join(SHIMMED)} -> {_shim.__name__} "
                                f"({'in place' if substituted else 'NOT in place'})")
