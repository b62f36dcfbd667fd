#!/usr/bin/env bash
# `make wheelhouse`: downloads (on a machine with the package index) the wheels that
# `make gpu-check` installs offline: build deps, test deps and the benchmark peers. The target
# interpreter defaults to this one; WHEELHOUSE_PY=3.12 (for example) fetches for another.
set -euo pipefail
BASE_PY=${1:-python3}
TARGET=${WHEELHOUSE_PY:-$("$BASE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
OUT=wheelhouse
mkdir -p "$OUT"
fetch() { "$BASE_PY" -m pip download -q --only-binary=:all: --python-version "$TARGET" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            -d "$OUT" "$@"; }
# Build and test deps, and POT/lap with their dependencies (numpy and scipy among them). POT is
# pinned to 0.9.5: its wheel is 0.9 MB where 0.9.7's is 33 MB, and the whole wheelhouse must fit
# the device tool's 64 MiB carry limit (same solvers and torch backend).
fetch pybind11 scikit-build-core pytest hypothesis scipy "pot==0.9.5" lap
# torchcfm's declared deps pull another torch: only the package (its optimal_transport module
# needs numpy/scipy/POT, fetched above).
fetch --no-deps torchcfm
du -sh "$OUT"
echo "wheelhouse: $(ls "$OUT" | wc -l) wheels for Python $TARGET in $OUT/"
