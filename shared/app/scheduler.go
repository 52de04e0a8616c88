package app

import (
	"context"
	"fmt"
	"sync"
	"time"

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

// Gate returns the outbox gate: open while the stored state is started.
func (s *StoreScheduler) Gate() outbox.Gate {
	return func(ctx context.Context) (bool, error) {
		s.mu.Lock()
		state, fresh, sets := s.cached, time.Since(s.cachedAt) < gateCacheTTL, s.sets
		readErr := s.readErr
		if readErr != nil && time.Since(s.readAt) >= gateCacheTTL {
			readErr = nil
		}
		s.mu.Unlock()
		if !fresh && readErr != nil {
			return false, readErr
		}
		if !fresh {
			var err error
			if state, _, err = s.Store.SchedulerState(ctx, s.Default); err != nil {
				s.mu.Lock()
				if s.sets == sets && ctx.Err() == nil { // not this request's own end
					s.readErr, s.readAt = err, time.Now()
				}
				s.mu.Unlock()
				return false, err
			}
			s.mu.Lock()
			if s.sets == sets {
				s.cached, s.cachedAt = state, time.Now()
				s.readErr = nil
			} else {
				// A start or stop through this process landed while
				// the read ran: it is newer than what was read.
				state = s.cached
			}
			s.mu.Unlock()
		}
		return state == message.SchedulerStarted, nil
	}
}

// LocalScheduler returns the MongoDB-backed scheduler of local mode.
func (a *App) LocalScheduler() *StoreScheduler {
	return &StoreScheduler{Store: a.Store, Default: message.SchedulerState(a.Config.SchedulerInitialState), Now: a.Now}
}
