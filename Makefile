# Entry points a person types. Each target is a thin wrapper over `imagebatch`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MANIFEST ?= manifests/example.yaml
MANIFEST_DIR ?= manifests
OUT ?= outputs
ASSETS ?= assets
PYTEST_ARGS ?=
RUN_ARGS ?=
# every manifest in MANIFEST_DIR; `make assets` keeps each one's outputs up to date
MANIFESTS ?= $(wildcard $(MANIFEST_DIR)/*.yaml)
SUMMARIES := $(patsubst $(MANIFEST_DIR)/%.yaml,$(OUT)/%/summary.json,$(MANIFESTS))
EXPORTS := $(patsubst $(MANIFEST_DIR)/%.yaml,$(ASSETS)/%/assets.json,$(MANIFESTS))

.DEFAULT_GOAL := help
.PHONY: help install run test check bench lint clean test-deps bench-deps assets plan sheet serve status \
	review export
# a run that fails (some jobs failed, or it was stopped) leaves no summary behind, so the
# next `make assets` runs that manifest again; done jobs are skipped, failed ones retried
.DELETE_ON_ERROR:

help: ## list the targets
	@grep -E '^[a-z%/.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# Set-up does only what is asked: `make run` installs imagebatch and what running needs;
# `make test` adds the test tools; `make check`/`lint` add ruff and mypy. Each stamp is
# rebuilt when pyproject.toml changes. PYTHONWARNINGS keeps setuptools' notes about
# editable installs off a newcomer's first screen.
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q --disable-pip-version-check
TEST_STAMP := $(VENV)/.installed-test
DEV_STAMP := $(VENV)/.installed-dev

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip
	$(PIP) -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	@touch $(TEST_STAMP)

$(DEV_STAMP): $(TEST_STAMP)
	$(PIP) -e '.[test,dev]'
	@touch $(DEV_STAMP)

install: $(STAMP) ## create .venv and install imagebatch (leaves .venv/bin/imagebatch)

run: $(STAMP) ## run MANIFEST (default manifests/example.yaml); offline unless DIFFUSION_URL is set
	$(BIN)/imagebatch run $(MANIFEST) --out $(OUT) $(RUN_ARGS)

assets: $(SUMMARIES) $(EXPORTS) ## run, then export, every manifest in MANIFEST_DIR that is out of date

# make's own dependency tracking: a manifest newer than its summary is run again (the
# manifest's `name:` must be its file stem, the default, for the rule to match)
$(OUT)/%/summary.json: $(MANIFEST_DIR)/%.yaml | $(STAMP)
	$(BIN)/imagebatch run $< --out $(OUT) $(RUN_ARGS)

# An export is out of date when its run, its manifest or its picks file (if there is one:
# $$(wildcard ...) is expanded a second time, once the stem is known) is newer. assets.json
# is precious: a failed export (a picked image not generated yet) leaves the previous one,
# still true, in place, dated long ago so that the next `make assets` tries again.
.SECONDEXPANSION:
.PRECIOUS: $(ASSETS)/%/assets.json
$(ASSETS)/%/assets.json: $(OUT)/%/summary.json $(MANIFEST_DIR)/%.yaml \
		$$(wildcard $(MANIFEST_DIR)/$$*.picks.json) | $(STAMP)
	$(BIN)/imagebatch export $(MANIFEST_DIR)/$*.yaml --out $(OUT) --assets $(ASSETS) || \
	  { status=$$?; touch -c -t 200001010000 $@; exit $$status; }

export: $(STAMP) ## export MANIFEST's picked images (sizes, formats, assets.json) from disk
	$(BIN)/imagebatch export $(MANIFEST) --out $(OUT) --assets $(ASSETS)

plan: $(STAMP) ## print MANIFEST's job list and what a run would send (sends nothing)
	$(BIN)/imagebatch plan $(MANIFEST) --out $(OUT)

sheet: $(STAMP) ## rebuild thumbnails, contact sheets and index.html of MANIFEST from disk
	$(BIN)/imagebatch sheet $(MANIFEST) --out $(OUT)

status: $(STAMP) ## count done, failed and pending jobs of MANIFEST (sends nothing)
	$(BIN)/imagebatch status $(MANIFEST) --out $(OUT)

review: $(STAMP) ## the review page of MANIFEST in the browser: pick, reject, rate (Ctrl-C stops)
	$(BIN)/imagebatch review $(MANIFEST) --out $(OUT)

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
# find them and libraqm to shape right-to-left text: Debian packages, checked with dpkg.
TEST_PACKAGES := fontconfig fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji libraqm0
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

test: $(TEST_STAMP) test-deps ## install everything the tests need, then run them all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: lint, types and the fast tests (no stress suite, no browser, no
# subprocess sweeps, no wheel build); `make test` still runs everything.
FAST := not stress and not browser and not slow and not wheel
check: $(DEV_STAMP) ## ruff, mypy and the fast tests (under 90 s); `make test` runs everything
	$(BIN)/ruff check pipeline tests bench
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
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/mypy pipeline

clean: ## remove the venv, caches and outputs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info bench/.work bench/results.json
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf $(ASSETS)
