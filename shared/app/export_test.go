package app

import (
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
