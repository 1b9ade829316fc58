# Entry points a person types. Each target is a thin wrapper over `imagebatch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MANIFEST ?= manifests/example.yaml
OUT ?= outputs
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test bench lint clean browser-deps bench-deps

help: ## list the targets
	@grep -E '^[a-z%/.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# The venv is (re)built when missing or when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install imagebatch (leaves .venv/bin/imagebatch)

run: $(STAMP) ## run MANIFEST (default manifests/example.yaml); offline unless DIFFUSION_URL is set
	$(BIN)/imagebatch run $(MANIFEST) --out $(OUT)

# Headless chromium for the index.html browser test; best effort (needs root and apt).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; the browser test will be skipped"

test: $(STAMP) browser-deps ## install everything the tests need, then run them all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# vipsthumbnail and ImageMagick are what the benchmarks compare against.
bench-deps:
	@{ command -v vipsthumbnail && command -v montage; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvips-tools imagemagick >/dev/null) ; } || \
	  echo "note: vipsthumbnail/ImageMagick not installed; comparisons will be skipped"

bench: $(STAMP) bench-deps ## run the benchmarks; prints one table, writes bench/results.json
	$(BIN)/python -m bench

lint: $(STAMP) ## ruff and mypy
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/mypy pipeline

clean: ## remove the venv, caches and outputs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info bench/.work bench/results.json
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
