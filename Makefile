# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export MIRROR_CACHE_DIR := $(CACHE)
export PATH := $(CACHE)/bin:$(CURDIR)/.venv/bin:$(PATH)
VENV := $(CURDIR)/.venv/bin

.PHONY: install lint test demo bench clean

install:
	@bash deploy/local/install.sh

lint: install
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

test: lint
	$(VENV)/pytest -q -p no:cacheprovider

demo: install
	$(VENV)/python deploy/local/demo.py

bench: install
	$(VENV)/python tests/benchmarks/run.py $(SCENARIOS)

clean:
	rm -rf .venv .pytest_cache .ruff_cache
