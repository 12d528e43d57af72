# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-gpu venv clean

venv: $(STAMP)

# torch goes in first and pinned, so nothing later resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/activeseg demo --out demo_output

# Two pytest workers: half the suite waits on servers, workers and torchrun start-ups, so two share 2 cores well
# (each worker's torch on one thread: Testing/conftest.py). A module's tests stay in one worker (its fixtures once).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest Testing -n $(TEST_WORKERS) --dist loadscope

bench: $(STAMP)
	$(PY) -m Testing.benchmarks.run_all

# One short call on a lent GPU (2-4 min on an H100): training steps/s with AMP on/off and GPU utilisation, ALNT vs
# plain step, ranking volumes/s; writes bench_output/bench_gpu.json and .md.
bench-gpu: $(STAMP)
	$(PY) -m Testing.benchmarks.bench_gpu

clean:
	rm -rf $(VENV) demo_output bench_output
