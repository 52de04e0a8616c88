package httpapi_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// TestRateLimitFailsOpenOnlyForItsStore: the limit says it fails open
// (once per outage) when its store fails, not when a client went away
// during the check, and says when the store answers again.
func TestRateLimitFailsOpenOnlyForItsStore(t *testing.T) {
	var storeDown atomic.Bool
	allow := func(ctx context.Context, _ string) (bool, time.Duration, error) {
		if err := ctx.Err(); err != nil {
			return false, 0, err
		}
		if storeDown.Load() {
			return false, 0, errors.New("redis: connection refused")
		}
		return true, 0, nil
	}
	logs := &logbuf.Buffer{}
	h := httpapi.RateLimit(allow, "", slog.New(slog.NewTextHandler(logs, nil)))(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	serve := func(ctx context.Context) int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodPost, "/messages", nil))
		return w.Code
	}
	const down, up = "inbound rate limit unavailable", "inbound rate limit available again"
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	serve(gone)
	if strings.Contains(logs.String(), down) {
		t.Fatalf("a client that went away made the limit fail open: %s", logs)
	}
	storeDown.Store(true)
	for range 2 {
		if code := serve(context.Background()); code != http.StatusNoContent {
			t.Fatalf("with the store down: %d, want the request let through", code)
		}
	}
	if n := strings.Count(logs.String(), down); n != 1 {
		t.Fatalf("the outage logged %d times, want once: %s", n, logs)
	}
	storeDown.Store(false)
	serve(context.Background())
	if !strings.Contains(logs.String(), up) {
		t.Fatalf("no word that the limit works again: %s", logs)
	}
}

// TestRateLimitStoreHangingPastTheDeadline: a limit store that does not
// answer before the request's deadline counts as down, so the request is
// let through (and fails on its own expired deadline with a 503 problem)
// rather than answered with nothing, an empty 200.
func TestRateLimitStoreHangingPastTheDeadline(t *testing.T) {
	hang := func(ctx context.Context, _ string) (bool, time.Duration, error) {
		<-ctx.Done()
		return false, 0, ctx.Err()
	}
	logs := &logbuf.Buffer{}
	ts := newTestServer(t, func(o *httpapi.Options) {
		o.RequestTimeout = 100 * time.Millisecond
		o.Middleware = []func(http.Handler) http.Handler{httpapi.RateLimit(hang, "", slog.New(slog.NewTextHandler(logs, nil)))}
	})
	readProblem(t, ts.do(t, http.MethodGet, "/messages", ""), http.StatusServiceUnavailable, "")
	if !strings.Contains(logs.String(), "inbound rate limit unavailable") {
		t.Errorf("the hanging store is not reported: %s", logs)
	}
}
