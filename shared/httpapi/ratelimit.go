package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// AllowFunc takes one request of client from its rate limit. When it
// refuses, retryAfter says when to come back.
type AllowFunc func(ctx context.Context, client string) (ok bool, retryAfter time.Duration, err error)

// RateLimit returns middleware that limits each client (its API key, or its
// address without one) with allow, answering 429 with Retry-After when the
// client is over its limit. GET /status is never limited. When allow fails
// (Redis is down) requests go through: the limit fails open, with a warning
// in the log at the start and end of each outage, and degraded reports it.
func RateLimit(allow AllowFunc, logger *slog.Logger, degraded *atomic.Bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && r.URL.Path == "/status" {
				next.ServeHTTP(w, r)
				return
			}
			ok, wait, err := allow(r.Context(), clientKey(r))
			if err != nil {
				if degraded.CompareAndSwap(false, true) {
					logger.Warn("inbound rate limit unavailable; letting requests through", "error", err)
				}
				next.ServeHTTP(w, r)
				return
			}
			if degraded.CompareAndSwap(true, false) {
				logger.Info("inbound rate limit available again")
			}
			if !ok {
				secs := int(math.Ceil(wait.Seconds()))
				w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
				writeStatusProblem(w, r, http.StatusTooManyRequests, "rate limit exceeded; retry after the time in Retry-After")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// clientKey names who a request counts against: the hash of its API key,
// or its address. The key itself never reaches Redis or the logs.
func clientKey(r *http.Request) string {
	key := r.Header.Get("X-API-Key")
	if a := r.Header.Get("Authorization"); key == "" && strings.HasPrefix(a, "Bearer ") {
		key = strings.TrimPrefix(a, "Bearer ")
	}
	if key != "" {
		sum := sha256.Sum256([]byte(key))
		return "key:" + hex.EncodeToString(sum[:8])
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}
