package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

var _ outbox.Lease = (*Store)(nil)

// unlockScript deletes the lease only if it still holds our token, so that a
// holder whose lease expired cannot release its successor's.
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Acquire takes the lease name, kept under <prefix>lease:<name>, for ttl. ok is false if somebody else holds
// it; release is then a no-op. release is safe to call after expiry and more
// than once.
func (s *Store) Acquire(ctx context.Context, name string, ttl time.Duration) (func(context.Context), bool, error) {
	key := s.key("lease", name)
	token := rand.Text()
	ok, err := s.client.SetNX(ctx, key, token, time.Duration(px(ttl))*time.Millisecond).Result()
	if err != nil {
		return func(context.Context) {}, false, fmt.Errorf("acquire lease %s: %w", name, err)
	}
	if !ok {
		// The client retries a command whose answer timed out: the
		// first try may have set the key, and the retry then found it
		// set. Ours, it is held.
		held, err := s.client.Get(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return func(context.Context) {}, false, fmt.Errorf("acquire lease %s: %w", name, err)
		}
		if held != token {
			return func(context.Context) {}, false, nil
		}
	}
	release := func(ctx context.Context) {
		// An error leaves the lease to expire after ttl, which is the
		// fallback the lease relies on anyway.
		_ = unlockScript.Run(ctx, s.client, []string{key}, token).Err()
	}
	return release, true, nil
}
