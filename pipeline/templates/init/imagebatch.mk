# Make targets for imagebatch (written by `imagebatch init`).
# Every variable can be set on the command line: make plan MANIFEST=manifests/other.yaml
IMAGEBATCH ?= imagebatch
# what every target waits for first: nothing here (imagebatch's own Makefile, which
# includes this file, installs imagebatch first)
IMAGEBATCH_DEPS ?=
MANIFEST ?= manifests/example.yaml
MANIFEST_DIR ?= manifests
OUT ?= outputs
ASSETS ?= assets
RUN_ARGS ?=
# every manifest in MANIFEST_DIR; `make assets` keeps each one's outputs and exports up to date
MANIFESTS ?= $(wildcard $(MANIFEST_DIR)/*.yaml)
IMAGEBATCH_SUMMARIES := $(patsubst $(MANIFEST_DIR)/%.yaml,$(OUT)/%/summary.json,$(MANIFESTS))
IMAGEBATCH_EXPORTS := $(patsubst $(MANIFEST_DIR)/%.yaml,$(ASSETS)/%/assets.json,$(MANIFESTS))

.PHONY: assets run plan status sheet review export

assets: $(IMAGEBATCH_SUMMARIES) $(IMAGEBATCH_EXPORTS) ## run, then export, every manifest in MANIFEST_DIR that is out of date

# make's own dependency tracking: a manifest newer than its summary is run again (the
# manifest's `name:` must be its file stem, the default, for the rule to match). A run that
# fails leaves no summary behind, so the next `make assets` runs that manifest again; done
# jobs are skipped, failed ones retried.
# A manifest's prompts lock (M.prompts.lock, written by `imagebatch expand`) is read with it:
# a lock newer than the summary runs the manifest again too.
$(foreach p,$(wildcard $(MANIFEST_DIR)/*.prompts.lock),$(eval \
  $(OUT)/$(notdir $(p:.prompts.lock=))/summary.json: $(p)))
$(OUT)/%/summary.json: $(MANIFEST_DIR)/%.yaml | $(IMAGEBATCH_DEPS)
	$(IMAGEBATCH) run $< --out $(OUT) $(RUN_ARGS) || { rc=$$?; rm -f $@; exit $$rc; }

# An export is out of date when its run, its manifest or its picks file is newer. Each
# picks file there adds itself as a prerequisite, in a rule of its own (.SECONDEXPANSION
# could do it too, but would change every rule of a Makefile that includes this file).
# assets.json is precious: a failed export (a picked image not generated yet) leaves the
# previous one, still true, in place, dated long ago so that the next `make assets` tries
# again.
.PRECIOUS: $(ASSETS)/%/assets.json
$(foreach p,$(wildcard $(MANIFEST_DIR)/*.picks.json),$(eval \
  $(ASSETS)/$(notdir $(p:.picks.json=))/assets.json: $(p)))
$(ASSETS)/%/assets.json: $(OUT)/%/summary.json $(MANIFEST_DIR)/%.yaml | $(IMAGEBATCH_DEPS)
	$(IMAGEBATCH) export $(MANIFEST_DIR)/$*.yaml --out $(OUT) --assets $(ASSETS) || \
	  { rc=$$?; touch -c -t 200001010000 $@; exit $$rc; }

run: | $(IMAGEBATCH_DEPS) ## run MANIFEST (default manifests/example.yaml); offline unless DIFFUSION_URL is set
	$(IMAGEBATCH) run $(MANIFEST) --out $(OUT) $(RUN_ARGS)

plan: | $(IMAGEBATCH_DEPS) ## print MANIFEST's job list and what a run would send (sends nothing)
	$(IMAGEBATCH) plan $(MANIFEST) --out $(OUT)

status: | $(IMAGEBATCH_DEPS) ## count done, failed and pending jobs of MANIFEST (sends nothing)
	$(IMAGEBATCH) status $(MANIFEST) --out $(OUT)

sheet: | $(IMAGEBATCH_DEPS) ## rebuild thumbnails, contact sheets and index.html of MANIFEST from disk
	$(IMAGEBATCH) sheet $(MANIFEST) --out $(OUT)

review: | $(IMAGEBATCH_DEPS) ## the review page of MANIFEST in the browser: pick, reject, rate (Ctrl-C stops)
	$(IMAGEBATCH) review $(MANIFEST) --out $(OUT)

export: | $(IMAGEBATCH_DEPS) ## export MANIFEST's picked images (sizes, formats, assets.json) from disk
	$(IMAGEBATCH) export $(MANIFEST) --out $(OUT) --assets $(ASSETS)
