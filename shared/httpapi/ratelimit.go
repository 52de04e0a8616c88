package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// AllowFunc takes one request of client from its rate limit. When it
// refuses, retryAfter says when to come back.
type AllowFunc func(ctx context.Context, client string) (ok bool, retryAfter time.Duration, err error)

// RateLimit returns middleware that limits each client with allow: the
// holder of apiKey counts against that key, every other request against
// its address (a key that is not apiKey, however fresh, is no way around
// the limit), and the limit runs before the key check so that failed
// guesses are limited too. A client over its limit gets 429 with
// Retry-After. The probes' routes, GET /status and GET /livez, are not
// limited, but for a GET /status that sends a key while apiKey is set: the
// right key shows the checks' error text there, so unlimited it would be
// the fast way to guess keys. When allow fails (Redis is down) requests go
// through: the limit fails open, with a warning in the log at the start and
// end of each outage. observe, if not nil, counts each 429 as
// "api_rate_limited".
func RateLimit(allow AllowFunc, apiKey string, logger *slog.Logger, observe func(event string, n int)) func(http.Handler) http.Handler {
	isKey := keyMatcher(apiKey)
	var degraded atomic.Bool
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if probe(r) && !(apiKey != "" && r.URL.Path == "/status" && sentKey(r) != "") {
				next.ServeHTTP(w, r)
				return
			}
			ok, wait, err := allow(r.Context(), clientKey(r, isKey))
			if err != nil {
				if errors.Is(r.Context().Err(), context.Canceled) {
					// The client went away: that says nothing about Redis.
					return
				}
				// A store that did not answer before the request's
				// deadline is down like one that refused: answering
				// nothing here would send an empty 200.
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
				if observe != nil {
					observe("api_rate_limited", 1)
				}
				secs := int(math.Ceil(wait.Seconds()))
				w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
				writeStatusProblem(w, r, http.StatusTooManyRequests, "rate limit exceeded; retry after the time in Retry-After")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// clientKey names who a request counts against: the hash of the API key if
// it sent the right one, else its address. The key itself never reaches
// Redis or the logs.
func clientKey(r *http.Request, isKey func(string) bool) string {
	if key := sentKey(r); isKey(key) {
		sum := sha256.Sum256([]byte(key))
		return "key:" + hex.EncodeToString(sum[:8])
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}

// probe reports whether r is for one of the probes' routes, which answer
// without the API key and, mostly, outside the rate limit (see RateLimit).
// HEAD is GET without the body, which some probes send.
func probe(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && (r.URL.Path == "/status" || r.URL.Path == "/livez")
}
