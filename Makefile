# Entry points a person types. Each target is a thin wrapper over `imagebatch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' pipeline/__init__.py)

.DEFAULT_GOAL := help
.PHONY: help install wheel test soak check bench lint clean test-deps bench-deps serve

# The imagebatch targets (assets, run, plan, status, sheet, review, export) are the ones
# `imagebatch init` writes into a team's repository: one file, included here, so the two
# cannot drift. Here they run .venv's imagebatch, installing it first.
IMAGEBATCH := $(BIN)/imagebatch
IMAGEBATCH_DEPS := $(STAMP)
include pipeline/templates/init/imagebatch.mk

help: ## list the targets
	@grep -hE '^[a-z%/.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# Set-up does only what is asked: `make run` installs imagebatch and what running needs;
# `make test` adds the test tools; `make check`/`lint` add ruff and mypy. Each stamp is
# rebuilt when pyproject.toml changes. PYTHONWARNINGS keeps setuptools' notes about
# editable installs off a newcomer's first screen.
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q --disable-pip-version-check
TEST_STAMP := $(VENV)/.installed-test
DEV_STAMP := $(VENV)/.installed-dev

# pip is upgraded only when it is older than 21.3, the first to install a pyproject.toml project
# as editable (Python 3.10.0's bundled pip is 21.2): a newer one does the job as it is, and an
# upgrade costs a fresh clone's first `make run` seconds and a trip to the package index.
PIP_OLD := $(BIN)/python -c "import sys, pip; sys.exit(tuple(map(int, pip.__version__.split('.')[:2])) >= (21, 3))"

# A new .venv is made by tools/make_venv.py: `python -m venv`, but with pip copied from
# $(PYTHON)'s own where that pip is self-contained (a fraction of a second instead of the 5 to
# 9 CPU-seconds ensurepip spends byte-compiling pip again), and the standard way otherwise.
NEW_VENV = test -x $(BIN)/python || $(PYTHON) tools/make_venv.py $(VENV)

$(STAMP): pyproject.toml
	@$(NEW_VENV)
	@if $(PIP_OLD); then $(PIP) --upgrade pip; fi
	$(PIP) -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	@touch $(TEST_STAMP)

$(DEV_STAMP): $(TEST_STAMP)
	$(PIP) -e '.[test,dev]'
	@touch $(DEV_STAMP)

install: $(STAMP) ## create .venv and install imagebatch (leaves .venv/bin/imagebatch)

# The wheel pip installs anywhere: what a team keeps (`imagebatch init --vendor-wheel`) or
# hands around while imagebatch is on no package index. Built from this checkout alone.
wheel: ## build dist/imagebatch-VERSION-py3-none-any.whl from this checkout
	@$(NEW_VENV)
	@rm -rf build  # setuptools would pack files left there by an older build
	PYTHONWARNINGS=ignore $(BIN)/python -m pip wheel -q --disable-pip-version-check --no-deps -w dist .
	@echo "dist/imagebatch-$(VERSION)-py3-none-any.whl"

HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(STAMP) ## run the embedded API server on HOST:PORT (default 127.0.0.1:8000)
	$(BIN)/imagebatch serve --host $(HOST) --port $(PORT)

# Tools some tests drive as a user would: headless chromium (index.html, and the review
# page through Playwright, which drives this system chromium: no browser download), curl and
# jq (the provider's curl example). Best effort: needs root and apt; missing tools skip those
# tests, except the review page's under CI (CI set), where a missing browser fails the run.
TEST_TOOLS := chromium jq curl
# Fonts for captions in every script (Latin, CJK, Hebrew, Arabic, colour emoji), fontconfig to
# find them and libraqm to shape right-to-left text; ExifTool, an independent reader of the
# AI marker (XMP DigitalSourceType): Debian packages, checked with dpkg.
# eatmydata: see NO_FLUSH below.
TEST_PACKAGES := fontconfig fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji libraqm0 \
	libimage-exiftool-perl eatmydata
test-deps:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if command -v dpkg-query >/dev/null 2>&1; then for p in $(TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing for the tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	      echo "note: could not install$$missing; tests that need them will be skipped"; \
	  else echo "note:$$missing not installed; tests that need them will be skipped"; fi; fi

# The suite runs in parallel (pytest-xdist), two workers per core (at most 8): a third of
# a test's time is spent waiting (on a server, a subprocess, a timeout it checks), so a
# second worker keeps the core busy. Every test works in its own tmp_path on ports the
# system picks, and module fixtures (S3 endpoint, servers) are per worker. conftest.py deals
# the slow tests out evenly over the workers' first shares; worksteal then hands a worker
# that is done the tests another has queued. TEST_WORKERS=0 runs in one process (pdb,
# reading output).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(8, 2 * (os.cpu_count() or 1)))")
XDIST = -n $(TEST_WORKERS) --dist worksteal
# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (as on some CI images): the
# hundreds of `python -m imagebatch` processes the tests start, and every worker's
# assertion-rewritten test modules, are compiled once instead of each time.
TEST_ENV = PYTHONDONTWRITEBYTECODE=
# A test module is compiled (its asserts rewritten) by the first process that imports it,
# and kept in tests/__pycache__. In a fresh clone every worker would compile all of them at
# once, each doing the same 8 CPU-seconds of work; two collect-only passes over half of the
# modules each compile them once instead. The package is compiled too (an editable install
# leaves that to the first import, and the workers and the commands the tests start would
# each compile what they import first). Done again only when a test or source file changes.
WARM_STAMP := $(VENV)/.compiled-tests
$(WARM_STAMP): $(TEST_STAMP) $(wildcard tests/*.py pipeline/*.py pipeline/*/*.py)
	@$(TEST_ENV) $(BIN)/python -m compileall -q -j 0 pipeline >/dev/null || true
	@set -- $$(ls -S tests/test_*.py); one=""; two=""; \
	while [ $$# -gt 0 ]; do one="$$one $$1"; two="$$two $${2:-}"; shift; [ $$# -gt 0 ] && shift; done; \
	{ $(TEST_ENV) $(BIN)/python -m pytest -q --collect-only -p no:cacheprovider $$one >/dev/null 2>&1 & \
	  $(TEST_ENV) $(BIN)/python -m pytest -q --collect-only -p no:cacheprovider $$two >/dev/null 2>&1; wait; } || true
	@touch $@

# imagebatch fsyncs every file it writes, and the folder, as a run must (a power cut keeps
# either the old file or the whole new one); the tests write tens of thousands of files, and
# on a virtual disk each flush costs the kernel and the host CPU. No test can see a flush
# (none cuts the power), so the suite runs under eatmydata (Debian's libeatmydata, which
# test-deps installs) where it is installed: fsync is still called at the same places and
# returns at once. Measured here: 12 to 17 s less wall time, 20 to 30 CPU-seconds less.
# NO_FLUSH= (empty) runs with real flushes.
NO_FLUSH ?= $$(command -v eatmydata)

test: $(TEST_STAMP) test-deps $(WARM_STAMP) ## install everything the tests need, then run them all
	$(TEST_ENV) $(NO_FLUSH) $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Every test with the sizes a test does not check at their full values (SOAK=1: 2,000 chaos
# jobs, eight rounds of signals, 50 runs of each cache command, 300 examples of a property...):
# `make test` runs the same checks on fewer. For a change to the runner, the store or signal
# handling, and before a release.
soak: $(TEST_STAMP) test-deps $(WARM_STAMP) ## every test, the stress sizes and sweeps at full size (many minutes)
	SOAK=1 $(TEST_ENV) $(NO_FLUSH) $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop: lint, types and the fast tests (no stress suite, no browser, no
# subprocess sweeps, no wheel build); `make test` still runs everything.
FAST := not stress and not browser and not slow and not wheel
check: $(DEV_STAMP) ## ruff, mypy and the fast tests (under 90 s); `make test` runs everything
	$(BIN)/ruff check pipeline tests bench tools
	$(BIN)/mypy pipeline
	$(BIN)/python -m pytest -q -m "$(FAST)" $(PYTEST_ARGS)

# vipsthumbnail and ImageMagick are what the benchmarks compare against.
bench-deps:
	@{ command -v vipsthumbnail && command -v montage; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvips-tools imagemagick >/dev/null) ; } || \
	  echo "note: vipsthumbnail/ImageMagick not installed; comparisons will be skipped"
	@command -v avifenc >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libavif-bin >/dev/null) ; } || \
	  echo "note: avifenc not installed; the AVIF comparison will be skipped"

bench: $(TEST_STAMP) bench-deps ## run the benchmarks; prints one table, writes bench/results.json
	$(BIN)/python -m bench

lint: $(DEV_STAMP) ## ruff and mypy
	$(BIN)/ruff check pipeline tests bench tools
	$(BIN)/mypy pipeline

clean: ## remove the venv, caches and outputs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info bench/.work bench/results.json
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf $(ASSETS)
