# The two commands that matter: `make run` and `make test`. Everything they
# need is fetched or built here; RabbitMQ and Redis must be running locally
# (scripts/check-services.sh says how to start them).

GO        ?= go
BIN       := bin/rms
LOCALTAGS := ferretdb_no_postgresql
# The tests and the chaos runs use the local RabbitMQ and
# Redis whatever RABBITMQ_URI and REDIS_URI say; make run uses those.
LOCAL_ONLY  := env -u RABBITMQ_URI -u REDIS_URI
GOTEST    := $(LOCAL_ONLY) $(GO) test -race -count=1 -tags $(LOCALTAGS)
FUZZTIME  ?= 10s
CHECK_LOCAL := $(LOCAL_ONLY) scripts/check-services.sh
# Where the embedded MongoDB keeps its files: DATA_DIR as the binary reads it
# (unset or empty: ./.data). Only clean-data uses it.
DATA_DIR  := $(or $(DATA_DIR),./.data)

.PHONY: run setup test fuzz vet build-local dev-deps clean clean-data help

help: ## list the targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

run: ## run the whole system in the foreground (Ctrl-C stops it)
	@scripts/check-services.sh
	@$(MAKE) --no-print-directory build-local
	$(BIN) all

setup: build-local ## declare the RabbitMQ exchange and queues and the MongoDB indexes (idempotent), then exit
	$(BIN) setup

build-local: ## build the local binary (bin/rms) with the embedded MongoDB
	$(GO) build -tags $(LOCALTAGS) -trimpath -o $(BIN) ./local

test: ## run every test with the race detector, plus short fuzz runs (services checked first, then vet)
	@$(CHECK_LOCAL) --tools
	@$(MAKE) --no-print-directory vet
	$(GOTEST) -timeout 30m ./...
	$(MAKE) fuzz

fuzz: ## run each fuzz test for FUZZTIME (scripts/fuzz.sh tells Go 1.26's fuzztime race from a finding)
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) FuzzCreateMessage ./shared/httpapi/ -tags $(LOCALTAGS)
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) FuzzDecodeEnvelope ./shared/processor/ -tags $(LOCALTAGS)
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) FuzzURL ./shared/redact/

vet: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(LOCALTAGS) ./...

dev-deps: ## download the Go modules
	$(GO) mod download

clean: ## remove build output (bin, build, .aws-sam); the stored messages stay
	rm -rf bin build .aws-sam

clean-data: ## DELETE DATA_DIR (./.data), the embedded MongoDB: every stored message is lost (stop make run first)
	rm -rf -- '$(DATA_DIR)'
include mk/*.mk
