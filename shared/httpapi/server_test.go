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
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

func TestRouting(t *testing.T) {
	ts := newTestServer(t)
	cases := []struct {
		method, path string
		status       int
		allow        []string
	}{
		{http.MethodGet, "/nope", http.StatusNotFound, nil},
		{http.MethodGet, "/messages/", http.StatusNotFound, nil},
		{http.MethodPost, "/scheduler/pause", http.StatusNotFound, nil},
		{http.MethodDelete, "/messages", http.StatusMethodNotAllowed, []string{"GET", "POST"}},
		{http.MethodPut, "/messages/0190a0b0-0000-7000-8000-000000000001", http.StatusMethodNotAllowed, []string{"GET"}},
		{http.MethodGet, "/scheduler/start", http.StatusMethodNotAllowed, []string{"POST"}},
		{http.MethodPost, "/status", http.StatusMethodNotAllowed, []string{"GET"}},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			w := ts.do(t, tc.method, tc.path, "")
			p := readProblem(t, w, tc.status, "")
			if p.Instance != tc.path {
				t.Errorf("instance = %q, want %q", p.Instance, tc.path)
			}
			allow := w.Header().Get("Allow")
			for _, m := range tc.allow {
				if !strings.Contains(allow, m) {
					t.Errorf("Allow = %q, want it to contain %s", allow, m)
				}
			}
		})
	}
}

// TestRoutesAreServed checks that every route Routes lists is one the
// server answers, and that the list is what the SAM template must hold.
func TestRoutesAreServed(t *testing.T) {
	want := []httpapi.Route{
		{Method: "POST", Path: "/messages"},
		{Method: "GET", Path: "/messages"},
		{Method: "GET", Path: "/messages/{id}"},
		{Method: "POST", Path: "/messages/{id}/retry"},
		{Method: "POST", Path: "/dlq/replay"},
		{Method: "POST", Path: "/scheduler/start"},
		{Method: "POST", Path: "/scheduler/stop"},
		{Method: "GET", Path: "/scheduler"},
		{Method: "GET", Path: "/status", Public: true},
		{Method: "GET", Path: "/livez", Public: true},
	}
	got := httpapi.Routes()
	if len(got) != len(want) {
		t.Fatalf("Routes() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Routes()[%d] = %v, want %v", i, got[i], want[i])
		}
	}

	ts := newTestServer(t)
	m := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, "hi")))
	for _, rt := range got {
		path := strings.ReplaceAll(rt.Path, "{id}", m.ID)
		b := ""
		if rt.Method == http.MethodPost && rt.Path == "/messages" {
			b = body(phone, "again")
		}
		if rt.Path == "/messages/{id}/retry" {
			ts.record(t, m.ID, message.StatusFailed, message.Delivery{Attempt: 1, Outcome: message.OutcomeFailed, StatusCode: 400})
		}
		if w := ts.do(t, rt.Method, path, b); w.Code >= 300 {
			t.Errorf("%s %s: %d %s", rt.Method, path, w.Code, w.Body)
		}
	}
}

func TestAuth(t *testing.T) {
	const key = "s3cr3t-key-value"
	ts := newTestServer(t, func(o *httpapi.Options) { o.APIKey = key })
	cases := []struct {
		name    string
		headers []string
		ok      bool
	}{
		{"no key", nil, false},
		{"wrong bearer", []string{"Authorization", "Bearer nope"}, false},
		{"key with another scheme", []string{"Authorization", "Basic " + key}, false},
		{"bare key", []string{"Authorization", key}, false},
		{"wrong X-API-Key", []string{"X-API-Key", key + "x"}, false},
		{"prefix of the key", []string{"X-API-Key", key[:5]}, false},
		{"bearer", []string{"Authorization", "Bearer " + key}, true},
		{"lower-case scheme", []string{"Authorization", "bearer " + key}, true},
		{"X-API-Key", []string{"X-API-Key", key}, true},
		{"wrong bearer, right X-API-Key", []string{"Authorization", "Bearer nope", "X-API-Key", key}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, req := range []struct{ method, path, body string }{
				{http.MethodPost, "/messages", body(phone, "hi")},
				{http.MethodGet, "/messages", ""},
				{http.MethodGet, "/messages/0190a0b0-0000-7000-8000-000000000001", ""},
				{http.MethodGet, "/scheduler", ""},
				{http.MethodPost, "/scheduler/start", ""},
				{http.MethodPost, "/scheduler/stop", ""},
			} {
				w := ts.do(t, req.method, req.path, req.body, tc.headers...)
				if tc.ok {
					if w.Code == http.StatusUnauthorized {
						t.Errorf("%s %s: 401 with a valid key", req.method, req.path)
					}
					continue
				}
				readProblem(t, w, http.StatusUnauthorized, "")
				if got := w.Header().Get("WWW-Authenticate"); got != "Bearer" {
					t.Errorf("WWW-Authenticate = %q", got)
				}
			}
		})
	}
	for _, path := range []string{"/status", "/livez"} {
		if w := ts.do(t, http.MethodGet, path, ""); w.Code != http.StatusOK {
			t.Errorf("GET %s without key: %d %s", path, w.Code, w.Body)
		}
	}
	if strings.Contains(ts.logs.String(), key) {
		t.Errorf("the API key was logged")
	}
}

func TestPanicRecovery(t *testing.T) {
	ts := newTestServer(t)
	const boom = "0190a0b0-0000-7000-8000-00000000dead"
	ts.msgs.mu.Lock()
	ts.msgs.panicID = boom
	ts.msgs.mu.Unlock()
	w := ts.do(t, http.MethodGet, "/messages/"+boom, "")
	p := readProblem(t, w, http.StatusInternalServerError, "")
	if strings.Contains(w.Body.String(), "exploded") {
		t.Errorf("panic value sent to the client: %s", w.Body)
	}
	logs := ts.logs.String()
	if !strings.Contains(logs, "exploded") || !strings.Contains(logs, "goroutine") || !strings.Contains(logs, p.RequestID) {
		t.Errorf("panic not logged with stack and request id: %s", logs)
	}
	// The server goes on serving.
	if w := ts.do(t, http.MethodGet, "/scheduler", ""); w.Code != http.StatusOK {
		t.Errorf("after panic: %d", w.Code)
	}

	// Extra middleware runs inside the recovery.
	ts = newTestServer(t, func(o *httpapi.Options) {
		o.Middleware = []func(http.Handler) http.Handler{
			nil,
			func(http.Handler) http.Handler {
				return http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("middleware exploded") })
			},
		}
	})
	readProblem(t, ts.do(t, http.MethodGet, "/messages", ""), http.StatusInternalServerError, "")
}

func TestMiddlewareOrder(t *testing.T) {
	var order []string
	mw := func(name string) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				order = append(order, name)
				next.ServeHTTP(w, r)
			})
		}
	}
	ts := newTestServer(t, func(o *httpapi.Options) {
		o.Middleware = []func(http.Handler) http.Handler{mw("first"), mw("second")}
	})
	ts.do(t, http.MethodGet, "/messages", "")
	if strings.Join(order, ",") != "first,second" {
		t.Errorf("order = %v", order)
	}
}

func TestRequestID(t *testing.T) {
	ts := newTestServer(t)
	w := ts.do(t, http.MethodGet, "/messages", "", "X-Request-Id", "abc-123")
	if got := w.Header().Get("X-Request-Id"); got != "abc-123" {
		t.Errorf("echoed id = %q", got)
	}
	w = ts.do(t, http.MethodGet, "/messages", "")
	id := w.Header().Get("X-Request-Id")
	if len(id) < 16 {
		t.Errorf("generated id = %q", id)
	}
	if w2 := ts.do(t, http.MethodGet, "/messages", ""); w2.Header().Get("X-Request-Id") == id {
		t.Errorf("request ids repeat")
	}
	w = ts.do(t, http.MethodGet, "/messages", "", "X-Request-Id", "evil\" injected=1")
	if got := w.Header().Get("X-Request-Id"); got == "" || strings.ContainsAny(got, "\" =") {
		t.Errorf("unsafe id kept: %q", got)
	}
	p := readProblem(t, ts.do(t, http.MethodGet, "/nope", "", "X-Request-Id", "r-1"), http.StatusNotFound, "")
	if p.RequestID != "r-1" {
		t.Errorf("problem requestId = %q", p.RequestID)
	}
}

func TestLogging(t *testing.T) {
	ts := newTestServer(t)
	secret := "my very private content"
	m := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, secret)))
	ts.do(t, http.MethodGet, "/messages/"+m.ID, "")
	ts.do(t, http.MethodPost, "/messages", body("+4912", secret))
	ts.do(t, http.MethodGet, "/messages?cursor="+phone, "")
	logs := ts.logs.String()
	for _, s := range []string{phone, strings.TrimPrefix(phone, "+"), secret, "+4912"} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	for _, s := range []string{`pattern="POST /messages"`, `pattern="GET /messages/{id}"`, "status=202", "status=400", "duration_ms="} {
		if !strings.Contains(logs, s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}

func TestStatus(t *testing.T) {
	ok := func(context.Context) error { return nil }
	fail := func(context.Context) error { return errors.New("dial tcp 127.0.0.1:6379: connection refused") }
	cases := []struct {
		name   string
		checks []httpapi.Check
		status int
		want   string
	}{
		{"no checks", nil, http.StatusOK, "ok"},
		{"all ok", []httpapi.Check{{Name: "mongodb", Critical: true, Check: ok}, {Name: "redis", Check: ok}}, http.StatusOK, "ok"},
		{"non-critical down", []httpapi.Check{{Name: "mongodb", Critical: true, Check: ok}, {Name: "redis", Check: fail}}, http.StatusOK, "degraded"},
		{"critical down", []httpapi.Check{{Name: "mongodb", Critical: true, Check: fail}, {Name: "redis", Check: ok}}, http.StatusServiceUnavailable, "down"},
		{"both down", []httpapi.Check{{Name: "rabbitmq", Critical: true, Check: fail}, {Name: "redis", Check: fail}}, http.StatusServiceUnavailable, "down"},
		{"panicking check", []httpapi.Check{{Name: "mongodb", Critical: true, Check: func(context.Context) error { panic("boom") }}}, http.StatusServiceUnavailable, "down"},
		{"nil check", []httpapi.Check{{Name: "redis"}}, http.StatusOK, "degraded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := httpapi.NewStatusHandler(httpapi.Health{Service: "processor", Checks: tc.checks}, nil)
			w := serve(t, h, http.MethodGet, "/status", "")
			if w.Code != tc.status {
				t.Fatalf("status = %d, want %d; body: %s", w.Code, tc.status, w.Body)
			}
			r := decodeJSON[struct {
				Service string                         `json:"service"`
				Status  string                         `json:"status"`
				Checks  map[string]httpapi.CheckResult `json:"checks"`
			}](t, w)
			if r.Service != "processor" || r.Status != tc.want || len(r.Checks) != len(tc.checks) {
				t.Errorf("report = %+v", r)
			}
			// No API key, so no caller may see a check's error text.
			for _, c := range tc.checks {
				cr := r.Checks[c.Name]
				if cr.Status != "ok" && (cr.Status != "down" || cr.Error != "") {
					t.Errorf("check %s = %+v", c.Name, cr)
				}
			}
		})
	}
}

func TestStatusReport(t *testing.T) {
	long := strings.Repeat("é", 300)
	block := make(chan struct{})
	defer close(block)
	h := httpapi.Health{
		Service: "api",
		Checks: []httpapi.Check{
			{Name: "redis", Check: func(context.Context) error { return errors.New(long) }},
			// A check that ignores its context must not hold the answer.
			{Name: "stuck", Check: func(context.Context) error { <-block; return nil }},
			{Name: "mongodb", Critical: true, Check: func(ctx context.Context) error { return nil }},
		},
		Info: func(context.Context) map[string]any {
			return map[string]any{"breaker": "closed", "status": "overridden?", "consumers": 2}
		},
	}
	ts := newTestServer(t, func(o *httpapi.Options) { o.Health = h; o.APIKey = "k" })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r := httptest.NewRequest(http.MethodGet, "/status", nil).WithContext(ctx)
	w := httptest.NewRecorder()
	start := time.Now()
	ts.h.ServeHTTP(w, r)
	if d := time.Since(start); d > time.Second {
		t.Errorf("status took %s with a stuck check", d)
	}
	// Without the key: the same report, but no check's error text.
	if strings.Contains(w.Body.String(), "é") || strings.Contains(w.Body.String(), `"error"`) {
		t.Errorf("a caller without the key sees the checks' errors: %s", w.Body)
	}
	if n := strings.Count(ts.logs.String(), "status check failed"); n != 2 {
		t.Errorf("%d failed checks logged, want 2 (redis and stuck):\n%s", n, ts.logs)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r = httptest.NewRequest(http.MethodGet, "/status", nil).WithContext(ctx)
	r.Header.Set("X-API-Key", "k")
	w = httptest.NewRecorder()
	ts.h.ServeHTTP(w, r)
	if n := strings.Count(ts.logs.String(), "status check failed"); n != 2 {
		t.Errorf("a second probe logged the same failures again within the minute: %d lines", n)
	}
	rep := decodeJSON[map[string]any](t, w)
	if rep["status"] != "degraded" || rep["breaker"] != "closed" || rep["consumers"] != float64(2) || rep["service"] != "api" {
		t.Errorf("report = %v", rep)
	}
	checks := rep["checks"].(map[string]any)
	redis := checks["redis"].(map[string]any)
	if e := redis["error"].(string); len([]rune(e)) != 200 {
		t.Errorf("error has %d characters, want 200", len([]rune(e)))
	}
	if stuck := checks["stuck"].(map[string]any); stuck["status"] != "down" {
		t.Errorf("stuck check = %v", stuck)
	}
	if mongo := checks["mongodb"].(map[string]any); mongo["status"] != "ok" {
		t.Errorf("mongodb check = %v", mongo)
	}
}

// TestUncleanPathRedirectIsAProblem: ServeMux sends a path not in its clean
// form to the clean one; the answer is a problem like every other error,
// with the redirect's status and Location, not ServeMux's HTML.
func TestUncleanPathRedirectIsAProblem(t *testing.T) {
	ts := newTestServer(t)
	for _, c := range []struct{ method, path, want string }{
		{http.MethodGet, "//messages", "/messages"},
		{http.MethodPost, "/messages/./x/..", "/messages"},
	} {
		w := ts.do(t, c.method, c.path, "")
		p := readProblem(t, w, w.Code, "")
		if w.Code < 300 || w.Code > 399 || w.Header().Get("Location") != c.want || p.Status != w.Code {
			t.Errorf("%s %s: %d, Location %q, problem %+v; want a redirect to %s", c.method, c.path, w.Code, w.Header().Get("Location"), p, c.want)
		}
	}
}

// TestStatusHandlerServesOnlyTheProbes: the status handler serves GET
// /status and GET /livez alone, and logs its requests to the logger it is
// given (the process's configured one), not to slog.Default().
func TestStatusHandlerServesOnlyTheProbes(t *testing.T) {
	var logs logbuf.Buffer
	h := httpapi.NewStatusHandler(httpapi.Health{Service: "processor"}, slog.New(slog.NewJSONHandler(&logs, nil)))
	readProblem(t, serve(t, h, http.MethodGet, "/messages", ""), http.StatusNotFound, "")
	readProblem(t, serve(t, h, http.MethodDelete, "/status", ""), http.StatusMethodNotAllowed, "")
	if n := strings.Count(logs.String(), `"msg":"http request"`); n != 2 {
		t.Errorf("the given logger has %d request lines, want 2:\n%s", n, logs.String())
	}
	if w := serve(t, h, http.MethodGet, "/livez", ""); w.Code != http.StatusOK {
		t.Errorf("GET /livez: %d %s, want 200", w.Code, w.Body)
	}
}

// TestLivezCallsNoDependency: GET /livez is liveness, not readiness: with
// MongoDB's check failing, GET /status answers 503 and GET /livez 200, with
// no API key and whatever the rate limit says. It is logged at debug level
// only, since probes poll it.
func TestLivezCallsNoDependency(t *testing.T) {
	var checked, limited, counted atomic.Int32
	refuse := func(context.Context, string) (bool, time.Duration, error) {
		limited.Add(1)
		return false, time.Second, nil
	}
	mongoDown := httpapi.Check{Name: "mongodb", Critical: true, Check: func(context.Context) error {
		checked.Add(1)
		return errors.New("server selection timeout")
	}}
	ts := newTestServer(t, func(o *httpapi.Options) {
		o.Health = httpapi.Health{Service: "api", Checks: []httpapi.Check{mongoDown}}
		o.APIKey = "the-key"
		observe := func(event string, n int) {
			if event == "api_rate_limited" {
				counted.Add(int32(n))
			}
		}
		o.Middleware = []func(http.Handler) http.Handler{httpapi.RateLimit(refuse, o.APIKey, o.Logger, observe)}
	})

	w := ts.do(t, http.MethodGet, "/livez", "")
	if w.Code != http.StatusOK {
		t.Fatalf("GET /livez with MongoDB down: %d %s, want 200", w.Code, w.Body)
	}
	if r := decodeJSON[map[string]string](t, w); r["status"] != "ok" || r["service"] != "api" {
		t.Errorf("GET /livez body = %v", r)
	}
	if n, l := checked.Load(), limited.Load(); n != 0 || l != 0 {
		t.Errorf("GET /livez ran %d checks and %d rate-limit calls, want none", n, l)
	}
	if w := ts.do(t, http.MethodGet, "/status", ""); w.Code != http.StatusServiceUnavailable {
		t.Errorf("GET /status with MongoDB down: %d %s, want 503", w.Code, w.Body)
	}
	if w := ts.do(t, http.MethodGet, "/messages", "", "X-API-Key", "the-key"); w.Code != http.StatusTooManyRequests {
		t.Errorf("GET /messages with the limit refusing: %d, want 429", w.Code)
	}
	if n := counted.Load(); n != 1 {
		t.Errorf("%d requests counted as api_rate_limited, want the one 429", n)
	}
	logged := false
	for _, line := range strings.Split(ts.logs.String(), "\n") {
		if strings.Contains(line, `pattern="GET /livez"`) {
			logged = true
			if !strings.Contains(line, "level=DEBUG") {
				t.Errorf("GET /livez logged above debug level: %s", line)
			}
		}
	}
	if !logged {
		t.Errorf("GET /livez not logged:\n%s", ts.logs)
	}
}

func TestNewServerNeedsServices(t *testing.T) {
	ts := newTestServer(t)
	for _, o := range []httpapi.Options{{Scheduler: ts.sched}, {Messages: ts.msgs}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewServer(%+v) did not panic", o)
				}
			}()
			httpapi.NewServer(o)
		}()
	}
}

// TestRequestDeadline: every request's context has a deadline,
// RequestTimeout away (DefaultRequestTimeout unless set), so that a store
// that hangs ends the request with a 503 when it passes instead of holding
// it forever.
func TestRequestDeadline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		want    time.Duration
	}{
		{"default", 0, httpapi.DefaultRequestTimeout},
		{"configured", 3 * time.Second, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, func(o *httpapi.Options) { o.RequestTimeout = tc.timeout })
			start := time.Now()
			if w := ts.do(t, http.MethodGet, "/messages", ""); w.Code != http.StatusOK {
				t.Fatalf("GET /messages: %d %s", w.Code, w.Body)
			}
			deadline, ok := ts.msgs.lastListDeadline()
			if !ok {
				t.Fatal("the store was called with a context that has no deadline")
			}
			if left := deadline.Sub(start); left < tc.want-time.Second || left > tc.want+time.Second {
				t.Errorf("deadline %s after the request, want about %s", left, tc.want)
			}
		})
	}

	ts := newTestServer(t, func(o *httpapi.Options) { o.RequestTimeout = 200 * time.Millisecond })
	ts.msgs.mu.Lock()
	ts.msgs.hangList = true
	ts.msgs.mu.Unlock()
	start := time.Now()
	w := ts.do(t, http.MethodGet, "/messages", "")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a hanging store held the request for %s", d)
	}
	readProblem(t, w, http.StatusServiceUnavailable, "")
	if w.Header().Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
}
