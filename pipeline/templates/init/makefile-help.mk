.DEFAULT_GOAL := help
.PHONY: help

help: ## list the targets
	@grep -hE '^[a-z%/.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

