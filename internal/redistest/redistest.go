// Package redistest is what tests need of the local Redis: where it is, how
// to start it, and removing a test's keys. It imports nothing of the
// project, so that any test can use it.
package redistest

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Addr is the local Redis on a developer's machine and in CI.
const Addr = "127.0.0.1:6379"

// Start is the command that starts it.
const Start = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir "${TMPDIR:-/tmp}"`

// DeleteKeys removes the keys of the local Redis that start with prefix.
func DeleteKeys(prefix string) error {
	c := redis.NewClient(&redis.Options{Addr: Addr})
	defer c.Close()
	ctx := context.Background()
	iter := c.Scan(ctx, 0, prefix+"*", 500).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("delete keys %s*: %w", prefix, err)
	}
	return nil
}
