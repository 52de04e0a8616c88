package redisstore

import (
	"context"
	"time"
)

// Allow takes one request of client from a limit of perSecond requests a
// second with burst of slack, shared by every process. When it refuses, it
// says when to retry.
func (s *Store) Allow(ctx context.Context, client string, perSecond float64, burst int) (bool, time.Duration, error) {
	wait, ok, err := s.gcra(ctx, s.key("inbound", client), gcraInterval(perSecond), max(burst, 1), 0)
	if err != nil || ok {
		return ok, 0, err
	}
	return false, wait, nil
}
