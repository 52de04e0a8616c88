package processor

import (
	"context"
	"sync"
	"time"
)

// Backoff is a pause that grows while the stores keep failing: 100 ms,
// doubling up to Max, and from 100 ms again after Reset. A consumer waits it
// out before handing back work it could not record, so that during an
// outage it stops taking new work instead of spinning through the queue.
// It is safe for concurrent use: the workers of one consumer share it.
type Backoff struct {
	Max time.Duration // 0: 5 s

	mu sync.Mutex
	d  time.Duration
}

// Next grows the pause and returns it.
func (b *Backoff) Next() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.Max
	if limit <= 0 {
		limit = 5 * time.Second
	}
	b.d = min(max(2*b.d, 100*time.Millisecond), limit)
	return b.d
}

// Wait sleeps for Next, or until ctx ends.
func (b *Backoff) Wait(ctx context.Context) {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Reset starts the pause over: the stores answered.
func (b *Backoff) Reset() {
	b.mu.Lock()
	b.d = 0
	b.mu.Unlock()
}
