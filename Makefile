# Two commands for a newcomer: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export MIRROR_CACHE_DIR := $(CACHE)
export PATH := $(CACHE)/bin:$(CURDIR)/.venv/bin:$(PATH)
VENV := $(CURDIR)/.venv/bin

.PHONY: install lint test demo bench lock image clean

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

# The image's Python dependencies, hashed (deploy/image/requirements.lock): run after a
# change to pyproject.toml's dependencies; tests/deploy/test_lock.py says when it is due.
UV_VERSION := 0.13.10
lock: install
	$(VENV)/pip install -q "uv==$(UV_VERSION)"
	$(VENV)/uv pip compile pyproject.toml deploy/image/build-requirements.in --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet \
		--output-file deploy/image/requirements.lock

# The image, built with podman on stand-in bases as tests/image does (prints its size).
image: install
	$(VENV)/python tests/image/podman.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache
