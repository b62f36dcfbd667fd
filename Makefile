# The two set-up commands of the README: `make demo` and `make test`. Both create/reuse .venv,
# install torch (pinned CPU wheel unless one is importable) and build flowfast in place.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CI and local builds compile CUDA for one architecture; override e.g. FLOWFAST_CUDA_ARCHS="80;90".
FLOWFAST_CUDA_ARCHS ?= 90
export FLOWFAST_CUDA_ARCHS

# Test-only SIMT emulation of the CUDA kernels (csrc/emu): two modules in build/emu, run by
# tests/emulation in the plain process (race detector) and under AddressSanitizer + UBSan.
EMU_DIR ?= build/emu
ASAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)
EMU_ASAN_ENV = FLOWFAST_EMU_REQUIRED=1 FLOWFAST_EMU_BUILD=asan LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

.PHONY: env build emu test test-emu fuzz demo bench gpu-check wheelhouse clean

env: $(VENV)/.env-ready

$(VENV)/.env-ready: scripts/setup_env.sh
	bash scripts/setup_env.sh $(PYTHON) $(VENV)
	touch $@

build: env
	$(PY) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	$(PY) -c "import flowfast; print('flowfast build:', flowfast.build_info())"

emu: env
	mkdir -p $(EMU_DIR)
	cmake -S . -B $(EMU_DIR) -G Ninja -DFLOWFAST_EMULATION=ON -DPython_EXECUTABLE=$(abspath $(PY)) \
		-Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)" > $(EMU_DIR)/configure.log || (cat $(EMU_DIR)/configure.log; exit 1)
	cmake --build $(EMU_DIR) -j $$(nproc)

# Under ASan: the selftests and the cases that reach every kernel at multi-block sizes.
EMU_ASAN_SUBSET = -k "selftest or unique_optimum or far_below or same_as_cpu or multi_block or sample_equals"

# torchcfm's own test suite (from its sdist), run against flowfast.compat.torchcfm by
# tests/test_torchcfm_shim_suite.py; without the package index the download fails and that test skips.
build/torchcfm-tests/.ready:
	-PYTHON=$(PY) bash tests/peers/get_torchcfm_tests.sh && touch $@

test: build emu build/torchcfm-tests/.ready
	FLOWFAST_EMU_REQUIRED=1 $(PY) -m pytest tests
	$(EMU_ASAN_ENV) $(PY) -m pytest tests/emulation -q -p no:cacheprovider $(EMU_ASAN_SUBSET)

# Only the emulated CUDA kernels (both sanitizer builds).
test-emu: build emu
	FLOWFAST_EMU_REQUIRED=1 $(PY) -m pytest tests/emulation -q
	$(EMU_ASAN_ENV) $(PY) -m pytest tests/emulation -q -p no:cacheprovider $(EMU_ASAN_SUBSET)

# The fuzz suite with a larger budget than make test's (FUZZ_EXAMPLES cases per op family; every
# case in a supervised child process), printing the outcome counts per op.
FUZZ_EXAMPLES ?= 2000
fuzz: build
	FLOWFAST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -q -s -p no:cacheprovider

demo: build
	$(PY) -m flowfast demo
	$(PY) benchmarks/bench_assignment.py --quick

bench: build
	$(PY) benchmarks/run_all.py

# On a machine with a GPU, the preinstalled CUDA torch and no network (see benchmarks/README.md).
gpu-check:
	bash scripts/gpu_check.sh $(PYTHON)

# Fills wheelhouse/ with the wheels gpu-check installs offline (needs the package index).
wheelhouse:
	bash scripts/fill_wheelhouse.sh $(PYTHON)

clean:
	rm -rf build .pytest_cache .hypothesis
