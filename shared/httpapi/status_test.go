package httpapi_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// TestStatusFloodRunsEachCheckOnce: GET /status needs no key, so a flood
// of calls must not become a flood of calls to the dependencies. Calls that
// come while the checks run share that run: each check and Info run once for
// all of them, whoever calls and whatever key it sends. A call after the run
// ended runs them again, so that a change shows at once.
func TestStatusFloodRunsEachCheckOnce(t *testing.T) {
	const key = "the-key"
	const calls = 60
	var checks, infos, joined atomic.Int32
	t.Cleanup(httpapi.SetStatusJoined(func() { joined.Add(1) }))
	release := make(chan struct{})
	held := func(context.Context) error {
		checks.Add(1)
		<-release
		return nil
	}
	ts := newTestServer(t, func(o *httpapi.Options) {
		o.APIKey = key
		o.Health = httpapi.Health{
			Service: "api",
			Checks:  []httpapi.Check{{Name: "mongodb", Critical: true, Check: held}},
			Info: func(context.Context) map[string]any {
				infos.Add(1)
				return map[string]any{"failedMessages": 0}
			},
		}
	})
	callers := [][]string{nil, {"X-API-Key", "guess"}, {"Authorization", "Bearer " + key}}
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			w := ts.do(t, http.MethodGet, "/status", "", callers[i%len(callers)]...)
			if rep := decodeJSON[map[string]any](t, w); w.Code != http.StatusOK || rep["failedMessages"] != float64(0) {
				t.Errorf("GET /status: %d %s", w.Code, w.Body)
			}
		})
	}
	for joined.Load() < calls {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if c, i := checks.Load(), infos.Load(); c != 1 || i != 1 {
		t.Fatalf("%d calls at once ran the check %d times and Info %d times, want once each", calls, c, i)
	}
	ts.do(t, http.MethodGet, "/status", "")
	if c := checks.Load(); c != 2 {
		t.Errorf("a call after the run ended: %d runs of the check, want a new one", c)
	}
}

// TestStatusWithoutAValidKeyIsTheSameWhateverTheKey: while a dependency
// fails, a caller without the API key gets the statuses and never the error
// text, and gets the same report whatever key it sends, so the report does
// not tell a right key from a wrong one; only the key itself shows the text.
func TestStatusWithoutAValidKeyIsTheSameWhateverTheKey(t *testing.T) {
	const key = "s3cr3t-key-value"
	const secret = "dial tcp 10.1.2.3:6379: connection refused"
	ts := newTestServer(t, func(o *httpapi.Options) {
		o.APIKey = key
		o.Health = httpapi.Health{Service: "api", Checks: []httpapi.Check{
			{Name: "mongodb", Critical: true, Check: func(context.Context) error { return nil }},
			{Name: "redis", Check: func(context.Context) error { return errors.New(secret) }},
		}}
	})
	var first string
	for _, headers := range [][]string{
		nil,
		{"Authorization", "Bearer nope"},
		{"X-API-Key", key + "x"},
		{"X-API-Key", key[:5]},
		{"Authorization", "Basic " + key},
		{"Authorization", key},
	} {
		w := ts.do(t, http.MethodGet, "/status", "", headers...)
		if w.Code != http.StatusOK || strings.Contains(w.Body.String(), "10.1.2.3") || strings.Contains(w.Body.String(), `"error"`) {
			t.Errorf("with %q: %d %s, want 200 and no error text", headers, w.Code, w.Body)
		}
		if first == "" {
			first = w.Body.String()
		} else if w.Body.String() != first {
			t.Errorf("with %q the report is\n%s\nwithout a key\n%s", headers, w.Body, first)
		}
	}
	if !strings.Contains(first, `"redis":{"status":"down"}`) || !strings.Contains(first, `"status":"degraded"`) {
		t.Errorf("report without the key = %s, want redis down and the whole degraded", first)
	}
	if w := ts.do(t, http.MethodGet, "/status", "", "X-API-Key", key); !strings.Contains(w.Body.String(), secret) {
		t.Errorf("with the key: %s, want the error text", w.Body)
	}
}

// TestStatusWithAKeyCountsAgainstTheRateLimit: GET /status is outside the
// rate limit for probes, which send no key; but the right key shows the
// checks' error text there, so a GET /status that sends a key counts like
// any other request, and guessing keys there is no faster than on the other
// routes. Without an API key to guess, a key sent changes nothing.
func TestStatusWithAKeyCountsAgainstTheRateLimit(t *testing.T) {
	refuse := func(context.Context, string) (bool, time.Duration, error) { return false, time.Second, nil }
	for _, apiKey := range []string{"the-key", ""} {
		ts := newTestServer(t, func(o *httpapi.Options) {
			o.APIKey = apiKey
			o.Middleware = []func(http.Handler) http.Handler{httpapi.RateLimit(refuse, apiKey, o.Logger, nil)}
		})
		for _, tc := range []struct {
			path    string
			headers []string
			limited bool
		}{
			{"/status", nil, false},
			{"/status", []string{"X-API-Key", "a-guess"}, apiKey != ""},
			{"/status", []string{"Authorization", "Bearer a-guess"}, apiKey != ""},
			{"/status", []string{"X-API-Key", "the-key"}, apiKey != ""},
			{"/livez", []string{"X-API-Key", "a-guess"}, false},
		} {
			w := ts.do(t, http.MethodGet, tc.path, "", tc.headers...)
			if limited := w.Code == http.StatusTooManyRequests; limited != tc.limited {
				t.Errorf("API key %q, GET %s with %q: %d, want limited %v", apiKey, tc.path, tc.headers, w.Code, tc.limited)
			}
		}
	}
}
