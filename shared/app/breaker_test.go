package app_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

func newSharedBreaker(t *testing.T, now func() time.Time) (processor.Breaker, *redisstore.Store) {
	t.Helper()
	testenv.RequireServices(t)
	store, err := redisstore.Open(t.Context(), config.RedisOptions{Addr: testenv.RedisAddr}, testenv.Name(t)+":")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return app.NewSharedBreaker(store, now), store
}

// TestSharedBreakerFollowsRedis: the circuit another process opened reads
// as open here within app.SharedCheckEvery, and as closed once it has closed;
// a closed circuit never reads as open, even to a caller whose clock
// reading is older than the last check (the race that deferred about one
// delivery in 40,000 for a whole cool-down under make bench).
func TestSharedBreakerFollowsRedis(t *testing.T) {
	base := time.Now()
	var clock atomic.Int64 // offset from base
	b, store := newSharedBreaker(t, func() time.Time { return base.Add(time.Duration(clock.Load())) })

	clock.Store(int64(time.Second))
	if _, err := b.Allow(); err != nil {
		t.Fatalf("closed circuit: %v", err)
	}
	clock.Store(0) // a caller that read the clock before that check
	if _, err := b.Allow(); err != nil {
		t.Fatalf("closed circuit, earlier clock reading: %v", err)
	}

	if err := store.OpenCircuit(t.Context(), "webhook", time.Minute); err != nil {
		t.Fatal(err)
	}
	clock.Store(int64(time.Second + app.SharedCheckEvery))
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("circuit opened by another process: %v", err)
	}
	if got := b.State(); got != "open" {
		t.Fatalf("State() = %q", got)
	}

	if err := store.OpenCircuit(t.Context(), "webhook", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the key expires
	clock.Store(int64(time.Second + 2*app.SharedCheckEvery))
	if _, err := b.Allow(); err != nil {
		t.Fatalf("after the shared circuit closed: %v", err)
	}
}

// TestSharedBreakerClosedUnderConcurrency: with the circuit closed, no
// concurrent Allow is refused across several checks of Redis. Under the
// race detector it caught the old code in most runs (62 refusals in 930,000
// calls); the clock test above catches it always.
func TestSharedBreakerClosedUnderConcurrency(t *testing.T) {
	b, _ := newSharedBreaker(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 3*app.SharedCheckEvery)
	defer cancel()
	var refused, calls atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for ctx.Err() == nil {
				calls.Add(1)
				done, err := b.Allow()
				if err != nil {
					refused.Add(1)
					continue
				}
				done(nil)
			}
		})
	}
	wg.Wait()
	if refused.Load() > 0 {
		t.Fatalf("%d of %d calls refused with the circuit closed", refused.Load(), calls.Load())
	}
}

// sharedOpenFor is how long the tests open the shared circuit for: long
// enough that the check after the open, a Redis round trip, sees it open on
// a loaded machine, and short enough to wait out.
const sharedOpenFor = time.Second

// TestSharedBreakerHalfOpensWhenTheSharedCircuitCloses: a process that saw
// the shared circuit open does not go back to full traffic when it closes:
// it makes three trial calls at a time, like the process that tripped.
// A trial that succeeds closes the circuit here; one that fails opens it
// again for every process; one not made gives its place back.
func TestSharedBreakerHalfOpensWhenTheSharedCircuitCloses(t *testing.T) {
	base := time.Now()
	var clock atomic.Int64
	b, store := newSharedBreaker(t, func() time.Time { return base.Add(time.Duration(clock.Load())) })
	step := func() { clock.Add(int64(app.SharedCheckEvery)) }
	openThenClose := func() {
		t.Helper()
		if err := store.OpenCircuit(t.Context(), "webhook", sharedOpenFor); err != nil {
			t.Fatal(err)
		}
		step()
		if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
			t.Fatalf("with the shared circuit open: %v", err)
		}
		time.Sleep(sharedOpenFor + 100*time.Millisecond) // the key expires
		step()
	}

	openThenClose()
	var trials []func(error)
	for range 3 {
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("trial call %d: %v", len(trials)+1, err)
		}
		trials = append(trials, done)
	}
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrTooManyRequests) {
		t.Fatalf("a fourth call while three trials run: %v", err)
	}
	if got := b.State(); got != "half-open" {
		t.Fatalf("State() = %q, want half-open", got)
	}
	trials[0](processor.ErrNotCalled)
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("after a trial not made: %v", err)
	}
	done(nil)
	for i := range 10 {
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("call %d after a trial succeeded: %v", i, err)
		}
		done(nil)
	}
	trials[1](nil)
	trials[2](nil)

	openThenClose()
	done, err = b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	done(errors.New("HTTP 503"))
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("after a failed trial: %v, want open", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		d, err := store.CircuitOpenFor(t.Context(), "webhook")
		if err == nil && d > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a failed trial did not open the shared circuit: %v %v", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Until the cool-down ends it stays open here, even to a read of
	// Redis that finds no key (the failed trial's write had not landed).
	if err := store.OpenCircuit(t.Context(), "webhook", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the key expires
	step()
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("after a failed trial, Redis read without the key: %v, want open", err)
	}
}

// TestSharedBreakerStateDuringATrial: State says open, not half-open, while
// this process's own breaker is open during a trial the shared circuit's
// closing started: its calls are refused, as an open circuit's are.
func TestSharedBreakerStateDuringATrial(t *testing.T) {
	base := time.Now()
	var clock atomic.Int64
	b, store := newSharedBreaker(t, func() time.Time { return base.Add(time.Duration(clock.Load())) })
	for i := range 20 { // the local breaker trips (MinRequests 20, ratio 0.5)
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("failing call %d: %v", i, err)
		}
		done(errors.New("HTTP 503"))
	}
	if err := store.OpenCircuit(t.Context(), "webhook", sharedOpenFor); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(app.SharedCheckEvery))
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("with the shared circuit open: %v", err)
	}
	time.Sleep(sharedOpenFor + 100*time.Millisecond) // the key expires: a trial starts
	clock.Add(int64(app.SharedCheckEvery))
	if _, err := b.Allow(); !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("a trial with the local breaker open: %v, want it refused as open", err)
	}
	if got := b.State(); got != "open" {
		t.Fatalf("State() = %q during a trial with the local breaker open, want open", got)
	}
}
