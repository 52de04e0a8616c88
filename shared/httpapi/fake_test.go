package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// fakeMessages is an in-memory httpapi.Messages that keeps the contract of
// the interface: it validates with req.Validate, replays idempotent
// requests and reports EMISMATCH and EINPROGRESS.
type fakeMessages struct {
	mu         sync.Mutex
	now        time.Time
	n          int
	byID       map[string]message.Message
	order      []string // creation order, oldest first
	keys       map[string]idemRecord
	inProgress map[string]bool
	// err, if set, is what every call returns.
	err error
	// panicID makes Get panic for that ID.
	panicID  string
	getCalls int
}

type idemRecord struct {
	req message.CreateRequest
	id  string
}

func newFakeMessages() *fakeMessages {
	return &fakeMessages{
		now:        time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		byID:       map[string]message.Message{},
		keys:       map[string]idemRecord{},
		inProgress: map[string]bool{},
	}
}

var _ httpapi.Messages = (*fakeMessages)(nil)

func (f *fakeMessages) Create(ctx context.Context, req message.CreateRequest, key string) (message.Message, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return message.Message{}, false, f.err
	}
	if err := req.Validate(f.now, message.DefaultMaxContentLength); err != nil {
		return message.Message{}, false, err
	}
	if key != "" {
		if f.inProgress[key] {
			return message.Message{}, false, message.Errorf(message.EINPROGRESS, "a request with this idempotency key is still running")
		}
		if rec, ok := f.keys[key]; ok {
			if !sameRequest(rec.req, req) {
				return message.Message{}, false, message.Errorf(message.EMISMATCH, "idempotency key was used with a different request")
			}
			return f.byID[rec.id], true, nil
		}
	}
	f.n++
	id := fmt.Sprintf("0190a0b0-0000-7000-8000-%012x", f.n)
	m := message.New(id, req, f.now)
	f.byID[id] = m
	f.order = append(f.order, id)
	if key != "" {
		f.keys[key] = idemRecord{req: req, id: id}
	}
	return m, false, nil
}

func sameRequest(a, b message.CreateRequest) bool {
	if a.To != b.To || a.Content != b.Content || (a.SendAt == nil) != (b.SendAt == nil) {
		return false
	}
	return a.SendAt == nil || a.SendAt.Equal(*b.SendAt)
}

func (f *fakeMessages) Get(ctx context.Context, id string) (message.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getCalls++
	if f.err != nil {
		return message.Message{}, f.err
	}
	if id == f.panicID {
		panic("fake: Get exploded")
	}
	m, ok := f.byID[id]
	if !ok {
		return message.Message{}, message.ErrNotFound
	}
	return m, nil
}

func (f *fakeMessages) List(ctx context.Context, flt message.Filter) (message.Page, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return message.Page{}, f.err
	}
	var page message.Page
	started := flt.Cursor == ""
	for _, id := range slices.Backward(f.order) {
		if !started {
			started = id == flt.Cursor
			continue
		}
		m := f.byID[id]
		if flt.Status != "" && m.Status != flt.Status {
			continue
		}
		if len(page.Items) == flt.Limit {
			page.NextCursor = page.Items[len(page.Items)-1].ID
			break
		}
		page.Items = append(page.Items, m)
	}
	return page, nil
}

func (f *fakeMessages) setDeliveries(id string, d []message.Delivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.byID[id]
	m.Deliveries = d
	f.byID[id] = m
}

func (f *fakeMessages) setStatus(id string, s message.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.byID[id]
	m.Status = s
	f.byID[id] = m
}

// fakeScheduler is an in-memory httpapi.Scheduler.
type fakeScheduler struct {
	mu    sync.Mutex
	state message.SchedulerState
	err   error
}

var _ httpapi.Scheduler = (*fakeScheduler)(nil)

func (s *fakeScheduler) set(st message.SchedulerState) (httpapi.SchedulerStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return httpapi.SchedulerStatus{}, s.err
	}
	if st != "" {
		s.state = st
	}
	if s.state == "" {
		s.state = message.SchedulerStopped
	}
	return httpapi.SchedulerStatus{State: s.state, Backend: "mongodb"}, nil
}

func (s *fakeScheduler) Status(context.Context) (httpapi.SchedulerStatus, error) { return s.set("") }
func (s *fakeScheduler) Start(context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(message.SchedulerStarted)
}
func (s *fakeScheduler) Stop(context.Context) (httpapi.SchedulerStatus, error) {
	return s.set(message.SchedulerStopped)
}

type syncBuffer = logbuf.Buffer

// testServer is NewServer over the fakes, with its logs captured.
type testServer struct {
	h     http.Handler
	msgs  *fakeMessages
	sched *fakeScheduler
	logs  *syncBuffer
}

func newTestServer(t testing.TB, configure ...func(*httpapi.Options)) *testServer {
	t.Helper()
	ts := &testServer{msgs: newFakeMessages(), sched: &fakeScheduler{}, logs: &syncBuffer{}}
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
		if p.Field != field || len(p.Errors) != 1 || p.Errors[0].Field != field || p.Errors[0].Detail == "" {
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

func (f *fakeMessages) Retry(ctx context.Context, id string) (message.Message, error) {
	m, err := f.Get(ctx, id)
	if err != nil {
		return m, err
	}
	if m.Status != message.StatusFailed {
		return m, &message.Error{Code: message.ECONFLICT, Message: "not FAILED"}
	}
	f.setStatus(id, message.StatusUnsent)
	return f.Get(ctx, id)
}

func (f *fakeMessages) Replay(ctx context.Context, req message.ReplayRequest) (message.ReplayResult, error) {
	res := message.ReplayResult{DryRun: req.DryRun, IDs: []string{}}
	for _, id := range req.IDs {
		if m, err := f.Get(ctx, id); err == nil && m.Status == message.StatusFailed {
			res.Matched++
			res.IDs = append(res.IDs, id)
			if !req.DryRun {
				f.setStatus(id, message.StatusUnsent)
				res.Replayed++
			}
		}
	}
	return res, nil
}
