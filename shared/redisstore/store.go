// Package redisstore is the Redis adapter: the processor's inbox (a fast
// duplicate guard in front of webhook deliveries), the relay's lease and the
// global webhook rate limiter. Redis is optional: Open never fails because
// Redis is down, and every caller degrades when a command errors.
package redisstore

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

// Timeouts are short on purpose: Redis is a helper, not the system of
// record, so an outage must be noticed in about a second, not after the
// client library's five-second defaults.
const (
	dialTimeout  = time.Second
	ioTimeout    = 500 * time.Millisecond
	poolTimeout  = time.Second
	maxRetries   = 1
	retryBackoff = 100 * time.Millisecond
)

// Store is a Redis client whose keys all start with one prefix. It keeps
// the processor's inbox (claims, taken markers, done markers; see
// outbox.Inbox) and the relay's lease (outbox.Lease). It is safe for
// concurrent use.
type Store struct {
	client *redis.Client
	prefix string
}

// Open returns a Store for the Redis server o describes. It does not contact
// Redis, so a server that is down does not stop start-up: call Ping to
// report health. ctx is accepted for symmetry with the other adapters.
func Open(ctx context.Context, o config.RedisOptions, prefix string) (*Store, error) {
	_ = ctx
	if o.Addr == "" {
		return nil, fmt.Errorf("open redis: empty address")
	}
	opts := &redis.Options{
		Addr:                  o.Addr,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		DialTimeout:           dialTimeout,
		DialerRetries:         1,
		ReadTimeout:           ioTimeout,
		WriteTimeout:          ioTimeout,
		PoolTimeout:           poolTimeout,
		MaxRetries:            maxRetries,
		MaxRetryBackoff:       retryBackoff,
		ContextTimeoutEnabled: true,
		// Redis 7.0 knows neither CLIENT SETINFO nor maintenance
		// notifications; asking for them costs a round trip per connection.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if o.TLS {
		host, _, err := net.SplitHostPort(o.Addr)
		if err != nil {
			return nil, fmt.Errorf("open redis: address %q: %w", o.Addr, err)
		}
		opts.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return &Store{client: redis.NewClient(opts), prefix: prefix}, nil
}

// Close closes the client's connections.
func (s *Store) Close() error { return s.client.Close() }

// Ping reports whether Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}

func (s *Store) key(kind, name string) string { return s.prefix + kind + ":" + name }

// px returns ttl in whole milliseconds, at least 1: SET PX rejects 0.
func px(ttl time.Duration) int64 { return max(ttl.Milliseconds(), 1) }

// SetClientLogger sends the Redis client library's own messages (one per
// failed dial, among others) to logger at debug level instead of to stderr
// unformatted: during an outage the Store's callers already log what matters.
// It changes a process-wide setting of the library, so call it once from
// the wiring.
func SetClientLogger(logger *slog.Logger) {
	redis.SetLogger(clientLogger{logger})
}

type clientLogger struct{ l *slog.Logger }

func (c clientLogger) Printf(ctx context.Context, format string, v ...any) {
	c.l.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
