package app

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// StoreScheduler keeps the publisher's schedule state in MongoDB, so that
// POST /scheduler/stop on one process stops a publisher running in another.
// It is local mode's scheduler; in Lambda the state is the EventBridge
// schedule's.
type StoreScheduler struct {
	Store   outbox.Store
	Default message.SchedulerState
	Now     func() time.Time

	mu       sync.Mutex
	cached   message.SchedulerState
	cachedAt time.Time
	// readErr is the gate's last failed read, returned without a read
	// until gateCacheTTL after readAt: with MongoDB down or slow, every
	// POST would otherwise queue one more read behind it.
	readErr error
	readAt  time.Time
	// reads makes the gate's callers share one read in flight.
	reads singleflight.Group
	// sets counts the changes made through this process, so that a read
	// begun before one does not replace what it wrote.
	sets uint64
}

// gateCacheTTL bounds how long the API's fast path trusts the state it last
// read: one read per request would double the database reads of POST
// /messages. A stop made through another process is seen within it; one
// made through this process at once.
const gateCacheTTL = 250 * time.Millisecond

var _ httpapi.Scheduler = (*StoreScheduler)(nil)

// errSchedulerUnavailable makes a store failure a 503 with Retry-After, as
// on every other route, instead of a 500.
var errSchedulerUnavailable = &message.Error{Code: message.EUNAVAILABLE, Message: "the publisher state cannot be read or changed right now; try again"}

// Status implements httpapi.Scheduler.
func (s *StoreScheduler) Status(ctx context.Context) (httpapi.SchedulerStatus, error) {
	state, at, err := s.Store.SchedulerState(ctx, s.Default)
	if err != nil {
		return httpapi.SchedulerStatus{}, fmt.Errorf("%w: %w", errSchedulerUnavailable, err)
	}
	st := httpapi.SchedulerStatus{State: state, Backend: "mongodb"}
	if !at.IsZero() {
		st.UpdatedAt = &at
	}
	return st, nil
}

// Start implements httpapi.Scheduler.
func (s *StoreScheduler) Start(ctx context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(ctx, message.SchedulerStarted)
}

// Stop implements httpapi.Scheduler.
func (s *StoreScheduler) Stop(ctx context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(ctx, message.SchedulerStopped)
}

func (s *StoreScheduler) set(ctx context.Context, state message.SchedulerState) (httpapi.SchedulerStatus, error) {
	if err := s.Store.SetSchedulerState(ctx, state, s.Now().UTC()); err != nil {
		return httpapi.SchedulerStatus{}, fmt.Errorf("%w: %w", errSchedulerUnavailable, err)
	}
	s.mu.Lock()
	s.cached, s.cachedAt = state, time.Now()
	s.readErr = nil
	s.sets++
	s.mu.Unlock()
	return s.Status(ctx)
}

// gateReadTimeout bounds the gate's shared read of the state. It does not
// run on any one request's context, so that a caller who gives up does not
// fail the read for the others waiting on it.
const gateReadTimeout = 2 * time.Second

// Gate returns the outbox gate: open while the stored state is started.
// Callers that find the cache stale at the same moment share one read, and
// a failed read is returned again, without a read, for gateCacheTTL: with
// MongoDB slow or down, the requests arriving meanwhile do not each queue
// another read behind it.
func (s *StoreScheduler) Gate() outbox.Gate {
	return func(ctx context.Context) (bool, error) {
		s.mu.Lock()
		state, fresh := s.cached, time.Since(s.cachedAt) < gateCacheTTL
		readErr := s.readErr
		if readErr != nil && time.Since(s.readAt) >= gateCacheTTL {
			readErr = nil
		}
		s.mu.Unlock()
		if fresh {
			return state == message.SchedulerStarted, nil
		}
		if readErr != nil {
			return false, readErr
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		select {
		case r := <-s.reads.DoChan("state", s.read):
			if r.Err != nil {
				return false, r.Err
			}
			return r.Val.(message.SchedulerState) == message.SchedulerStarted, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// read reads the state for the gate and remembers the outcome. A start or
// stop made through this process while it read is newer than what it read,
// and wins.
func (s *StoreScheduler) read() (_ any, err error) {
	// singleflight re-raises a panic on a goroutine of its own, past the
	// HTTP server's recovery: a store that panics fails the read instead.
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("read the publisher state: panic: %v", v)
		}
	}()
	s.mu.Lock()
	sets := s.sets
	s.mu.Unlock()
	// What the read brings back is as old as its start: a stop stored
	// while it ran is seen within gateCacheTTL of its end.
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), gateReadTimeout)
	defer cancel()
	state, _, err := s.Store.SchedulerState(ctx, s.Default)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sets != sets {
		return s.cached, nil
	}
	if err != nil {
		s.readErr, s.readAt = err, time.Now()
		return nil, err
	}
	s.cached, s.cachedAt = state, began
	s.readErr = nil
	return state, nil
}

// LocalScheduler returns the MongoDB-backed scheduler of local mode.
func (a *App) LocalScheduler() *StoreScheduler {
	return &StoreScheduler{Store: a.Store, Default: message.SchedulerState(a.Config.SchedulerInitialState), Now: a.Now}
}
