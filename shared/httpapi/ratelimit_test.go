package httpapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/redistest"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

// TestRateLimitFailsOpenOnlyForItsStore: the limit says it fails open
// (once per outage) when its store fails, not when a client went away
// during the check, and says when the store answers again. The store is
// the real one on Redis, reached through a proxy that cuts it off.
func TestRateLimitFailsOpenOnlyForItsStore(t *testing.T) {
	cut := redistest.NewCut(t)
	cfg := testenv.Config(t, testenv.Env(t, map[string]string{"REDIS_URI": cut.Addr()}))
	store, err := redisstore.Open(context.Background(), cfg.Redis(), cfg.RedisKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	allow := func(ctx context.Context, client string) (bool, time.Duration, error) {
		return store.Allow(ctx, client, 100, 10)
	}
	logs := &logbuf.Buffer{}
	h := httpapi.RateLimit(allow, "", slog.New(slog.NewTextHandler(logs, nil)), nil)(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	serve := func(ctx context.Context) int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodPost, "/messages", nil))
		return w.Code
	}
	const down, up = "inbound rate limit unavailable", "inbound rate limit available again"
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	// Nothing is written for a client that went away: the recorder keeps
	// its 200, where a request let through would have had the 204.
	if code := serve(gone); code != http.StatusOK || strings.Contains(logs.String(), down) {
		t.Fatalf("a client that went away: %d, logs: %s; want it dropped, the limit not failing open", code, logs)
	}
	cut.Set(true)
	for range 2 {
		if code := serve(context.Background()); code != http.StatusNoContent {
			t.Fatalf("with the store down: %d, want the request let through", code)
		}
	}
	if n := strings.Count(logs.String(), down); n != 1 {
		t.Fatalf("the outage logged %d times, want once: %s", n, logs)
	}
	cut.Set(false)
	testenv.WaitFor(t, 10*time.Second, "Redis answering again", func() bool { return store.Ping(context.Background()) == nil })
	if code := serve(context.Background()); code != http.StatusNoContent {
		t.Fatalf("with the store back: %d, want the request let through", code)
	}
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
		o.Middleware = []func(http.Handler) http.Handler{httpapi.RateLimit(hang, "", slog.New(slog.NewTextHandler(logs, nil)), nil)}
	})
	readProblem(t, ts.do(t, http.MethodGet, "/messages", ""), http.StatusServiceUnavailable, "")
	if !strings.Contains(logs.String(), "inbound rate limit unavailable") {
		t.Errorf("the hanging store is not reported: %s", logs)
	}
}
