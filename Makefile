# The two commands a user needs:  `make demo`  and  `make test`.  Both build the environments first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV = $(shell scripts/env.sh cpu)
COMPAT = $(shell scripts/env.sh compat)
MB = $(shell scripts/env.sh mb)
PY = $(VENV)/bin/python
export HEBATRON_WORK ?= $(CURDIR)/work
# This checkout first on the import path: the environments are shared by every checkout (keyed by lock
# hash), so the editable install below points at whichever checkout ran `make env` last
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
PYTEST_ARGS ?=
ARGS ?=

.PHONY: help env demo smoke test test-fast lock clean-work

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

env:  ## build (once) the CPU environment, the compatibility layer and the Megatron-Bridge test tier, outside the clone
	@echo "cpu env:      $(VENV)"; echo "compat layer: $(COMPAT)"; echo "MB tier:      $(MB)"
	@test -n "$(MB)" && test -f "$(MB)/.complete" || { echo "error: the Megatron-Bridge test tier did not install (scripts/env.sh mb)"; exit 1; }
	@scripts/install_editable.sh "$(PY)" "$(CURDIR)"

demo: env  ## the whole method on a tiny Nemotron-H (CPU): corpora, prepare, plan, base, CPT, SFT, export, evaluate, report
	HEBATRON_COMPAT_DIR=$(COMPAT) $(PY) recipes/pipeline.py experiment=tiny_cpu $(ARGS)

smoke: env  ## the same graph with fewer steps (what CI runs end to end)
	HEBATRON_COMPAT_DIR=$(COMPAT) $(PY) recipes/pipeline.py experiment=smoke_cpu $(ARGS)

test: env  ## the whole CPU test suite (slow end-to-end tests included; GPU tests skip without CUDA)
	HEBATRON_COMPAT_DIR=$(COMPAT) HEBATRON_MB_DIR=$(MB) $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: env  ## the fast tier: no model training, no training subprocesses (under 3 minutes on 2 cores; PYTEST_ARGS="--cpu-durations=20" lists the costliest)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} HEBATRON_COMPAT_DIR=$(COMPAT) HEBATRON_MB_DIR=$(MB) $(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

lock:  ## regenerate requirements/cpu.lock from requirements/cpu.in in a scratch environment
	scripts/lock.sh

clean-work:  ## remove generated corpora, datasets and runs (work/)
	rm -rf work
