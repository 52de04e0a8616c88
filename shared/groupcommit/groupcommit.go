// Package groupcommit gathers concurrent calls into batches: while one
// batch is being written, the calls that arrive wait and go out together in
// the next. A lone call is written at once (no linger), so a quiet system
// pays no latency, and a busy one pays one write per batch instead of one
// per call. It is the group commit of databases, used here because the
// embedded MongoDB (SQLite) commits each command in its own transaction.
//
// No goroutine outlives the work: the caller that finds no flush running
// becomes the flusher, and hands over to a goroutine only while calls are
// still pending, which ends when none is. That keeps it correct in a Lambda
// function, whose process is frozen between invocations.
package groupcommit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// FlushFunc writes a batch. It returns one error per item, in order (nil
// for success), or nil for "all succeeded".
type FlushFunc[T any] func(ctx context.Context, items []T) []error

// Group batches calls to Flush. The zero value is not usable: set Flush.
// It is safe for concurrent use.
type Group[T any] struct {
	Flush FlushFunc[T]
	// MaxBatch bounds a batch (default 100).
	MaxBatch int
	// MaxInFlight is how many batches may be written at once (default 1).
	MaxInFlight int
	// Timeout bounds one flush (default 30 s). A batch mixes the calls of
	// several callers, so it is written with a context of its own rather
	// than any caller's.
	Timeout time.Duration
	// Observe, if set, is told each batch's size.
	Observe func(size int)

	mu       sync.Mutex
	pending  []*call[T]
	inFlight int
}

type call[T any] struct {
	ctx  context.Context
	item T
	err  error
	done chan struct{}
	// state moves once from waiting to taken (a flush writes it) or to
	// abandoned (its caller gave up first).
	state atomic.Int32
}

const (
	waiting int32 = iota
	taken
	abandoned
)

// Do adds item to the next batch and returns its result once that batch is
// written. If ctx ends before a flush takes the item, the item is not
// written and Do returns ctx's error; once a flush has taken it, Do waits
// for the flush, so that its result is never unknown to the caller.
func (g *Group[T]) Do(ctx context.Context, item T) error {
	c := &call[T]{ctx: ctx, item: item, done: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, c)
	lead := g.inFlight < max(g.MaxInFlight, 1)
	if lead {
		g.inFlight++
	}
	g.mu.Unlock()
	if lead {
		g.flushUntil(c)
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(waiting, abandoned) {
			return ctx.Err()
		}
		<-c.done
	}
	return c.err
}

// flushUntil writes batches until own is done, then hands the rest over.
func (g *Group[T]) flushUntil(own *call[T]) {
	for {
		if !g.flushOne() {
			return
		}
		select {
		case <-own.done:
			g.mu.Lock()
			idle := len(g.pending) == 0
			if idle {
				g.inFlight--
			}
			g.mu.Unlock()
			if !idle {
				go g.drain()
			}
			return
		default:
		}
	}
}

// drain writes batches until none is pending.
func (g *Group[T]) drain() {
	for g.flushOne() {
	}
}

// flushOne writes the next batch. It returns false, giving up its flush
// slot, when nothing is pending.
//
// Calls whose callers gave up are dropped as the batch is gathered and do
// not count towards MaxBatch: during a slow or failing store, callers that
// time out would otherwise fill the batches, and the queue behind them
// would grow with every retrying client.
func (g *Group[T]) flushOne() bool {
	g.mu.Lock()
	limit := g.maxBatch()
	live := make([]*call[T], 0, min(len(g.pending), limit))
	n := 0
	for ; n < len(g.pending) && len(live) < limit; n++ {
		c := g.pending[n]
		if err := c.ctx.Err(); err != nil && c.state.CompareAndSwap(waiting, abandoned) {
			c.err = err
			close(c.done)
			continue
		}
		if c.state.CompareAndSwap(waiting, taken) {
			live = append(live, c)
		} // else its caller has gone
	}
	rest := copy(g.pending, g.pending[n:])
	clear(g.pending[rest:])
	g.pending = g.pending[:rest]
	if len(live) == 0 {
		// Only abandoned calls were left: nothing is pending now.
		g.inFlight--
		g.mu.Unlock()
		return false
	}
	g.mu.Unlock()

	items := make([]T, len(live))
	for i, c := range live {
		items[i] = c.item
	}
	if g.Observe != nil {
		g.Observe(len(items))
	}
	errs := g.flush(live[0].ctx, items)
	for i, c := range live {
		c.err = errs[i]
		close(c.done)
	}
	return true
}

// flush calls Flush with a context of the batch's own, and turns a panic or
// a result of the wrong length into an error for every item, so that no
// caller waits forever and no item passes for written by mistake.
func (g *Group[T]) flush(ctx context.Context, items []T) (errs []error) {
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			errs = Each(len(items), fmt.Errorf("groupcommit: flush panicked: %v", v))
		}
	}()
	errs = g.Flush(ctx, items)
	switch len(errs) {
	case 0:
		return make([]error, len(items))
	case len(items):
		return errs
	default:
		return Each(len(items), fmt.Errorf("groupcommit: flush returned %d results for %d items", len(errs), len(items)))
	}
}

func (g *Group[T]) maxBatch() int {
	if g.MaxBatch <= 0 {
		return 100
	}
	return g.MaxBatch
}

// Each returns a result slice of n copies of err, for a flush that failed
// as a whole.
func Each(n int, err error) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return errs
}
