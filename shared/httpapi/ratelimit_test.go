package httpapi_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// TestRateLimitDegradedOnlyByItsStore: the limit reports itself degraded
// when its store fails, not when a client went away during the check, and
// recovers with the store.
func TestRateLimitDegradedOnlyByItsStore(t *testing.T) {
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
	var degraded atomic.Bool
	h := httpapi.RateLimit(allow, "", slog.New(slog.NewTextHandler(&logbuf.Buffer{}, nil)), &degraded)(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	serve := func(ctx context.Context) int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodPost, "/messages", nil))
		return w.Code
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	serve(gone)
	if degraded.Load() {
		t.Fatal("a client that went away marked the limit degraded")
	}
	storeDown.Store(true)
	if code := serve(context.Background()); code != http.StatusNoContent || !degraded.Load() {
		t.Fatalf("with the store down: %d, degraded %v; want it let through and degraded", code, degraded.Load())
	}
	storeDown.Store(false)
	if serve(context.Background()); degraded.Load() {
		t.Fatal("still degraded once the store answers")
	}
}
