# The two front-door commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are installed first, pinned to the releases this machine carries on disk;
# everything else comes from pyproject.toml.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast benchmark gpu-check mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stepnet models --params
	$(VENV)/bin/stepnet demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/train_throughput.py --workers 2 --cache-images
	$(PY) benchmarks/stiffness_cost.py
	$(PY) benchmarks/report.py --write

# Everything that needs a CUDA device, in one short script (under 8 minutes on one GPU).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

# Mutation testing of the numeric core (attention modules, stiffness metrics, linalg, Lyapunov
# exponents; settings in pyproject.toml [tool.mutmut]). One OpenMP thread: mutants run in forked
# processes, where a multi-threaded OpenMP pool deadlocks. About 10 minutes on 2 cores.
mutation: $(STAMP)
	$(PY) -m pip install -q -e ".[test,dev]"
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache mutants
