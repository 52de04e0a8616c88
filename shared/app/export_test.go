package app

import (
	"context"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

// SharedCheckEvery and NewSharedBreaker let the external tests reach the
// shared breaker.
const SharedCheckEvery = sharedCheckEvery

func NewSharedBreaker(redis *redisstore.Store, now func() time.Time) processor.Breaker {
	if now == nil {
		now = time.Now
	}
	local := processor.NewLocalBreaker(processor.BreakerSettings{Name: "webhook", FailureRatio: 0.5, MinRequests: 20, Window: 30 * time.Second, Cooldown: 15 * time.Second})
	return &sharedBreaker{local: local, redis: redis, cooldown: 15 * time.Second, now: now}
}

// StandInKeep is how long a's writes to the inbox stand-in may matter.
func (a *App) StandInKeep() time.Duration { return a.guards.standInKeep }

// SetStandInMarkedUntil sets until when a last recorded the stand-in in use.
func (a *App) SetStandInMarkedUntil(t time.Time) { a.guards.markedUntil.Store(t.UnixNano()) }

// StandInUsed is a's guards' standInUsed, with a first reading in flight
// if reading.
func (a *App) StandInUsed(ctx context.Context, reading bool) bool {
	a.guards.used.Lock()
	a.guards.used.reading = reading
	a.guards.used.Unlock()
	return a.guards.standInUsed(ctx)
}
