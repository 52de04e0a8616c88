package ebscheduler_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/ebscheduler"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// region is the AWS_REGION the tests configure; requests must be signed
// for it.
const region = "eu-west-1"

// newScheduler returns a Scheduler for the schedule rms-publisher in group
// default, built as the Lambda functions build it, whose client sends its
// requests to h.
func newScheduler(t *testing.T, h http.Handler) *ebscheduler.Scheduler {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	env := map[string]string{
		"AWS_ENDPOINT_URL_SCHEDULER": srv.URL,
		"AWS_REGION":                 region,
		"AWS_ACCESS_KEY_ID":          "AKIDEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":      "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		"AWS_SESSION_TOKEN":          "session-token",
	}
	s, err := ebscheduler.NewFromEnvironment(func(k string) string { return env[k] }, "rms-publisher", "default")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkRequest checks what every request the SDK sends must have: the
// session token, a SigV4 signature scoped to the configured region and to
// the scheduler service, and the schedule's path. It reports false if the
// path is wrong.
func checkRequest(t *testing.T, r *http.Request) bool {
	if r.Header.Get("X-Amz-Security-Token") != "session-token" {
		t.Errorf("session token not sent")
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") || !strings.Contains(auth, "/"+region+"/scheduler/aws4_request") {
		t.Errorf("request not signed for scheduler in %s: %q", region, auth)
	}
	if r.URL.Path != "/schedules/rms-publisher" {
		t.Errorf("unexpected path %s", r.URL.Path)
		return false
	}
	if r.Method == http.MethodGet {
		if g := r.URL.Query().Get("groupName"); g != "default" {
			t.Errorf("GetSchedule groupName %q", g)
		}
	}
	return true
}

// fakeScheduler stands in for the EventBridge Scheduler endpoint (the only
// AWS control-plane API the system calls) and checks the exact requests the
// SDK sends. If updateStatus is set, UpdateSchedule fails with it and the
// error type updateError, and leaves the state alone.
type fakeScheduler struct {
	t            *testing.T
	updateStatus int
	updateError  string

	mu      sync.Mutex
	state   string
	gets    int
	updates []map[string]any
}

// scheduleJSON is a GetSchedule answer with every field a schedule that
// invokes a Lambda function can have; %s is its state.
const scheduleJSON = `{
  "Arn": "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/rms-publisher",
  "Name": "rms-publisher",
  "GroupName": "default",
  "ScheduleExpression": "rate(1 minute)",
  "ScheduleExpressionTimezone": "Europe/Istanbul",
  "Description": "outbox publisher",
  "StartDate": 1764300000,
  "EndDate": 1795836000.5,
  "KmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
  "FlexibleTimeWindow": {"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 1},
  "ActionAfterCompletion": "NONE",
  "Target": {
    "Arn": "arn:aws:lambda:eu-west-1:123456789012:function:rms-publisher",
    "RoleArn": "arn:aws:iam::123456789012:role/rms-publisher-schedule",
    "Input": "{\"source\":\"schedule\"}",
    "RetryPolicy": {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0},
    "DeadLetterConfig": {"Arn": "arn:aws:sqs:eu-west-1:123456789012:rms-publisher-dlq"}
  },
  "CreationDate": 1764200000,
  "LastModificationDate": 1764300000,
  "State": "%s"
}`

func schedule(state string) string { return strings.Replace(scheduleJSON, "%s", state, 1) }

func (f *fakeScheduler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !checkRequest(f.t, r) {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.Method {
	case http.MethodGet:
		f.gets++
		_, _ = io.WriteString(w, schedule(f.state))
	case http.MethodPut:
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			f.t.Errorf("UpdateSchedule body: %v", err)
		}
		f.updates = append(f.updates, body)
		if f.updateStatus != 0 {
			w.Header().Set("X-Amzn-ErrorType", f.updateError)
			w.WriteHeader(f.updateStatus)
			_, _ = fmt.Fprintf(w, `{"Message":"%s"}`, f.updateError)
			return
		}
		f.state, _ = body["State"].(string)
		_, _ = io.WriteString(w, `{"ScheduleArn":"arn:aws:scheduler:eu-west-1:123456789012:schedule/default/rms-publisher"}`)
	default:
		f.t.Errorf("unexpected method %s", r.Method)
	}
}

func (f *fakeScheduler) counts() (gets, updates int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets, len(f.updates)
}

func TestToggleSchedule(t *testing.T) {
	fake := &fakeScheduler{t: t, state: "ENABLED"}
	s := newScheduler(t, fake)
	ctx := context.Background()

	st, err := s.Status(ctx)
	if err != nil || st.State != message.SchedulerStarted || st.Schedule != "rms-publisher" || st.Backend != "eventbridge-scheduler" {
		t.Fatalf("status: %+v %v", st, err)
	}
	if st, err = s.Start(ctx); err != nil || st.State != message.SchedulerStarted || len(fake.updates) != 0 {
		t.Fatalf("start while enabled must not update: %+v %v, %d updates", st, err, len(fake.updates))
	}
	if st, err = s.Stop(ctx); err != nil || st.State != message.SchedulerStopped {
		t.Fatalf("stop: %+v %v", st, err)
	}
	if len(fake.updates) != 1 {
		t.Fatalf("%d updates, want 1", len(fake.updates))
	}

	// UpdateSchedule replaces the whole schedule: its body must be what
	// GetSchedule returned, but for the read-only fields, the name (which
	// is in the path) and the new state, plus the SDK's idempotency token.
	got := fake.updates[0]
	if tok, _ := got["ClientToken"].(string); tok == "" {
		t.Errorf("UpdateSchedule without a ClientToken: %v", got)
	}
	if got["State"] != "DISABLED" {
		t.Errorf("UpdateSchedule State = %v, want DISABLED", got["State"])
	}
	delete(got, "ClientToken")
	delete(got, "State")
	var want map[string]any
	if err := json.Unmarshal([]byte(schedule("ENABLED")), &want); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"Arn", "CreationDate", "LastModificationDate", "State", "Name"} {
		delete(want, k)
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("UpdateSchedule body\n%s\nwant the schedule as read\n%s", g, w)
	}

	// The gate follows the schedule, and reads it at most once per cache period.
	gate := s.Gate()
	gets := fake.gets
	for range 10 {
		if open, err := gate(ctx); err != nil || open {
			t.Fatalf("gate while disabled: %v %v", open, err)
		}
	}
	if fake.gets != gets {
		t.Errorf("gate read the schedule %d times within its cache period", fake.gets-gets)
	}
	if st, err = s.Start(ctx); err != nil || st.State != message.SchedulerStarted || len(fake.updates) != 2 {
		t.Fatalf("start: %+v %v", st, err)
	}
	if open, err := gate(ctx); err != nil || !open {
		t.Fatalf("gate after start: %v %v", open, err)
	}
}

// A failed UpdateSchedule is a 503 for the API's client, and leaves the
// state the gate sees as it was.
func TestToggleFailure(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
	}{
		{http.StatusConflict, "ConflictException"},
		{http.StatusForbidden, "AccessDeniedException"},
	} {
		for _, op := range []struct {
			name    string
			from    string
			wasOpen bool
			call    func(*ebscheduler.Scheduler, context.Context) error
		}{
			{"stop", "ENABLED", true, func(s *ebscheduler.Scheduler, ctx context.Context) error { _, err := s.Stop(ctx); return err }},
			{"start", "DISABLED", false, func(s *ebscheduler.Scheduler, ctx context.Context) error { _, err := s.Start(ctx); return err }},
		} {
			t.Run(op.name+" "+tc.code, func(t *testing.T) {
				fake := &fakeScheduler{t: t, state: op.from, updateStatus: tc.status, updateError: tc.code}
				s := newScheduler(t, fake)
				ctx := context.Background()
				gate := s.Gate()
				if open, err := gate(ctx); err != nil || open != op.wasOpen {
					t.Fatalf("gate before: %v %v", open, err)
				}

				err := op.call(s, ctx)
				if err == nil {
					t.Fatalf("%s succeeded although UpdateSchedule answered %d", op.name, tc.status)
				}
				if code := message.ErrorCode(err); code != message.EUNAVAILABLE {
					t.Errorf("error code %q, want %q: %v", code, message.EUNAVAILABLE, err)
				}
				if !strings.Contains(err.Error(), tc.code) {
					t.Errorf("error does not name the cause: %v", err)
				}
				gets, updates := fake.counts()
				if updates == 0 {
					t.Errorf("UpdateSchedule not called")
				}

				if open, err := gate(ctx); err != nil || open != op.wasOpen {
					t.Errorf("gate after the failed %s: %v %v, want %v", op.name, open, err, op.wasOpen)
				}
				if g, _ := fake.counts(); g != gets {
					t.Errorf("gate read the schedule again after the failed %s: its cache was changed", op.name)
				}
			})
		}
	}
}

// The gate gives up on its own after about a second, whatever deadline its
// caller has: a POST /messages then stores its message for the publisher
// rather than waiting for EventBridge Scheduler.
func TestGateTimesOut(t *testing.T) {
	var mu sync.Mutex
	requests := 0
	release := make(chan struct{})
	s := newScheduler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		checkRequest(t, r)
		mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) }) // before the server closes

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gate := s.Gate()
	start := time.Now()
	open, err := gate(ctx)
	took := time.Since(start)
	if err == nil || open {
		t.Fatalf("gate against an endpoint that never answers: %v %v", open, err)
	}
	if took > 3*time.Second { // gateTimeout, 1 s, with room for a loaded machine
		t.Errorf("gate took %s to give up", took)
	}
	if code := message.ErrorCode(err); code != message.EUNAVAILABLE {
		t.Errorf("error code %q, want %q: %v", code, message.EUNAVAILABLE, err)
	}

	// The next call within the cache period does not wait again: it makes
	// no request (counted below).
	if open, err := gate(ctx); err == nil || open {
		t.Fatalf("second gate call: %v %v", open, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 1 {
		t.Errorf("%d requests, want 1", requests)
	}
}

// While EventBridge Scheduler throttles, the gate makes one attempt and
// remembers the failure for its cache period; the user's explicit calls
// still get the SDK's retries.
func TestGateRemembersFailure(t *testing.T) {
	var mu sync.Mutex
	requests, throttle := 0, true
	s := newScheduler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		checkRequest(t, r)
		w.Header().Set("Content-Type", "application/json")
		if throttle {
			w.Header().Set("X-Amzn-ErrorType", "ThrottlingException")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"Message":"Rate exceeded"}`)
			return
		}
		_, _ = io.WriteString(w, schedule("ENABLED"))
	}))
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := requests
		requests = 0
		return n
	}
	setThrottle := func(on bool) {
		mu.Lock()
		throttle = on
		mu.Unlock()
	}
	now := time.Now()
	ebscheduler.SetClock(s, func() time.Time { return now })
	ttl := ebscheduler.CacheTTL(s)
	ctx := context.Background()
	gate := s.Gate()

	open, err := gate(ctx)
	if err == nil || open || message.ErrorCode(err) != message.EUNAVAILABLE || !strings.Contains(err.Error(), "ThrottlingException") {
		t.Fatalf("gate while throttled: %v %v", open, err)
	}
	if n := count(); n != 1 {
		t.Errorf("gate made %d requests, want 1", n)
	}

	now = now.Add(ttl - time.Millisecond)
	open, err = gate(ctx)
	if err == nil || open || message.ErrorCode(err) != message.EUNAVAILABLE || !strings.Contains(err.Error(), "ThrottlingException") {
		t.Fatalf("gate within the failure's period: %v %v", open, err)
	}
	if n := count(); n != 0 {
		t.Errorf("gate made %d requests within the failure's period, want 0", n)
	}

	// GET /scheduler is the user's own question: it asks, with retries.
	if _, err := s.Status(ctx); err == nil || message.ErrorCode(err) != message.EUNAVAILABLE {
		t.Errorf("status while throttled: %v", err)
	}
	if n := count(); n < 2 {
		t.Errorf("status made %d requests: the SDK's retries are gone", n)
	}

	now = now.Add(time.Millisecond)
	if open, err := gate(ctx); err == nil || open {
		t.Fatalf("gate after the failure's period: %v %v", open, err)
	}
	if n := count(); n != 1 {
		t.Errorf("gate made %d requests after the failure's period, want 1", n)
	}

	// A successful read replaces the failure at once.
	setThrottle(false)
	if st, err := s.Status(ctx); err != nil || st.State != message.SchedulerStarted {
		t.Fatalf("status: %+v %v", st, err)
	}
	count()
	if open, err := gate(ctx); err != nil || !open {
		t.Errorf("gate after a successful read: %v %v", open, err)
	}
	if n := count(); n != 0 {
		t.Errorf("gate made %d requests right after a successful read", n)
	}
}

// A gate call whose own caller gave up does not pass its failure on to the
// next caller.
func TestGateForgetsCallerCancel(t *testing.T) {
	fake := &fakeScheduler{t: t, state: "ENABLED"}
	s := newScheduler(t, fake)
	gate := s.Gate()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if open, err := gate(ctx); err == nil || open || !errors.Is(err, context.Canceled) {
		t.Fatalf("gate with a cancelled context: %v %v", open, err)
	}
	if open, err := gate(context.Background()); err != nil || !open {
		t.Fatalf("gate after another caller gave up: %v %v", open, err)
	}
	if gets, _ := fake.counts(); gets != 1 {
		t.Errorf("%d reads, want 1", gets)
	}
}

// TestGateTrustsAReadFromItsStart: the gate's read is as old as its start:
// a schedule disabled while a slow read ran is read again by the next gate
// call once the cache period from the read's start has passed, not a whole
// period after its end.
func TestGateTrustsAReadFromItsStart(t *testing.T) {
	f := &fakeScheduler{t: t, state: "ENABLED"}
	now := time.Unix(1_800_000_000, 0)
	var ttl time.Duration
	s := newScheduler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.ServeHTTP(w, r)
		// The read took the whole cache period, and the schedule was
		// disabled meanwhile.
		f.mu.Lock()
		now = now.Add(ttl)
		f.state = "DISABLED"
		f.mu.Unlock()
	}))
	ttl = ebscheduler.CacheTTL(s)
	ebscheduler.SetClock(s, func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		return now
	})
	gate := s.Gate()
	if open, err := gate(context.Background()); err != nil || !open {
		t.Fatalf("first gate call: %v %v; want open (read before the stop)", open, err)
	}
	if open, err := gate(context.Background()); err != nil || open {
		t.Fatalf("gate right after the slow read: %v %v; want closed, read again", open, err)
	}
	if gets, _ := f.counts(); gets != 2 {
		t.Errorf("%d reads, want 2", gets)
	}
}

// TestForgetGateReadsAgain: after ForgetGate, the gate reads the schedule
// again instead of answering from what it read a moment before.
func TestForgetGateReadsAgain(t *testing.T) {
	f := &fakeScheduler{t: t, state: "DISABLED"}
	s := newScheduler(t, f)
	gate := s.Gate()
	if open, err := gate(context.Background()); err != nil || open {
		t.Fatalf("gate: %v %v; want closed", open, err)
	}
	f.mu.Lock()
	f.state = "ENABLED"
	f.mu.Unlock()
	s.ForgetGate()
	if open, err := gate(context.Background()); err != nil || !open {
		t.Fatalf("gate after ForgetGate: %v %v; want open, read again", open, err)
	}
	if gets, _ := f.counts(); gets != 2 {
		t.Errorf("%d reads, want 2", gets)
	}
}
