#!/usr/bin/env bash
# Puts torchcfm's own test suite (from its sdist on PyPI, which ships tests/) under
# build/torchcfm-tests/, where tests/test_torchcfm_shim_suite.py looks for it.
# Usage: tests/peers/get_torchcfm_tests.sh [version]   (default: the installed torchcfm's, else 1.0.7)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
version="${1:-$("$py" -c 'import torchcfm; print(torchcfm.__version__)' 2>/dev/null || echo 1.0.7)}"
dest="$root/build/torchcfm-tests"
mkdir -p "$dest"
"$py" -m pip download "torchcfm==$version" --no-deps --no-binary :all: -d "$dest" -q
tar xzf "$dest/torchcfm-$version.tar.gz" -C "$dest"
echo "torchcfm $version tests: $dest/torchcfm-$version/tests"
