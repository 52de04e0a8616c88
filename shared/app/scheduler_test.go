package app_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// heldRead makes its first read of the scheduler state wait, having read,
// until release closes.
type heldRead struct {
	outbox.Store
	held    atomic.Bool
	reading chan struct{}
	release chan struct{}
}

func (h *heldRead) SchedulerState(ctx context.Context, def message.SchedulerState) (message.SchedulerState, time.Time, error) {
	state, at, err := h.Store.SchedulerState(ctx, def)
	if h.held.CompareAndSwap(false, true) {
		close(h.reading)
		<-h.release
	}
	return state, at, err
}

// TestGateSeesAStopMadeDuringItsRead: a stop made through this process
// while the fast path's gate was reading the state is seen by the next
// request at once, not replaced by the older state the read brought back.
func TestGateSeesAStopMadeDuringItsRead(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	sched := a.LocalScheduler()
	if _, err := sched.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past the gate's cache
	held := &heldRead{Store: sched.Store, reading: make(chan struct{}), release: make(chan struct{})}
	sched.Store = held
	gate := sched.Gate()
	during := make(chan bool)
	go func() {
		open, err := gate(ctx)
		if err != nil {
			t.Errorf("gate: %v", err)
		}
		during <- open
	}()
	<-held.reading
	if _, err := sched.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	<-during // begun before the stop: either answer is right
	if open, err := gate(ctx); err != nil || open {
		t.Fatalf("gate right after the stop = %v, %v; want closed", open, err)
	}
}

// TestGateTrustsAReadFromItsStart: a slow read of the state is as old as
// its start, not its end: a stop made through another process while it
// read is seen within the gate's cache period of the read's end, not a
// whole period after it.
func TestGateTrustsAReadFromItsStart(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	api, other := a.LocalScheduler(), a.LocalScheduler()
	if _, err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	held := &heldRead{Store: api.Store, reading: make(chan struct{}), release: make(chan struct{})}
	api.Store = held
	gate := api.Gate()
	during := make(chan bool)
	go func() {
		open, _ := gate(ctx)
		during <- open
	}()
	<-held.reading
	if _, err := other.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the read takes longer than the cache period
	close(held.release)
	<-during // begun before the stop: either answer is right
	if open, err := gate(ctx); err != nil || open {
		t.Fatalf("gate right after a slow read that began before the stop = %v, %v; want closed", open, err)
	}
}

// TestBreakerStateWhileTheProcessorStarts: the status and metrics routes
// read the breaker's state while the processor, starting, makes it (in
// role all they serve first); the race detector checks them.
func TestBreakerStateWhileTheProcessorStarts(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, map[string]string{"WEBHOOK_URL": "http://127.0.0.1:1/hook"}))
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.BreakerState(); _ = a.WebhookCheck().Check(context.Background()) })
	wg.Go(func() {
		if _, err := a.Processor(); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	if st := a.BreakerState(); st != "closed" {
		t.Errorf("breaker state = %q, want closed", st)
	}
}

// failingRead fails every read of the scheduler state, after delay, and
// counts them.
type failingRead struct {
	outbox.Store
	delay time.Duration
	reads atomic.Int32
}

func (f *failingRead) SchedulerState(context.Context, message.SchedulerState) (message.SchedulerState, time.Time, error) {
	f.reads.Add(1)
	time.Sleep(f.delay)
	return "", time.Time{}, errors.New("server selection timeout")
}

// TestGateRemembersAFailedRead: with MongoDB failing, requests that arrive
// together share one failed read of the state instead of each queueing
// another behind the outage; the gate tries again once the failure is a
// cache period old, and a start through this process is seen at once.
func TestGateRemembersAFailedRead(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	sched := a.LocalScheduler()
	failing := &failingRead{Store: sched.Store}
	sched.Store = failing
	gate := sched.Gate()
	for range 10 {
		if open, err := gate(ctx); err == nil || open {
			t.Fatalf("gate with the state unreadable = %v, %v; want an error", open, err)
		}
	}
	if n := failing.reads.Load(); n != 1 {
		t.Fatalf("10 gate calls made %d reads, want 1", n)
	}
	time.Sleep(300 * time.Millisecond) // past the cache period
	if _, err := gate(ctx); err == nil || failing.reads.Load() != 2 {
		t.Fatalf("gate after the cache period: %v, %d reads in all; want a second failed read", err, failing.reads.Load())
	}
	sched.Store = a.Store
	if _, err := sched.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if open, err := gate(ctx); err != nil || !open {
		t.Fatalf("gate right after a start = %v, %v; want open", open, err)
	}
}

// TestGateCallersShareARead: requests that find the gate's cache stale at
// the same moment, with MongoDB slow to fail, share one read.
func TestGateCallersShareARead(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	sched := a.LocalScheduler()
	failing := &failingRead{Store: sched.Store, delay: 200 * time.Millisecond}
	sched.Store = failing
	gate := sched.Gate()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if open, err := gate(context.Background()); err == nil || open {
				t.Errorf("gate with the state unreadable = %v, %v; want an error", open, err)
			}
		})
	}
	wg.Wait()
	if n := failing.reads.Load(); n != 1 {
		t.Fatalf("10 concurrent gate calls made %d reads, want 1", n)
	}
	// A caller who gives up does not fail the read for the others.
	sched.Store = a.Store
	time.Sleep(300 * time.Millisecond) // past the remembered failure
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := gate(ctx); err == nil {
		t.Fatal("a gate call whose context had ended: no error")
	}
	if open, err := gate(context.Background()); err != nil || !open {
		t.Fatalf("gate after a caller gave up = %v, %v; want open", open, err)
	}
}

// panickingRead panics on a read of the scheduler state.
type panickingRead struct{ outbox.Store }

func (panickingRead) SchedulerState(context.Context, message.SchedulerState) (message.SchedulerState, time.Time, error) {
	panic("a bug in the store")
}

// TestGateSurvivesAPanickingRead: the shared read runs outside the HTTP
// server's recovery; a store that panics fails the gate's call instead of
// ending the process.
func TestGateSurvivesAPanickingRead(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	sched := a.LocalScheduler()
	sched.Store = panickingRead{sched.Store}
	if open, err := sched.Gate()(context.Background()); err == nil || open {
		t.Fatalf("gate with a store that panics = %v, %v; want an error", open, err)
	}
}
