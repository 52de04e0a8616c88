package redisstore

import (
	"context"
	"time"
)

// OpenCircuit records for every process that the circuit name is open for d.
func (s *Store) OpenCircuit(ctx context.Context, name string, d time.Duration) error {
	return s.client.Set(ctx, s.key("circuit", name), "open", d).Err()
}

// CircuitOpenFor returns how much longer the shared circuit name stays open;
// 0 when it is closed.
func (s *Store) CircuitOpenFor(ctx context.Context, name string) (time.Duration, error) {
	d, err := s.client.PTTL(ctx, s.key("circuit", name)).Result()
	if err != nil || d < 0 {
		return 0, err
	}
	return d, nil
}
