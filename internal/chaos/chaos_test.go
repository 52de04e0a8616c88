package chaos_test

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/chaos"
)

var (
	long     = flag.Bool("chaos", false, "run the long chaos scenario (make chaos)")
	messages = flag.Int("chaos.messages", 3000, "messages the long scenario posts")
	rate     = flag.Float64("chaos.rate", 20, "messages per second the long scenario posts")
	faults   = flag.Int("chaos.faults", 0, "random faults in the long scenario (0: one per 8 s of load)")
	seed     = flag.Uint64("chaos.seed", 0, "seed of the fault schedule and the webhook (0: random, printed)")
	race     = flag.Bool("chaos.race", false, "build the system with the race detector")
	logs     = flag.String("chaos.logs", "", "copy the processes' logs to this directory")
	settle   = flag.Duration("chaos.settle", 5*time.Minute, "how long the long scenario waits for the last messages")
	kinds    = flag.String("chaos.kinds", "", "comma-separated fault kinds of the long scenario (default: all of them)")
	outage   = flag.Duration("chaos.outage", 5*time.Second, "longest broker cut or Redis loss (the shortest is 2s)")
	envFlag  = flag.String("chaos.env", "", "comma-separated KEY=VALUE settings of the system for the long scenarios (PROCESSOR_CONCURRENCY=64,...)")
)

// env parses -chaos.env.
func env(t *testing.T) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(*envFlag, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("-chaos.env: %q is not KEY=VALUE", kv)
		}
		m[k] = v
	}
	return m
}

// TestFaultsQuick is the fast scenario `make test` runs: a few hundred
// messages through one kill -9 of the processor, one broker cut and one
// loss of Redis.
func TestFaultsQuick(t *testing.T) {
	sum := chaos.Run(t, chaos.Options{
		Messages: 300,
		Rate:     25,
		Seed:     *seed,
		Faults:   []string{chaos.KillProcessor, chaos.CutBroker, chaos.LoseRedis},
		Race:     *race,
		KeepLogs: *logs,
	})
	check(t, sum)
}

// TestChaos is the long scenario: thousands of messages and a random fault
// every few seconds. It runs only with -chaos (make chaos): it takes
// minutes, so `go test ./...` passes over it.
func TestChaos(t *testing.T) {
	if !*long {
		t.Skip("a long scenario, run by make chaos (-chaos)")
	}
	n := *faults
	if n == 0 {
		n = max(int(float64(*messages) / *rate / 8), 1)
	}
	pool := chaos.AllFaults
	if *kinds != "" {
		pool = strings.Split(*kinds, ",")
	}
	sum := chaos.Run(t, chaos.Options{
		Messages:      *messages,
		Rate:          *rate,
		Seed:          *seed,
		Faults:        pool, // every kind at least once
		Random:        max(n-len(pool), 0),
		Pool:          pool,
		Race:          *race,
		KeepLogs:      *logs,
		SettleTimeout: *settle,
		OutageMin:     min(2*time.Second, *outage),
		OutageMax:     *outage,
		Env:           env(t),
	})
	check(t, sum)
}

// TestChaosScheduledBurst schedules every message for the same moment, so
// that the publisher finds hundreds of due entries at once, and injects no
// fault: the embedded MongoDB must take a full relay batch. It runs with
// -chaos (make chaos).
func TestChaosScheduledBurst(t *testing.T) {
	if !*long {
		t.Skip("a long scenario, run by make chaos (-chaos)")
	}
	sum := chaos.Run(t, chaos.Options{
		Messages:      300,
		Rate:          60,
		Seed:          *seed,
		SendAtBurst:   15 * time.Second,
		Race:          *race,
		KeepLogs:      *logs,
		SettleTimeout: 90 * time.Second,
		Env:           env(t),
	})
	check(t, sum)
}

func check(t *testing.T, sum chaos.Summary) {
	t.Helper()
	if sum.Accepted == 0 {
		t.Fatal("no message was accepted")
	}
	if sum.NotAccepted > 0 {
		t.Errorf("%d messages were never accepted: %s", sum.NotAccepted, strings.Join(first(sum.ClientErrors), "; "))
	}
	if sum.Stuck > 0 {
		t.Errorf("%d messages were stuck until every role was restarted", sum.Stuck)
	}
	if len(sum.Lost) > 0 {
		t.Errorf("%d accepted messages lost: %s", len(sum.Lost), strings.Join(first(sum.Lost), "; "))
	}
	if len(sum.Unexplained) > 0 {
		t.Errorf("%d duplicates outside the crash/timeout window: %s", len(sum.Unexplained), strings.Join(first(sum.Unexplained), "; "))
	}
	if len(sum.FailedNotNotified) > 0 {
		t.Errorf("%d FAILED messages without a DLQ notification: %s", len(sum.FailedNotNotified), strings.Join(first(sum.FailedNotNotified), "; "))
	}
	if len(sum.RetryViolations) > 0 {
		t.Errorf("%d retries came too early: %s", len(sum.RetryViolations), strings.Join(first(sum.RetryViolations), "; "))
	}
	if len(sum.DataRaces) > 0 {
		t.Errorf("%d data races reported by the system's processes (see DATA RACES above)", len(sum.DataRaces))
	}
	if len(sum.SentWithoutAcceptance) > 0 {
		t.Errorf("%d messages SENT though the webhook never accepted them: %s", len(sum.SentWithoutAcceptance), strings.Join(first(sum.SentWithoutAcceptance), "; "))
	}
}

func first(l []string) []string { return l[:min(len(l), 3)] }
