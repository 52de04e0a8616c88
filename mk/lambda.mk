# Lambda functions. SAM's makefile builder (Metadata: BuildMethod: makefile)
# runs `make build-<LogicalId>` with ARTIFACTS_DIR set; `make build` builds
# all three into build/<function>/bootstrap. The binaries never contain the
# embedded MongoDB or any other local-only code.

LAMBDA_GOOS   ?= linux
LAMBDA_GOARCH ?= arm64
LAMBDA_BUILD   = GOOS=$(LAMBDA_GOOS) GOARCH=$(LAMBDA_GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags "-s -w"

.PHONY: build build-ApiFunction build-PublisherFunction build-ProcessorFunction

build-ApiFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/api

build-PublisherFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/publisher

build-ProcessorFunction:
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/processor

build: ## build the three Lambda bootstraps into build/<function>/bootstrap (linux/arm64)
	$(MAKE) build-ApiFunction ARTIFACTS_DIR=build/api
	$(MAKE) build-PublisherFunction ARTIFACTS_DIR=build/publisher
	$(MAKE) build-ProcessorFunction ARTIFACTS_DIR=build/processor
	@ls -l build/*/bootstrap
