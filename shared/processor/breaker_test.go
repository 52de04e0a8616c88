package processor_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

// TestBreakerIgnoresDeliveriesThatMadeNoCall: a delivery that passed the
// breaker but stopped before the webhook call (ErrNotCalled) counts neither
// as a failure nor as a call, and gives its half-open slot back.
func TestBreakerIgnoresDeliveriesThatMadeNoCall(t *testing.T) {
	b := processor.NewLocalBreaker(processor.BreakerSettings{
		Name: "test", FailureRatio: 0.5, MinRequests: 2, Window: time.Minute, Cooldown: time.Second,
	})
	call := func(result error) {
		t.Helper()
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("Allow in state %s: %v", b.State(), err)
		}
		done(result)
	}
	failed := errors.New("HTTP 503")
	call(failed)
	for range 10 {
		call(processor.ErrNotCalled)
	}
	if s := b.State(); s != "closed" {
		t.Fatalf("after one failed call and ten not made: %s, want closed", s)
	}
	call(nil)
	call(failed)
	if s := b.State(); s != "open" {
		t.Fatalf("after two failures in three calls: %s, want open", s)
	}
	time.Sleep(1100 * time.Millisecond)
	// Half-open lets three trial calls through; ones not made give their
	// slot back.
	for range 10 {
		call(processor.ErrNotCalled)
	}
	if s := b.State(); s != "half-open" {
		t.Fatalf("after trials not made: %s, want half-open", s)
	}
	for range 3 {
		call(nil)
	}
	if s := b.State(); s != "closed" {
		t.Fatalf("after three good trial calls: %s, want closed", s)
	}
}

// reportingBreaker lets every call through and keeps what each delivery
// reported to done.
type reportingBreaker struct {
	mu  sync.Mutex
	got []error
}

func (b *reportingBreaker) Allow() (func(error), error) {
	return func(err error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.got = append(b.got, err)
	}, nil
}

func (b *reportingBreaker) State() string { return "closed" }

// TestBreakerIgnoresCallsCutShortByTheirCaller: a call that this side cut
// short (a consumer's drain timeout, a Lambda deadline) says nothing about
// the webhook's health; enough of them would otherwise trip the breaker,
// and through Redis hold off every processor. A call the webhook failed
// still counts.
func TestBreakerIgnoresCallsCutShortByTheirCaller(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	f := setupHeld(t, 0, hold, nil)
	b := &reportingBreaker{}
	p := f.processor(t)
	p.Breaker = b

	// The call is cut short once it has reached the webhook, however
	// long the message took to get there.
	env := f.published(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		for deadline := time.Now().Add(30 * time.Second); f.calls.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}()
	r := p.Handle(ctx, body(env), false)
	if r.Outcome != message.OutcomeRetry || f.calls.Load() != 1 {
		t.Fatalf("call cut short: %+v, %d calls", r, f.calls.Load())
	}

	f2 := setup(t, 0, nil)
	f2.code.Store(http.StatusServiceUnavailable)
	p2 := f2.processor(t)
	p2.Breaker = b
	if r := p2.Handle(context.Background(), body(f2.published(t)), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("503: %+v", r)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.got) != 2 || !errors.Is(b.got[0], processor.ErrNotCalled) || b.got[1] == nil || errors.Is(b.got[1], processor.ErrNotCalled) {
		t.Fatalf("reported to the breaker: %v; want ErrNotCalled for the call cut short, a failure for the 503", b.got)
	}
}

// TestConsecutiveFailuresAgeOut: failures older than the window no longer
// count as failures in a row, even when nothing else asked the breaker for
// its state meanwhile.
func TestConsecutiveFailuresAgeOut(t *testing.T) {
	b := processor.NewLocalBreaker(processor.BreakerSettings{
		Name: "test", FailureRatio: 0.5, MinRequests: 100, Window: 2 * time.Second, Cooldown: time.Second,
	})
	for range 3 {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done(errors.New("HTTP 503"))
	}
	if n := b.ConsecutiveFailures(); n != 3 {
		t.Fatalf("after 3 failed calls: %d in a row, want 3", n)
	}
	time.Sleep(3 * time.Second) // the 2 s window and a bucket past it
	if n := b.ConsecutiveFailures(); n != 0 {
		t.Fatalf("3 s after the last failed call, with a 2 s window: %d in a row, want 0", n)
	}
}
