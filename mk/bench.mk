# The benchmark (docs/bench.md): the system as separate processes (rms
# mongodb, api, publisher, processor) on an empty embedded MongoDB, driven
# and measured by bench/. Flags go through BENCHFLAGS, for example
# `make bench BENCHFLAGS='-n 5000 -rate 500'`; settings of the system
# (PROCESSOR_CONCURRENCY, BATCH_SIZE, ...) through the environment.

BENCHFLAGS ?=

.PHONY: bench bench-quick

bench: build ## measure throughput, latency, CPU, memory, raw limits and the Lambda bootstraps (BENCHFLAGS)
	@scripts/check-services.sh
	$(GO) run ./bench -lambda-dir build $(BENCHFLAGS)

bench-quick: ## the benchmark's short run: 2000 messages, then 300 msgs/s for 5 s
	@$(MAKE) --no-print-directory bench BENCHFLAGS='-quick $(BENCHFLAGS)'
