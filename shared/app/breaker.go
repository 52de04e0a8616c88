package app

import (
	"context"
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
type sharedBreaker struct {
	local    *processor.LocalBreaker
	redis    *redisstore.Store
	cooldown time.Duration

	mu        sync.Mutex
	openUntil time.Time
	checked   time.Time
}

var _ processor.Breaker = (*sharedBreaker)(nil)

// sharedCheckEvery bounds how often a process reads the shared state.
const sharedCheckEvery = 500 * time.Millisecond

func (b *sharedBreaker) Allow() (func(error), error) {
	if b.sharedOpen() {
		return nil, gobreaker.ErrOpenState
	}
	return b.local.Allow()
}

func (b *sharedBreaker) State() string {
	if b.sharedOpen() {
		return "open"
	}
	return b.local.State()
}

func (b *sharedBreaker) sharedOpen() bool {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.checked) >= sharedCheckEvery {
		b.checked = now
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		d, err := b.redis.CircuitOpenFor(ctx, "webhook")
		cancel()
		if err == nil {
			b.openUntil = now.Add(d)
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
