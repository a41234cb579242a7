# Two entry points on a fresh machine: `make serve` and `make test`.
# Both create .venv and install the project with the build extra (torch pinned to the
# local CPU wheel first, so nothing pulls CUDA packages).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install serve test test-slow lint clean models

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[build,dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the service on the default model (built once and cached on first start).
serve: $(STAMP)
	$(BIN)/simsvc serve

## Lint, type-check and run the fast tier (minutes on 2 cores).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q -m "not slow"

## The slow tier: bundles from the reference checkpoints in ../shared, the long fuzz run, Ray.
## pytest's exit status 5 (no test selected) is a pass: the tier may be empty.
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

## The release checkpoints (bi, cross, reranker) fine-tuned from the shared multilingual e5,
## with their cards and times in $(MODELS_OUT)/release.json (CUDA when present, else CPU).
## Publish them as $(SHARED)/models/simsvc-e5-{bi,cross,reranker} for the default bundle.
SHARED     ?= ../shared
MODELS_OUT ?= .cache/models
EPOCHS     ?= 2
DEVICE     ?= auto
models: $(STAMP)
	$(BIN)/python -m models.release --shared $(SHARED) --out $(MODELS_OUT) \
		--epochs $(EPOCHS) --device $(DEVICE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
