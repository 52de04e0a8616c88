# Running the Lambda functions on this machine: the AWS Lambda Runtime
# Interface Emulator (RIE) runs a function's bootstrap and takes events over
# HTTP, as `sam local invoke` does inside its container, but with no Docker.
# internal/lambdatest runs every events/*.json fixture through it.
#
# The RIE has no tagged release: the module proxy serves a pseudo-version,
# pinned here (resolved with
# `go list -m -json github.com/aws/aws-lambda-runtime-interface-emulator@latest`).
# `go install pkg@version` builds it outside this module, so go.mod is left alone.

RIE_VERSION := v0.0.0-20261030222936-bef5c4ba774d
RIE         := bin/aws-lambda-rie

.PHONY: invoke

# The binary is rebuilt when this file (and so, maybe, RIE_VERSION) changes.
$(RIE): mk/invoke.mk
	GOBIN=$(CURDIR)/bin $(GO) install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)
	@touch $@

# The command is built, then run (not `go run`, which adds its own "exit
# status" line after the function's response).
invoke: $(RIE) ## run an event through a Lambda function under the RIE (make invoke FUNCTION=api EVENT=events/api-status.json)
	@if [ -z "$(FUNCTION)" ] || [ -z "$(EVENT)" ]; then \
		echo "usage: make invoke FUNCTION=api|publisher|processor EVENT=events/<file>.json (the fixtures are listed in events/README.md)" >&2; \
		exit 2; \
	fi
	@$(GO) build -tags $(LOCALTAGS) -o bin/invoke ./internal/cmd/invoke
	@bin/invoke -function '$(FUNCTION)' -event '$(EVENT)' -rie $(RIE)
