# Lambda functions. SAM's makefile builder (Metadata: BuildMethod: makefile)
# runs `make build-<LogicalId>` with ARTIFACTS_DIR set; `make build` builds
# all three into build/<function>/bootstrap. The binaries never contain the
# embedded MongoDB or any other local-only code.

LAMBDA_GOOS   ?= linux
LAMBDA_GOARCH ?= arm64
LAMBDA_BUILD   = GOOS=$(LAMBDA_GOOS) GOARCH=$(LAMBDA_GOARCH) CGO_ENABLED=0 $(GO) build -tags lambda.norpc -trimpath -ldflags "-s -w"

# CA bundles a database needs (DocumentDB's global-bundle.pem) go in certs/;
# they are packaged next to bootstrap, in /var/task at run time.
COPY_CERTS = @if ls certs/*.pem >/dev/null 2>&1; then cp certs/*.pem $(ARTIFACTS_DIR)/; fi
# A build target run by hand without ARTIFACTS_DIR would write to /bootstrap.
NEED_ARTIFACTS_DIR = @if [ -z '$(ARTIFACTS_DIR)' ]; then echo 'ARTIFACTS_DIR is not set: sam build sets it; by hand, use make build' >&2; exit 2; fi

.PHONY: build build-ApiFunction build-PublisherFunction build-ProcessorFunction

build-ApiFunction:
	$(NEED_ARTIFACTS_DIR)
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/api
	$(COPY_CERTS)

build-PublisherFunction:
	$(NEED_ARTIFACTS_DIR)
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/publisher
	$(COPY_CERTS)

build-ProcessorFunction:
	$(NEED_ARTIFACTS_DIR)
	$(LAMBDA_BUILD) -o $(ARTIFACTS_DIR)/bootstrap ./functions/processor
	$(COPY_CERTS)

build: ## build the three Lambda bootstraps into build/<function>/bootstrap (linux/arm64)
	$(MAKE) build-ApiFunction ARTIFACTS_DIR=build/api
	$(MAKE) build-PublisherFunction ARTIFACTS_DIR=build/publisher
	$(MAKE) build-ProcessorFunction ARTIFACTS_DIR=build/processor
	@ls -l build/*/bootstrap
