#!/usr/bin/env bash
# `make gpu-check`: everything a lent GPU is for, in one run of under 10 minutes from a cold
# start on a machine with a preinstalled CUDA torch and no network:
#   1. offline build (peers and test deps from ./wheelhouse, see `make wheelhouse`), CUDA for
#      this GPU's architecture only;
#   2. the CUDA test subset (pytest -m cuda);
#   3. compute-sanitizer memcheck and racecheck on one small call of every kernel family;
#   4. every benchmark against its peers on this GPU (results in benchmarks/results/);
#   5. a one-screen summary (also written to benchmarks/results/gpu-check-summary.txt).
set -uo pipefail
BASE_PY=${1:-python3}
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-check-log.txt"
: > "$LOG"
declare -a SUMMARY
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-34s %-8s %4ds' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAIL($rc)")" $((SECONDS - t0)))")
  tail -n 3 "$LOG"
  return $rc
}

export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/wheelhouse" PIP_DISABLE_PIP_VERSION_CHECK=1
DEVICE=$("$BASE_PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo "no CUDA device")
ARCH=$("$BASE_PY" -c 'import torch; a, b = torch.cuda.get_device_capability(0); print(f"{a}{b}")' 2>/dev/null || echo 90)
export FLOWFAST_CUDA=ON FLOWFAST_CUDA_ARCHS=$ARCH CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)

step "build (offline, sm_$ARCH)" 300 make build PYTHON="$BASE_PY" || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
PY=.venv/bin/python
step "pytest -m cuda" 240 "$PY" -m pytest tests -m cuda -q -x -p no:cacheprovider
if command -v compute-sanitizer > /dev/null; then
  step "compute-sanitizer memcheck" 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" scripts/gpu_sanitizer_cases.py
  step "compute-sanitizer racecheck" 150 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" scripts/gpu_sanitizer_cases.py
else
  SUMMARY+=("compute-sanitizer                  MISSING (not on PATH)")
fi
step "benchmarks (all, cuda, vs peers)" 240 "$PY" benchmarks/run_all.py --device cuda --max-time 0.5

{
  echo "flowfast gpu-check on: $DEVICE (sm_$ARCH), $(date -u +%Y-%m-%dT%H:%MZ), torch $("$PY" -c 'import torch; print(torch.__version__)')"
  printf '%s\n' "${SUMMARY[@]}"
  echo "full log: $LOG; benchmark tables: $RESULTS/*.md (device name inside)"
} | tee "$RESULTS/gpu-check-summary.txt"
! grep -q FAIL "$RESULTS/gpu-check-summary.txt"
