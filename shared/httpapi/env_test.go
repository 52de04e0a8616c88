package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// TestMain stops the embedded MongoDB the tests shared and removes its data.
func TestMain(m *testing.M) { testenv.Main(m) }

// service is the real message service (outbox.Service on the embedded
// MongoDB, RabbitMQ and Redis) with what the HTTP layer's error paths need
// to be reached: an error every call returns instead, an ID whose Get
// panics, a count of Get calls, and a List that waits for its context to
// end (a store that hangs) and records the context's deadline.
type service struct {
	httpapi.Messages

	mu           sync.Mutex
	err          error
	panicID      string
	getCalls     int
	hangList     bool
	listDeadline time.Time
	listHasDL    bool
}

func (s *service) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *service) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *service) Create(ctx context.Context, req message.CreateRequest, key string) (message.Message, bool, error) {
	if err := s.failure(); err != nil {
		return message.Message{}, false, err
	}
	return s.Messages.Create(ctx, req, key)
}

func (s *service) Get(ctx context.Context, id string) (message.Message, error) {
	s.mu.Lock()
	s.getCalls++
	err, boom := s.err, id == s.panicID
	s.mu.Unlock()
	if err != nil {
		return message.Message{}, err
	}
	if boom {
		panic("test: Get exploded")
	}
	return s.Messages.Get(ctx, id)
}

func (s *service) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.getCalls
}

func (s *service) List(ctx context.Context, f message.Filter) (message.Page, error) {
	s.mu.Lock()
	s.listDeadline, s.listHasDL = ctx.Deadline()
	hang := s.hangList
	s.mu.Unlock()
	if err := s.failure(); err != nil {
		return message.Page{}, err
	}
	if hang {
		// Ten seconds at most, so that a test of the deadline fails
		// rather than hangs when there is none.
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	}
	return s.Messages.List(ctx, f)
}

// lastListDeadline is the deadline of the context the last List call had.
func (s *service) lastListDeadline() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listDeadline, s.listHasDL
}

// scheduler is the real MongoDB-backed scheduler, with an error every call
// returns instead when err is set.
type scheduler struct {
	httpapi.Scheduler
	mu  sync.Mutex
	err error
}

func (s *scheduler) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *scheduler) Status(ctx context.Context) (httpapi.SchedulerStatus, error) {
	if err := s.failure(); err != nil {
		return httpapi.SchedulerStatus{}, err
	}
	return s.Scheduler.Status(ctx)
}

func (s *scheduler) Start(ctx context.Context) (httpapi.SchedulerStatus, error) {
	if err := s.failure(); err != nil {
		return httpapi.SchedulerStatus{}, err
	}
	return s.Scheduler.Start(ctx)
}

func (s *scheduler) Stop(ctx context.Context) (httpapi.SchedulerStatus, error) {
	if err := s.failure(); err != nil {
		return httpapi.SchedulerStatus{}, err
	}
	return s.Scheduler.Stop(ctx)
}

// testServer is NewServer over the real message service and scheduler,
// with its logs captured.
type testServer struct {
	h     http.Handler
	a     *app.App
	msgs  *service
	sched *scheduler
	logs  *logbuf.Buffer
}

func newTestServer(t testing.TB, configure ...func(*httpapi.Options)) *testServer {
	t.Helper()
	a := testenv.App(t, testenv.Env(t, map[string]string{"SCHEDULER_INITIAL_STATE": "stopped"}))
	// Created messages wait in the outbox (no fast path to the queue), so
	// that they are UNSENT as the tests expect.
	closed := func(context.Context) (bool, error) { return false, nil }
	ts := &testServer{a: a, msgs: &service{Messages: a.Service(closed)}, sched: &scheduler{Scheduler: a.LocalScheduler()}, logs: &logbuf.Buffer{}}
	o := httpapi.Options{
		Messages:  ts.msgs,
		Scheduler: ts.sched,
		Health:    httpapi.Health{Service: "api"},
		Logger:    slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, c := range configure {
		c(&o)
	}
	ts.h = httpapi.NewServer(o)
	return ts
}

// record applies an outcome to message id as a delivery would, moving it
// to status (SENT, FAILED, or UNSENT for a retry) with d in its log.
func (ts *testServer) record(t testing.TB, id string, status message.Status, d message.Delivery) {
	t.Helper()
	ctx := context.Background()
	m, err := ts.a.Store.GetMessage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	d.At = now
	o := message.Outcome{MessageID: id, Seq: m.Seq, Status: status, Attempts: m.Attempts + 1, At: now, Delivery: &d}
	switch status {
	case message.StatusUnsent:
		next := now.Add(time.Hour)
		o.NextAttemptAt, o.LastError = &next, "HTTP 503"
	case message.StatusFailed:
		o.FailureReason, o.LastError = "permanent failure: HTTP 400", "HTTP 400"
	}
	if err := ts.a.Store.RecordOutcome(ctx, o); err != nil {
		t.Fatalf("record %s for %s: %v", status, id, err)
	}
}

// do sends one request; headers come in name, value pairs.
func (ts *testServer) do(t testing.TB, method, path, body string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	return serve(t, ts.h, method, path, body, headers...)
}

func serve(t testing.TB, h http.Handler, method, path, body string, headers ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			r.Header.Del(headers[i])
			continue
		}
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// problem is the RFC 9457 document as a client reads it.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Instance string `json:"instance"`
	Code     string `json:"code"`
	Field    string `json:"field"`
	Errors   []struct {
		Field  string `json:"field"`
		Detail string `json:"detail"`
	} `json:"errors"`
	RequestID string `json:"requestId"`
}

// readProblem checks that w is a problem with status code and, if field is
// not empty, that it names field both at the top level and in errors.
func readProblem(t testing.TB, w *httptest.ResponseRecorder, code int, field string) problem {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status = %d, want %d; body: %s", w.Code, code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	var p problem
	dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("problem body %s: %v", w.Body, err)
	}
	if p.Status != code || p.Title == "" || p.Type == "" || p.Instance == "" || p.Detail == "" {
		t.Errorf("incomplete problem: %+v", p)
	}
	if field != "" {
		if p.Field != field || len(p.Errors) == 0 || p.Errors[0].Field != field || p.Errors[0].Detail == "" {
			t.Errorf("problem does not name field %q: %s", field, w.Body)
		}
	}
	return p
}

func decodeJSON[T any](t testing.TB, w *httptest.ResponseRecorder) T {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json; body: %s", ct, w.Body)
	}
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("decode %s: %v", w.Body, err)
	}
	return v
}
