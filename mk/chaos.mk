# Chaos testing (internal/chaos, docs/chaos.md): the local binary's roles run
# as separate processes under load while kill -9, broker cuts, Redis losses
# and webhook outages strike at random moments; the run then checks that
# nothing accepted was lost, that the webhook saw duplicates only in the
# documented window, that every FAILED message was notified and that every
# retry backed off. The quick scenario (TestFaultsQuick) runs in `make test`.

CHAOS_MESSAGES ?= 3000
CHAOS_RATE     ?= 20
CHAOS_SEED     ?= 0
CHAOS_FLAGS    ?=

.PHONY: chaos

chaos: ## long chaos runs: CHAOS_MESSAGES at CHAOS_RATE/s with a random fault every ~8 s, then a scheduled burst (CHAOS_SEED=n repeats)
	@$(CHECK_LOCAL)
	$(GO) test -tags $(LOCALTAGS) -run '^TestChaos' -count=1 -timeout 30m -v ./internal/chaos/ \
		-args -chaos -chaos.messages=$(CHAOS_MESSAGES) -chaos.rate=$(CHAOS_RATE) -chaos.seed=$(CHAOS_SEED) $(CHAOS_FLAGS)
