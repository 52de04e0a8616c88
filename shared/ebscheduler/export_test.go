package ebscheduler

import "time"

// SetClock makes s read the time from now, so that tests can move past its
// cache period without waiting for it.
func SetClock(s *Scheduler, now func() time.Time) { s.now = now }

// CacheTTL returns how long s's gate trusts a read of the schedule, and
// remembers a failed one.
func CacheTTL(s *Scheduler) time.Duration { return s.cacheTTL }
