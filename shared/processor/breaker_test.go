package processor_test

import (
	"errors"
	"testing"
	"time"

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
