# Make targets for imagebatch (written by `imagebatch init`).
# Every variable can be set on the command line: make plan MANIFEST=manifests/other.yaml
IMAGEBATCH ?= imagebatch
MANIFEST ?= manifests/example.yaml
MANIFEST_DIR ?= manifests
OUT ?= outputs
RUN_ARGS ?=
# every manifest in MANIFEST_DIR; `make assets` keeps each one's outputs up to date
MANIFESTS ?= $(wildcard $(MANIFEST_DIR)/*.yaml)
IMAGEBATCH_SUMMARIES := $(patsubst $(MANIFEST_DIR)/%.yaml,$(OUT)/%/summary.json,$(MANIFESTS))

.PHONY: assets plan status sheet review export

assets: $(IMAGEBATCH_SUMMARIES) ## run every manifest in MANIFEST_DIR whose outputs are out of date

# make's own dependency tracking: a manifest newer than its summary is run again (the
# manifest's `name:` must be its file stem, the default, for the rule to match). A run that
# fails leaves no summary behind, so the next `make assets` runs that manifest again; done
# jobs are skipped, failed ones retried.
$(OUT)/%/summary.json: $(MANIFEST_DIR)/%.yaml
	$(IMAGEBATCH) run $< --out $(OUT) $(RUN_ARGS) || { rc=$$?; rm -f $@; exit $$rc; }

plan: ## print MANIFEST's job list and what a run would send (sends nothing)
	$(IMAGEBATCH) plan $(MANIFEST) --out $(OUT)

status: ## count done, failed and pending jobs of MANIFEST (sends nothing)
	$(IMAGEBATCH) status $(MANIFEST) --out $(OUT)

sheet: ## rebuild thumbnails, contact sheets and index.html of MANIFEST from disk
	$(IMAGEBATCH) sheet $(MANIFEST) --out $(OUT)

review: ## open a local page to pick, reject and rate MANIFEST's images
	$(IMAGEBATCH) review $(MANIFEST) --out $(OUT)

export: ## write MANIFEST's picked images as finished assets (its exports: section)
	$(IMAGEBATCH) export $(MANIFEST) --out $(OUT)
