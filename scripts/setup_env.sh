#!/usr/bin/env bash
# Creates (or reuses) the project venv and installs what the build and tests need.
# torch: reuse an importable one (e.g. the preinstalled CUDA torch on an offline GPU machine),
# else install the pinned CPU wheel torch==2.13.0 (never an unpinned torch: that is a multi-GB
# CUDA download).
set -euo pipefail
BASE_PY=${1:-python3}
VENV=${2:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$BASE_PY" -m venv --system-site-packages "$VENV"
  # If the base interpreter is itself a venv, --system-site-packages does not reach its packages;
  # a .pth file does (this is how the GPU machine's preinstalled torch becomes visible).
  parent_site=$("$BASE_PY" -c 'import sys, sysconfig; print(sysconfig.get_paths()["purelib"] if sys.prefix != sys.base_prefix else "")')
  if [ -n "$parent_site" ]; then
    "$VENV/bin/python" -c 'import sysconfig, sys; open(sysconfig.get_paths()["purelib"] + "/_flowfast_parent_env.pth", "w").write(sys.argv[1] + "\n")' "$parent_site"
  fi
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c 'import torch' 2>/dev/null; then
  pip_install "torch==2.13.0"
fi

missing=()
for spec in pybind11:pybind11 scikit_build_core:scikit-build-core numpy:numpy scipy:scipy \
            pytest:pytest hypothesis:hypothesis; do
  mod=${spec%%:*}; pkg=${spec#*:}
  "$PY" -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then pip_install "${missing[@]}"; fi

# Peers for benchmarks and cross-checks, matplotlib for the demo plot, scikit-learn for the 8x8
# digits (flowfast.data.digits ships inside it, no download); optional (the GPU machine is offline).
for spec in ot:pot lap:lap matplotlib:matplotlib sklearn:scikit-learn; do
  mod=${spec%%:*}; pkg=${spec#*:}
  "$PY" -c "import $mod" 2>/dev/null || pip_install "$pkg" || echo "note: optional peer '$pkg' not installed"
done
# JAX (CPU) for the array-library tests (tests/test_array_interop.py: JAX arrays in and out of every
# entry point) and benchmarks/bench_interop.py; optional, its tests skip without it.
"$PY" -c "import jax" 2>/dev/null || pip_install "jax[cpu]==0.10.2" || echo "note: optional 'jax' not installed"
# torchcfm is the OT-CFM anchor; its declared deps (torchdyn, ...) are not needed for its
# optimal_transport module, and resolving them could pull another torch: install it alone.
"$PY" -c "import torchcfm.optimal_transport" 2>/dev/null || pip_install --no-deps "torchcfm==1.0.7" \
  || echo "note: optional peer 'torchcfm' not installed"
# rectified-flow-pytorch (the flow-map peer: MeanFlow, LsdFlow): only its mean_flow / lsd_flow modules
# are loaded, which need einops; its declared deps (torchvision, x-transformers, ...) would pull another torch.
"$PY" -c "import einops" 2>/dev/null || pip_install --no-deps "einops" || echo "note: optional 'einops' not installed"
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('rectified_flow_pytorch') is None)" 2>/dev/null \
  || pip_install --no-deps "rectified-flow-pytorch==0.14.0" || echo "note: optional peer 'rectified-flow-pytorch' not installed"
# Meta's flow_matching (the discrete-flow-matching peer of benchmarks/categorical_tasks.py; CC BY-NC:
# run side by side, never copied): its solvers import tqdm and torchdiffeq; --no-deps keeps the torch pin.
for spec in tqdm:tqdm torchdiffeq:torchdiffeq==0.2.5 flow_matching:flow-matching==1.0.10; do
  mod=${spec%%:*}; pkg=${spec#*:}
  "$PY" -c "import $mod" 2>/dev/null || pip_install --no-deps "$pkg" || echo "note: optional peer '$pkg' not installed"
done
"$PY" -c "import sys, torch; print('flowfast env: python', sys.version.split()[0], 'torch', torch.__version__)"
