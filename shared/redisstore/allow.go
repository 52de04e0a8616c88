package redisstore

import (
	"context"
	"strconv"
	"time"
)

// Allow takes one request of client from a limit of perSecond requests a
// second with burst of slack, shared by every process. When it refuses, it
// says when to retry.
func (s *Store) Allow(ctx context.Context, client string, perSecond float64, burst int) (bool, time.Duration, error) {
	interval := strconv.FormatFloat(1e6/perSecond, 'f', 3, 64)
	us, err := gcraScript.Run(ctx, s.client, []string{s.key("inbound", client)}, interval, max(burst, 1), 0).Int64()
	if err != nil {
		return false, 0, err
	}
	if us < 0 {
		return false, time.Duration(-us) * time.Microsecond, nil
	}
	return true, 0, nil
}
