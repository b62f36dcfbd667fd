# The two set-up commands of the README: `make demo` and `make test`. Both create/reuse .venv,
# install torch (pinned CPU wheel unless one is importable) and build flowfast in place.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CI and local builds compile CUDA for one architecture; override e.g. FLOWFAST_CUDA_ARCHS="80;90".
FLOWFAST_CUDA_ARCHS ?= 90
export FLOWFAST_CUDA_ARCHS

.PHONY: env build test demo bench clean

env: $(VENV)/.env-ready

$(VENV)/.env-ready: scripts/setup_env.sh
	bash scripts/setup_env.sh $(PYTHON) $(VENV)
	touch $@

build: env
	$(PY) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	$(PY) -c "import flowfast; print('flowfast build:', flowfast.build_info())"

test: build
	$(PY) -m pytest tests

demo: build
	$(PY) -m flowfast demo
	$(PY) benchmarks/bench_assignment.py --quick

bench: build
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build .pytest_cache .hypothesis
