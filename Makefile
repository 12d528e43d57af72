# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-gpu campaign venv clean

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

# Issue 11's label-efficiency campaign on hippocampus MRI (RESULTS.md, "Issue 11"): every strategy, 5 seeds, one
# JSON per run in $(CAMPAIGN_DIR) (resumable: run it again), then the table, the paired statistics and the figure.
# 10-30 min a run on one CPU thread; on a lent GPU use CAMPAIGN_JOBS=15.
CAMPAIGN_DIR        ?= campaign_output
CAMPAIGN_JOBS       ?= 2
CAMPAIGN_SEEDS      ?= 0 1 2 3 4
CAMPAIGN_STRATEGIES ?= dsal+alnt dsal dsal-nopseudo fg-random random entropy mc-dropout full
campaign: $(STAMP)
	$(VENV)/bin/activeseg simulate --dataset ../shared/data/hippocampus_mri --strategies $(CAMPAIGN_STRATEGIES) \
	  --seeds $(CAMPAIGN_SEEDS) --jobs $(CAMPAIGN_JOBS) --out-dir $(CAMPAIGN_DIR) --pool-size 40 --initial 4 \
	  --per-round 4 --rounds 3 --test-fraction 0.1875 --val-fraction 0.0375 --set network.base_channels=8 \
	  --set training.patch_size=32,48,32 --set training.num_threads=1 --set training.steps_base=200 \
	  --set training.steps_per_label=10 --set training.max_steps=800 --set training.warm_start=true \
	  --set training.epochs_first=8 --set training.epochs_per_round=5
	$(VENV)/bin/activeseg plot $(CAMPAIGN_DIR)/*-seed*.json -o $(CAMPAIGN_DIR)/label_efficiency_hippocampus.png \
	  --markdown --summary $(CAMPAIGN_DIR)/summary.json

clean:
	rm -rf $(VENV) demo_output bench_output campaign_output
