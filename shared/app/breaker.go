package app

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

// sharedBreaker is the webhook circuit breaker of one process, whose
// opening every other process (and Lambda instance) hears of through Redis:
// when any of them trips, all of them hold their deliveries for the
// cool-down. Counting stays local; gobreaker's distributed breaker would
// cost a Redis lock and two round trips on every delivery. While Redis is
// down each process falls back to its own breaker.
//
// When the shared circuit closes, a process that saw it open goes half-open
// as the one that tripped does: trialCalls calls at a time until one
// succeeds (closed) or fails (open again, for everyone). Otherwise every
// other process would go from holding off straight to its full concurrency
// against a webhook that may still be down.
type sharedBreaker struct {
	local    *processor.LocalBreaker
	redis    *redisstore.Store
	cooldown time.Duration
	now      func() time.Time // time.Now, or a test's clock

	mu        sync.Mutex
	openUntil time.Time // zero while the shared circuit is known closed
	checked   time.Time
	checking  bool
	trial     bool      // half-open after the shared circuit closed
	trials    int       // trial calls in flight
	ownOpen   time.Time // until when a failed trial here opened the circuit
}

// trialCalls is how many calls a half-open process makes at a time, as
// gobreaker's MaxRequests in the local breaker.
const trialCalls = 3

var _ processor.Breaker = (*sharedBreaker)(nil)

// sharedCheckEvery bounds how often a process reads the shared state.
const sharedCheckEvery = 500 * time.Millisecond

func (b *sharedBreaker) Allow() (func(error), error) {
	if b.sharedOpen() {
		return nil, gobreaker.ErrOpenState
	}
	b.mu.Lock()
	if !b.trial {
		b.mu.Unlock()
		return b.local.Allow()
	}
	if b.trials >= trialCalls {
		b.mu.Unlock()
		return nil, gobreaker.ErrTooManyRequests
	}
	b.trials++
	b.mu.Unlock()
	done, err := b.local.Allow()
	if err != nil {
		b.trialDone(processor.ErrNotCalled)
		return nil, err
	}
	return func(err error) {
		done(err)
		b.trialDone(err)
	}, nil
}

// trialDone ends a trial call: a success closes the circuit here, a failure
// opens it again for every process; a call not made gives its place back.
func (b *sharedBreaker) trialDone(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.trials--
	if !b.trial || errors.Is(err, processor.ErrNotCalled) {
		return
	}
	b.trial = false
	if err != nil {
		// Open here at once, whatever Redis says until it has the key.
		b.ownOpen = b.now().Add(b.cooldown)
		b.openUntil = b.ownOpen
		b.opened()
	}
}

func (b *sharedBreaker) State() string {
	if b.sharedOpen() {
		return "open"
	}
	b.mu.Lock()
	trial := b.trial
	b.mu.Unlock()
	if local := b.local.State(); !trial || local == "open" {
		return local
	}
	return "half-open"
}

// sharedOpen says whether another process opened the circuit. One caller at
// a time reads Redis, without holding the lock, so that a slow Redis never
// holds up the other deliveries; they use the last answer meanwhile.
func (b *sharedBreaker) sharedOpen() bool {
	b.mu.Lock()
	now := b.now()
	check := !b.checking && now.Sub(b.checked) >= sharedCheckEvery
	if check {
		b.checking = true
		b.checked = now
	}
	open := now.Before(b.openUntil)
	b.mu.Unlock()
	if !check {
		return open
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	d, err := b.redis.CircuitOpenFor(ctx, "webhook")
	cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.checking = false
	now = b.now()
	if err == nil {
		// Closed is the zero time, not now: a caller that read the clock
		// a moment earlier must not find itself before it and see the
		// circuit open (it did, about one delivery in 40,000 under load,
		// each held for the whole cool-down).
		wasOpen := !b.openUntil.IsZero()
		b.openUntil = time.Time{}
		switch {
		case d > 0:
			b.openUntil = now.Add(d)
			b.trial = false
		case now.Before(b.ownOpen):
			// A failed trial here opened it; the write to Redis may
			// not have landed yet.
			b.openUntil = b.ownOpen
		case wasOpen:
			b.trial = true
		}
	}
	return now.Before(b.openUntil)
}

// opened tells the other processes that this one's circuit opened.
func (b *sharedBreaker) opened() {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = b.redis.OpenCircuit(ctx, "webhook", b.cooldown)
	}()
}
