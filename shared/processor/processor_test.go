package processor_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

// webhook answers with status and counts calls. With hold set, each call
// waits for hold to close before it answers.
func webhook(t *testing.T, status *atomic.Int32, delay time.Duration, hold <-chan struct{}) (*atomic.Int32, string) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if hold != nil {
			<-hold
		}
		time.Sleep(delay)
		w.WriteHeader(int(status.Load()))
		_, _ = w.Write([]byte(`{"message":"Accepted","messageId":"wh-1"}`))
	}))
	t.Cleanup(srv.Close)
	return &calls, srv.URL
}

type fixture struct {
	a     *app.App
	env   map[string]string
	calls *atomic.Int32
	code  *atomic.Int32
}

func setup(t *testing.T, delay time.Duration, extra map[string]string) *fixture {
	return setupHeld(t, delay, nil, extra)
}

// setupHeld is setup with a webhook whose calls wait for hold to close.
func setupHeld(t *testing.T, delay time.Duration, hold <-chan struct{}, extra map[string]string) *fixture {
	code := &atomic.Int32{}
	code.Store(http.StatusAccepted)
	calls, url := webhook(t, code, delay, hold)
	if extra == nil {
		extra = map[string]string{}
	}
	extra["WEBHOOK_URL"] = url
	env := testenv.Env(t, extra)
	return &fixture{a: testenv.App(t, env), env: env, calls: calls, code: code}
}

func (f *fixture) processor(t *testing.T) *processor.Processor {
	p, err := f.a.Processor()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// twoProcesses hands env to two processors with clients of their own, as
// two processes would have, at the same moment, and returns them.
func (f *fixture) twoProcesses(t *testing.T, env message.Envelope) []*processor.Processor {
	t.Helper()
	other := &fixture{a: testenv.App(t, f.env)}
	ps := []*processor.Processor{f.processor(t), other.processor(t)}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := p.Handle(context.Background(), body(env), false); r.Action != processor.Ack {
				t.Errorf("Handle: %+v", r)
			}
		}()
	}
	wg.Wait()
	return ps
}

// published stores a message and publishes it, returning its envelope.
func (f *fixture) published(t *testing.T) message.Envelope {
	t.Helper()
	ctx := context.Background()
	m, _, err := f.a.Service(func(context.Context) (bool, error) { return false, nil }).
		Create(ctx, message.CreateRequest{To: "+905551111111", Content: "hello"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := f.a.Relay(nil).Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("publish: %+v %v", s, err)
	}
	testenv.Drain(t, f.env["RABBITMQ_QUEUE"])
	return message.Envelope{ID: m.ID, Seq: 0}
}

// expectFailedAndCalls checks the size of the failed index and the number
// of webhook calls so far.
func (f *fixture) expectFailedAndCalls(t *testing.T, failed int64, calls int32) {
	t.Helper()
	if n, err := f.a.Store.CountFailed(context.Background()); err != nil || n != failed {
		t.Fatalf("failed index holds %d (%v), want %d", n, err, failed)
	}
	if n := f.calls.Load(); n != calls {
		t.Fatalf("webhook called %d times, want %d", n, calls)
	}
}

func body(env message.Envelope) []byte {
	b, _ := json.Marshal(env)
	return b
}

func (f *fixture) message(t *testing.T, id string) message.Message {
	m, err := f.a.Store.GetMessage(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestConcurrentCopiesDeliverOnce gives the same message to two processors
// (separate clients, as in two processes) at the same moment, and to one of
// them again afterwards: the webhook is called once.
func TestConcurrentCopiesDeliverOnce(t *testing.T) {
	f := setup(t, 100*time.Millisecond, nil)
	env := f.published(t)
	ps := f.twoProcesses(t, env)
	if r := ps[0].Handle(context.Background(), body(env), true); r.Outcome != "duplicate" {
		t.Errorf("a late copy: %+v", r)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("webhook called %d times, want 1", n)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusSent || m.Attempts != 1 || m.WebhookMessageID != "wh-1" || len(m.Deliveries) != 1 {
		t.Fatalf("after delivery: %+v", m)
	}
}

func TestRetryableFailureSchedulesARetry(t *testing.T) {
	f := setup(t, 0, map[string]string{"RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	f.code.Store(http.StatusServiceUnavailable)
	env := f.published(t)
	before := time.Now()
	r := f.processor(t).Handle(context.Background(), body(env), false)
	if r.Action != processor.Ack || r.Outcome != message.OutcomeRetry {
		t.Fatalf("Handle: %+v", r)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusUnsent || m.Attempts != 1 || m.Seq != 1 || m.NextAttemptAt == nil || m.LastError == "" {
		t.Fatalf("after a 503: %+v", m)
	}
	if wait := m.NextAttemptAt.Sub(before); wait < 8*time.Second || wait > 13*time.Second {
		t.Fatalf("first retry after %s, want 10s ±20%%", wait)
	}
	// The old copy is stale now and does nothing.
	if r := f.processor(t).Handle(context.Background(), body(env), true); r.Outcome != "stale_copy" || f.calls.Load() != 1 {
		t.Fatalf("old copy: %+v, calls %d", r, f.calls.Load())
	}
}

func TestPermanentFailureIsDeadLettered(t *testing.T) {
	f := setup(t, 0, nil)
	f.code.Store(http.StatusBadRequest)
	env := f.published(t)
	r := f.processor(t).Handle(context.Background(), body(env), false)
	if r.Action != processor.Ack || r.Outcome != message.OutcomeFailed {
		t.Fatalf("Handle: %+v", r)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusFailed || m.Attempts != 1 || m.FailureReason == "" {
		t.Fatalf("after a 400: %+v", m)
	}
	dlq := testenv.Drain(t, f.env["RABBITMQ_DLQ"])
	if len(dlq) != 1 {
		t.Fatalf("%d dead-letter notifications, want 1", len(dlq))
	}
}

// TestRetriesExhaustedAreDeadLettered: a retryable failure on the last
// allowed attempt ends FAILED with the reason, notified on the dead-letter
// queue, and the message is in the failed index.
func TestRetriesExhaustedAreDeadLettered(t *testing.T) {
	f := setup(t, 0, map[string]string{"MAX_RETRIES": "1", "RETRY_BASE_DELAY": "1s", "RETRY_MAX_DELAY": "1s"})
	f.code.Store(http.StatusServiceUnavailable)
	env := f.published(t)
	p := f.processor(t)
	ctx := context.Background()
	if r := p.Handle(ctx, body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("first attempt: %+v", r)
	}
	relay := f.a.Relay(nil)
	relay.Now = func() time.Time { return time.Now().Add(time.Minute) }
	if s, err := relay.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("publish the retry: %+v %v", s, err)
	}
	copies := testenv.Drain(t, f.env["RABBITMQ_QUEUE"])
	if len(copies) != 1 {
		t.Fatalf("%d copies queued for the retry, want 1", len(copies))
	}
	if r := p.Handle(ctx, copies[0], false); r.Action != processor.Ack || r.Outcome != message.OutcomeFailed {
		t.Fatalf("last attempt: %+v", r)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusFailed || m.Attempts != 2 || m.FailureReason != "retries exhausted after 2 attempts" || m.LastError == "" {
		t.Fatalf("after the last attempt: %+v", m)
	}
	dlq := testenv.Drain(t, f.env["RABBITMQ_DLQ"])
	var n message.DeadLetter
	if len(dlq) != 1 || json.Unmarshal(dlq[0], &n) != nil || n.MessageID != env.ID || n.Reason != m.FailureReason || n.Attempts != 2 {
		t.Fatalf("dead-letter notifications %q, want one for %s with its reason", dlq, env.ID)
	}
	f.expectFailedAndCalls(t, 1, 2)
}

// TestDeadLetterNotifyFailureRequeues: when the dead-letter notification
// cannot be published, the message is not recorded FAILED (a FAILED record
// without its notification could never be noticed): the copy is requeued,
// keeping its claim, so that the redelivered copy does not call the webhook
// again at once but counts the call and puts the message back for after the
// claim; the next dispatch gets the same answer, then notifies and records.
func TestDeadLetterNotifyFailureRequeues(t *testing.T) {
	f := setup(t, 0, nil)
	f.code.Store(http.StatusBadRequest)
	env := f.published(t)
	p := f.processor(t)
	ctx := context.Background()
	var requeued atomic.Int32
	p.Observe = func(event string, n int) {
		if event == "requeued" {
			requeued.Add(int32(n))
		}
	}
	testenv.DeleteQueues(t, "", f.env["RABBITMQ_DLQ"]) // publishes to it are returned as unroutable
	if r := p.Handle(ctx, body(env), false); r.Action != processor.Requeue || r.Err == nil {
		t.Fatalf("with the dead-letter queue gone: %+v, want a requeue", r)
	}
	if n := requeued.Load(); n != 1 {
		t.Fatalf("the requeue was counted %d times, want 1 (rms_messages_total{event=\"requeued\"})", n)
	}
	if m := f.message(t, env.ID); m.Status != message.StatusProcessing || m.Attempts != 0 {
		t.Fatalf("after the failed notification: %s after %d attempts, want PROCESSING and none recorded", m.Status, m.Attempts)
	}
	testenv.App(t, f.env) // a process that starts declares the queue again
	if r := p.Handle(ctx, body(env), true); r.Action != processor.Ack || r.Outcome != message.OutcomeDeferred {
		t.Fatalf("redelivered copy: %+v, want a deferral", r)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusUnsent || m.Attempts != 1 || f.calls.Load() != 1 {
		t.Fatalf("after the redelivered copy: %s after %d attempts, %d calls; want UNSENT, 1 and 1", m.Status, m.Attempts, f.calls.Load())
	}
	if n := len(testenv.Drain(t, f.env["RABBITMQ_DLQ"])); n != 0 {
		t.Fatalf("%d dead-letter notifications, want none yet", n)
	}
}

// recordFails is a processor store whose outcome writes fail.
type recordFails struct{ processor.Store }

func (recordFails) RecordOutcomes(_ context.Context, os []message.Outcome) []error {
	errs := make([]error, len(os))
	for i := range errs {
		errs[i] = errors.New("server selection error: context deadline exceeded")
	}
	return errs
}

// halfRecorded is a processor store whose outcome writes reach the message
// but fail after it, as when the outbox entry's insert or delete fails.
type halfRecorded struct{ processor.Store }

func (s halfRecorded) RecordOutcomes(ctx context.Context, os []message.Outcome) []error {
	errs := s.Store.RecordOutcomes(ctx, os)
	for i := range errs {
		if errs[i] == nil {
			errs[i] = errors.New("record outcome: insert next outbox entry: connection reset")
		}
	}
	return errs
}

// failedCallRequeued delivers a message to a webhook answering 503 through
// a processor whose store is wrap's, and checks that the copy is requeued.
func failedCallRequeued(t *testing.T, wrap func(processor.Store) processor.Store) (*fixture, message.Envelope) {
	t.Helper()
	f := setup(t, 0, nil)
	f.code.Store(http.StatusServiceUnavailable)
	env := f.published(t)
	p := f.processor(t)
	p.Store = wrap(p.Store)
	if r := p.Handle(context.Background(), body(env), false); r.Action != processor.Requeue {
		t.Fatalf("with the outcome not written in full: %+v, want a requeue", r)
	}
	return f, env
}

// TestHalfRecordedFailureReleasesTheClaim: a failure whose retry reached the
// message (its seq moved on) but not its outbox entries is recorded as far
// as the claim goes: the claim is released, so that the next dispatch's
// copy is not taken for a live holder's duplicate.
func TestHalfRecordedFailureReleasesTheClaim(t *testing.T) {
	f, env := failedCallRequeued(t, func(s processor.Store) processor.Store { return halfRecorded{s} })
	if m := f.message(t, env.ID); m.Seq != 1 || m.Status != message.StatusUnsent {
		t.Fatalf("after the half-written outcome: %s seq %d, want UNSENT at seq 1", m.Status, m.Seq)
	}
	if st, _, err := f.a.Redis.Peek(context.Background(), env.ID); err != nil || st != outbox.InboxNone {
		t.Fatalf("inbox after the half-written outcome: %v %v, want the claim released", st, err)
	}
}

// TestUnrecordedFailureKeepsTheClaim: a webhook call whose failure cannot
// be recorded keeps its claim, so that the requeued copy does not call the
// webhook again at once, with no backoff and no attempt counted.
func TestUnrecordedFailureKeepsTheClaim(t *testing.T) {
	f, env := failedCallRequeued(t, func(s processor.Store) processor.Store { return recordFails{s} })
	ctx := context.Background()
	if st, _, err := f.a.Redis.Peek(ctx, env.ID); err != nil || st != outbox.InboxInProgress {
		t.Fatalf("inbox after the unrecorded call: %v %v, want the claim kept", st, err)
	}
	if r := f.processor(t).Handle(ctx, body(env), true); r.Outcome != message.OutcomeDeferred || f.calls.Load() != 1 {
		t.Fatalf("redelivered copy: %+v, %d calls; want a deferral and no second call", r, f.calls.Load())
	}
	if m := f.message(t, env.ID); m.Attempts != 1 || m.Status != message.StatusUnsent {
		t.Fatalf("after the deferral: %s attempts %d; want UNSENT with the call counted", m.Status, m.Attempts)
	}
}

// TestCopyOfAFailedMessageRestoresTheFailedIndex: the failed index is
// written after the FAILED status. If that write is lost, the copy requeued
// for it (or any later copy) puts the message back in the index, without a
// second delivery.
func TestCopyOfAFailedMessageRestoresTheFailedIndex(t *testing.T) {
	f := setup(t, 0, nil)
	f.code.Store(http.StatusBadRequest)
	env := f.published(t)
	p := f.processor(t)
	ctx := context.Background()
	if r := p.Handle(ctx, body(env), false); r.Outcome != message.OutcomeFailed {
		t.Fatalf("Handle: %+v", r)
	}
	if err := f.a.Store.RemoveFailed(ctx, env.ID); err != nil {
		t.Fatal(err)
	}
	if r := p.Handle(ctx, body(env), true); r.Action != processor.Ack || r.Outcome != "duplicate" {
		t.Fatalf("copy: %+v", r)
	}
	f.expectFailedAndCalls(t, 1, 1)
}

// deadlines passes notifications on and records whether each had a
// deadline.
type deadlines struct {
	processor.DeadLetters
	mu   sync.Mutex
	left []time.Duration // 0: none
}

func (d *deadlines) NotifyDeadLetter(ctx context.Context, n message.DeadLetter) error {
	var left time.Duration
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	d.mu.Lock()
	d.left = append(d.left, left)
	d.mu.Unlock()
	return d.DeadLetters.NotifyDeadLetter(ctx, n)
}

// TestMalformedAndUnknownAreDeadLettered: a queue message that is not an
// envelope, or names no stored message, is dead-lettered with a reason,
// within RecordTimeout even when the consumer's context has no deadline
// (a broker blocked by a memory alarm must not hold the worker for good).
func TestMalformedAndUnknownAreDeadLettered(t *testing.T) {
	f := setup(t, 0, nil)
	p := f.processor(t)
	dl := &deadlines{DeadLetters: p.DeadLetters}
	p.DeadLetters = dl
	for _, b := range []string{`not json`, `{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":0}`} {
		if r := p.Handle(context.Background(), []byte(b), false); r.Action != processor.Ack {
			t.Fatalf("Handle(%s): %+v", b, r)
		}
	}
	if len(dl.left) != 2 {
		t.Fatalf("%d notifications went through DeadLetters, want 2", len(dl.left))
	}
	for i, left := range dl.left {
		if left <= 0 || left > processor.RecordTimeout {
			t.Fatalf("notification %d had %s left (0: no deadline), want at most RecordTimeout", i, left)
		}
	}
	dlq := testenv.Drain(t, f.env["RABBITMQ_DLQ"])
	if len(dlq) != 2 || f.calls.Load() != 0 {
		t.Fatalf("%d notifications and %d webhook calls, want 2 and 0", len(dlq), f.calls.Load())
	}
	for _, n := range dlq {
		var d message.DeadLetter
		if err := json.Unmarshal(n, &d); err != nil || d.Reason == "" {
			t.Fatalf("notification %s", n)
		}
	}
}

// TestDoneMarkerRecordsWithoutRedelivery: the webhook answered, the process
// died before MongoDB heard of it; the redelivered copy records SENT from the
// inbox's done marker without calling the webhook again, and counts it
// delivered, once: the copies after it count nothing.
func TestDoneMarkerRecordsWithoutRedelivery(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	ctx := context.Background()
	if err := f.a.Redis.Complete(ctx, env.ID, "wh-earlier", time.Hour); err != nil {
		t.Fatal(err)
	}
	p := f.processor(t)
	var ev testenv.Tally
	p.Observe = ev.Record
	r := p.Handle(ctx, body(env), true)
	if r.Action != processor.Ack || f.calls.Load() != 0 {
		t.Fatalf("Handle: %+v, calls %d", r, f.calls.Load())
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusSent || m.WebhookMessageID != "wh-earlier" {
		t.Fatalf("after recovery: %+v", m)
	}
	if r := p.Handle(ctx, body(env), true); r.Outcome != "duplicate" {
		t.Fatalf("a copy after the recovery: %+v, want a duplicate", r)
	}
	if events := ev.Counts(); len(events) != 1 || events["delivered"] != 1 {
		t.Fatalf("events %v, want the recovered delivery counted once as delivered", events)
	}
}

// TestRedisDownFallsBackToMongo: with Redis unreachable, the inbox claim
// falls back to MongoDB and two copies still reach the webhook once.
func TestRedisDownFallsBackToMongo(t *testing.T) {
	f := setup(t, 100*time.Millisecond, map[string]string{"REDIS_URI": "127.0.0.1:1"})
	env := f.published(t) // the relay's lease falls back to MongoDB too
	f.twoProcesses(t, env)
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("webhook called %d times, want 1", n)
	}
	if m := f.message(t, env.ID); m.Status != message.StatusSent {
		t.Fatalf("status %s, want SENT", m.Status)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	f := setup(t, 0, map[string]string{"RETRY_BASE_DELAY": "1s", "RETRY_MAX_DELAY": "1m"})
	f.code.Store(http.StatusTooManyRequests)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	f.env["WEBHOOK_URL"] = srv.URL
	a := testenv.App(t, f.env)
	p, err := a.Processor()
	if err != nil {
		t.Fatal(err)
	}
	env := f.published(t)
	before := time.Now()
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("Handle: %+v", r)
	}
	m := f.message(t, env.ID)
	if wait := m.NextAttemptAt.Sub(before); wait < 29*time.Second || wait > 32*time.Second {
		t.Fatalf("429 with Retry-After: 30 retried after %s", wait)
	}

	// Beyond RETRY_MAX_DELAY the wait stops there.
	f.env["RETRY_MAX_DELAY"] = "20s"
	a = testenv.App(t, f.env)
	if p, err = a.Processor(); err != nil {
		t.Fatal(err)
	}
	env = f.published(t)
	before = time.Now()
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("Handle: %+v", r)
	}
	m = f.message(t, env.ID)
	if wait := m.NextAttemptAt.Sub(before); wait < 19*time.Second || wait > 21*time.Second {
		t.Fatalf("Retry-After: 30 with RETRY_MAX_DELAY 20s retried after %s", wait)
	}
}

// TestWebhookCheckSeesFailuresBeforeTheBreakerTrips: at low traffic the
// breaker may never trip (it waits for BREAKER_MIN_REQUESTS calls), yet a
// webhook whose last three calls failed is reported failing, and ok again
// after a success.
func TestWebhookCheckSeesFailuresBeforeTheBreakerTrips(t *testing.T) {
	f := setup(t, 0, map[string]string{"BREAKER_MIN_REQUESTS": "100", "RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	p := f.processor(t)
	webhook := f.a.WebhookCheck()
	handle := func(want string) {
		t.Helper()
		if r := p.Handle(context.Background(), body(f.published(t)), false); r.Outcome != want {
			t.Fatalf("Handle: %+v, want %s", r, want)
		}
	}
	f.code.Store(http.StatusServiceUnavailable)
	for i := range 3 {
		if err := webhook.Check(context.Background()); err != nil {
			t.Fatalf("webhook check after %d failed calls: %v, want ok", i, err)
		}
		handle(message.OutcomeRetry)
	}
	if err := webhook.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "last 3 calls") {
		t.Fatalf("webhook check after 3 failed calls in a row: %v, want a failure naming them", err)
	}
	if st := f.a.BreakerState(); st != "closed" {
		t.Fatalf("breaker %s after 3 of BREAKER_MIN_REQUESTS 100 calls, want closed", st)
	}
	f.code.Store(http.StatusOK)
	handle(message.OutcomeDelivered)
	if err := webhook.Check(context.Background()); err != nil {
		t.Fatalf("webhook check after a delivery: %v, want ok", err)
	}
}

// TestEndpointAnswersTripTheBreaker: an answer about the endpoint (401 for
// a wrong secret, 404, a redirect) is permanent for its message, as every
// 3xx and 4xx, but every message would get it, so the breaker counts it: once
// it opens, the backlog waits in the outbox instead of draining into the
// dead-letter queue. An answer about the message (400) does not count.
func TestEndpointAnswersTripTheBreaker(t *testing.T) {
	for _, tc := range []struct {
		code  int32
		trips bool
	}{
		{http.StatusUnauthorized, true},
		{http.StatusNotFound, true},
		{http.StatusPermanentRedirect, true},
		{http.StatusBadRequest, false},
		{http.StatusUnprocessableEntity, false},
	} {
		t.Run(http.StatusText(int(tc.code)), func(t *testing.T) {
			f := setup(t, 0, map[string]string{"BREAKER_MIN_REQUESTS": "3", "BREAKER_FAILURE_RATIO": "0.5", "BREAKER_COOLDOWN": "20s"})
			f.code.Store(tc.code)
			p := f.processor(t)
			for range 3 {
				if r := p.Handle(context.Background(), body(f.published(t)), false); r.Outcome != message.OutcomeFailed {
					t.Fatalf("Handle: %+v, want the message dead-lettered", r)
				}
			}
			r := p.Handle(context.Background(), body(f.published(t)), false)
			want := map[bool]string{true: message.OutcomeDeferred, false: message.OutcomeFailed}[tc.trips]
			if r.Outcome != want {
				t.Fatalf("fourth message after three %d answers: %+v, want %s (breaker %s)", tc.code, r, want, f.a.BreakerState())
			}
			if err := f.a.WebhookCheck().Check(context.Background()); (err != nil) != tc.trips {
				t.Fatalf("webhook check after three %d answers: %v, want failing %v", tc.code, err, tc.trips)
			}
			testenv.Drain(t, f.env["RABBITMQ_DLQ"])
		})
	}
}

// TestOpenBreakerDefersWithoutCountingAnAttempt: once failures trip the
// breaker, a message waits in the outbox for the cool-down, its attempts
// unchanged, and the webhook is not called.
func TestOpenBreakerDefersWithoutCountingAnAttempt(t *testing.T) {
	f := setup(t, 0, map[string]string{"BREAKER_MIN_REQUESTS": "2", "BREAKER_FAILURE_RATIO": "0.5", "BREAKER_COOLDOWN": "20s", "RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	f.code.Store(http.StatusInternalServerError)
	p := f.processor(t)
	webhook := f.a.WebhookCheck()
	if err := webhook.Check(context.Background()); err != nil || webhook.Critical {
		t.Fatalf("webhook check with the circuit closed: %v (critical %v), want ok and not critical", err, webhook.Critical)
	}
	for range 2 {
		env := f.published(t)
		if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
			t.Fatalf("Handle: %+v", r)
		}
	}
	calls := f.calls.Load()
	env := f.published(t)
	before := time.Now()
	// The rate limit is not asked for a call the open circuit refuses.
	var asked atomic.Int32
	p.Limiter = limiterThen{then: func() { asked.Add(1) }}
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeDeferred {
		t.Fatalf("with the breaker open: %+v", r)
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("the rate limiter was asked %d times with the breaker open, want 0", n)
	}
	if f.calls.Load() != calls {
		t.Fatal("the webhook was called with the breaker open")
	}
	// Not taken either: had the deferral failed to be written, the stale
	// sweep would have counted an attempt for it.
	if taken, err := f.a.Redis.Taken(context.Background(), env.ID, env.Seq); err != nil || taken {
		t.Fatalf("Taken with the breaker open = %v, %v; want false", taken, err)
	}
	if err := webhook.Check(context.Background()); err == nil {
		t.Fatal("webhook check with the circuit open: ok, want a failure (the status report's degraded)")
	}
	m := f.message(t, env.ID)
	if m.Attempts != 0 || m.Status != message.StatusUnsent || m.NextAttemptAt == nil || m.NextAttemptAt.Sub(before) < 19*time.Second {
		t.Fatalf("deferred message: %+v", m)
	}

	// Another process hears of the open circuit through Redis, where the
	// breaker writes it in the background.
	testenv.WaitFor(t, 30*time.Second, "the open circuit reaches Redis", func() bool {
		d, err := f.a.Redis.CircuitOpenFor(context.Background(), "webhook")
		return err == nil && d > 0
	})
	other := (&fixture{a: testenv.App(t, f.env)}).processor(t)
	env = f.published(t)
	if r := other.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeDeferred {
		t.Fatalf("another process with the shared circuit open: %+v", r)
	}
	if f.calls.Load() != calls {
		t.Fatal("the other process called the webhook with the shared circuit open")
	}
}

// TestRepeatedDeferralsShareOneLogEntry: a message deferred at each
// cool-down of a long outage keeps one entry for the run of deferrals,
// counted, so its real attempts stay in the log's last MaxDeliveries.
func TestRepeatedDeferralsShareOneLogEntry(t *testing.T) {
	f := setup(t, 0, nil)
	f.code.Store(http.StatusServiceUnavailable)
	env := f.published(t)
	p := f.processor(t)
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("first attempt: %+v, want a retry", r)
	}
	p.Breaker = openBreaker{}
	deferrals := message.MaxDeliveries + 5
	for i := range deferrals {
		if s, err := relayAt(f, time.Duration(i+1)*time.Hour).Pass(context.Background()); err != nil || s.Published != 1 {
			t.Fatalf("republish %d: %+v %v", i, s, err)
		}
		testenv.Drain(t, f.env["RABBITMQ_QUEUE"])
		m := f.message(t, env.ID)
		if r := p.Handle(context.Background(), body(message.Envelope{ID: m.ID, Seq: m.Seq}), false); r.Outcome != message.OutcomeDeferred {
			t.Fatalf("deferral %d: %+v", i, r)
		}
	}
	log := f.message(t, env.ID).Deliveries
	if len(log) != 2 || log[0].Outcome != message.OutcomeRetry || log[1].Outcome != message.OutcomeDeferred || log[1].Times != deferrals {
		t.Fatalf("delivery log %+v, want the retry, then one deferral counted %d times", log, deferrals)
	}
}

// openBreaker is a circuit breaker that stays open.
type openBreaker struct{}

func (openBreaker) Allow() (func(error), error) { return nil, errors.New("circuit breaker is open") }
func (openBreaker) State() string               { return "open" }

// relayAt is a relay of f whose clock runs ahead by d.
func relayAt(f *fixture, d time.Duration) *outbox.Relay {
	r := f.a.Relay(nil)
	r.Now = func() time.Time { return time.Now().Add(d) }
	return r
}

// usedUp returns the real rate limiter on f's Redis, of one token per 100
// seconds, with its one token taken: the next is longer away than any
// delivery waits in place, so it refuses every reservation. Its key is its
// own, so that f's other processors are not limited by it.
func usedUp(t *testing.T, f *fixture) *redisstore.Limiter {
	t.Helper()
	l := redisstore.NewLimiter(f.a.Redis, "used-up", 0.01, 1, nil, nil)
	if _, ok, err := l.Reserve(context.Background(), 0); err != nil || !ok || l.Degraded() {
		t.Fatalf("take the limiter's one token: %v, %v (pacing locally: %v)", ok, err, l.Degraded())
	}
	return l
}

// recordHeld is a processor store whose outcome writes wait for release;
// entered is told of each.
type recordHeld struct {
	processor.Store
	entered chan<- struct{}
	release <-chan struct{}
}

func (s recordHeld) RecordOutcomes(ctx context.Context, os []message.Outcome) []error {
	s.entered <- struct{}{}
	<-s.release
	return s.Store.RecordOutcomes(ctx, os)
}

// TestDeferralKeepsTheClaimUntilItIsWritten: a processor the rate limit
// refuses defers the message, and holds its claim until the deferral is
// written. Another process's copy of the same dispatch, arriving meanwhile,
// leaves the message alone. Had it claimed, delivered and recorded FAILED
// (a 4xx) first, the deferral, written against the message as read before,
// would have put the dead-lettered message back in the outbox on the
// embedded MongoDB, and the webhook would have been called again.
func TestDeferralKeepsTheClaimUntilItIsWritten(t *testing.T) {
	f := setup(t, 0, map[string]string{"RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	f.code.Store(http.StatusBadRequest)
	env := f.published(t)
	refused := f.processor(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	refused.Limiter = usedUp(t, f)
	refused.Store = recordHeld{Store: refused.Store, entered: entered, release: release}
	deferral := make(chan processor.Result, 1)
	go func() { deferral <- refused.Handle(context.Background(), body(env), false) }()
	<-entered
	other := (&fixture{a: testenv.App(t, f.env)}).processor(t)
	if r := other.Handle(context.Background(), body(env), false); r.Outcome != "duplicate" || f.calls.Load() != 0 {
		t.Fatalf("a copy arriving while the deferral is written: %+v after %d webhook calls; want a duplicate, no call", r, f.calls.Load())
	}
	close(release)
	if r := <-deferral; r.Outcome != message.OutcomeDeferred {
		t.Fatalf("the refused delivery: %+v, want it deferred", r)
	}

	// The deferred message is published again when due, delivered once,
	// and dead-lettered once.
	relay := f.a.Relay(nil)
	relay.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	if s, err := relay.Pass(context.Background()); err != nil || s.Published != 1 {
		t.Fatalf("relay pass after the deferral: %+v, %v; want the message published again", s, err)
	}
	for _, b := range testenv.Drain(t, f.env["RABBITMQ_QUEUE"]) {
		other.Handle(context.Background(), b, false)
	}
	// Whatever is due later (nothing, if the message stayed FAILED).
	if _, err := relay.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, b := range testenv.Drain(t, f.env["RABBITMQ_QUEUE"]) {
		other.Handle(context.Background(), b, false)
	}
	m := f.message(t, env.ID)
	dead := len(testenv.Drain(t, f.env["RABBITMQ_DLQ"]))
	if m.Status != message.StatusFailed || m.Attempts != 1 || f.calls.Load() != 1 || dead != 1 {
		t.Fatalf("message %s after %d attempts, %d webhook calls, %d dead-letter notifications; want FAILED after 1, 1 call, 1 notification", m.Status, m.Attempts, f.calls.Load(), dead)
	}
}

// takenAsked is an inbox that tells asked of each Taken question.
type takenAsked struct {
	processor.Inbox
	asked chan<- struct{}
}

func (i takenAsked) Taken(ctx context.Context, id string, seq int) (bool, error) {
	select {
	case i.asked <- struct{}{}:
	default:
	}
	return i.Inbox.Taken(ctx, id, seq)
}

// takenFails is an inbox whose Taken fails.
type takenFails struct{ processor.Inbox }

func (takenFails) Taken(context.Context, string, int) (bool, error) {
	return false, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
}

// TestRedeliveredCopyWhoseTakenMarkCannotBeReadIsDelivered: a redelivered
// copy whose claim is free is delivered when the inbox cannot say whether a
// consumer died in the dispatch's webhook call, and the log says so.
func TestRedeliveredCopyWhoseTakenMarkCannotBeReadIsDelivered(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	p := f.processor(t)
	p.Inbox = takenFails{p.Inbox}
	out := &logbuf.Buffer{}
	p.Logger = slog.New(slog.NewTextHandler(out, nil))
	if r := p.Handle(context.Background(), body(env), true); r.Outcome != message.OutcomeDelivered || f.calls.Load() != 1 {
		t.Fatalf("redelivered copy: %+v after %d calls, want delivered", r, f.calls.Load())
	}
	if !strings.Contains(out.String(), "cannot tell whether a consumer died") {
		t.Fatalf("no word of the unread taken mark:\n%s", out)
	}
}

// TestRedeliveredCopyWithRedisDownIsNotTakenForItsOwnClaim: with Redis
// down a copy's claim goes to the MongoDB stand-in, where a claim is also
// the dispatch's taken mark. A redelivered copy of a dispatch nobody took
// (handed back before its call, a channel reset) is delivered: it does not
// take its own claim for a consumer that died in the call, which charged an
// attempt for a call never made (and, with none left, dead-lettered the
// message undelivered).
func TestRedeliveredCopyWithRedisDownIsNotTakenForItsOwnClaim(t *testing.T) {
	f := setup(t, 0, map[string]string{"REDIS_URI": "127.0.0.1:1", "MAX_RETRIES": "0"})
	env := f.published(t)
	if r := f.processor(t).Handle(context.Background(), body(env), true); r.Outcome != message.OutcomeDelivered || f.calls.Load() != 1 {
		t.Fatalf("redelivered copy with Redis down: %+v after %d calls, want delivered", r, f.calls.Load())
	}
	if m := f.message(t, env.ID); m.Status != message.StatusSent || m.Attempts != 1 {
		t.Fatalf("message %s after %d attempts, want SENT after 1", m.Status, m.Attempts)
	}
}

// TestOldCopysClaimDoesNotDropTheCurrentDispatch: a copy of an older
// dispatch holds the message's claim for as long as it takes to read the
// message and find it stale. The only copy of the current dispatch, coming
// in meanwhile, waits for the claim and is delivered; acknowledged as a
// duplicate, it would have left the message waiting for the stale sweep.
func TestOldCopysClaimDoesNotDropTheCurrentDispatch(t *testing.T) {
	f := setup(t, 0, map[string]string{"RETRY_BASE_DELAY": "1s", "RETRY_MAX_DELAY": "2s"})
	f.code.Store(http.StatusInternalServerError)
	old := f.published(t)
	if r := f.processor(t).Handle(context.Background(), body(old), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("first delivery: %+v, want a retry", r)
	}
	f.code.Store(http.StatusAccepted)
	relay := f.a.Relay(nil)
	relay.Now = func() time.Time { return time.Now().Add(10 * time.Second) }
	if s, err := relay.Pass(context.Background()); err != nil || s.Published != 1 {
		t.Fatalf("relay pass for the retry: %+v, %v", s, err)
	}
	current := testenv.Drain(t, f.env["RABBITMQ_QUEUE"])
	if len(current) != 1 {
		t.Fatalf("%d copies of the retry queued, want 1", len(current))
	}

	stale := f.processor(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	stale.Store = readHeld{Store: stale.Store, entered: entered, release: release}
	staleDone := make(chan processor.Result, 1)
	go func() { staleDone <- stale.Handle(context.Background(), body(old), false) }()
	<-entered // the old copy holds the claim
	other := (&fixture{a: testenv.App(t, f.env)}).processor(t)
	asked := make(chan struct{}, 1)
	other.Inbox = takenAsked{Inbox: other.Inbox, asked: asked}
	done := make(chan processor.Result, 1)
	go func() { done <- other.Handle(context.Background(), current[0], false) }()
	select {
	case <-asked:
	case r := <-done:
		t.Fatalf("the current dispatch's copy ended while an old copy held the claim: %+v", r)
	}
	close(release)
	if r := <-staleDone; r.Outcome != "stale_copy" {
		t.Fatalf("the old copy: %+v, want stale_copy", r)
	}
	if r := <-done; r.Outcome != message.OutcomeDelivered {
		t.Fatalf("the current dispatch's copy: %+v, want it delivered", r)
	}
	if m := f.message(t, old.ID); m.Status != message.StatusSent || m.Attempts != 2 || f.calls.Load() != 2 {
		t.Fatalf("message %s after %d attempts and %d webhook calls, want SENT after 2 and 2", m.Status, m.Attempts, f.calls.Load())
	}
}

// TestUnfinishedCreateIsNotDeadLettered: a queued copy whose outbox entry
// exists but whose message does not (its create died between the two
// writes) is left to the stale sweep, not reported as a bad message.
func TestUnfinishedCreateIsNotDeadLettered(t *testing.T) {
	f := setup(t, 0, nil)
	id := "0195f0a2-7b1c-7cde-8f00-0000000000aa"
	now := time.Now()
	if err := f.a.Store.EnsureOutbox(context.Background(), message.NewOutboxEntry(id, 0, now, now)); err != nil {
		t.Fatal(err)
	}
	r := f.processor(t).Handle(context.Background(), body(message.Envelope{ID: id}), false)
	if r.Action != processor.Ack || r.Outcome != "unfinished_create" {
		t.Fatalf("Handle: %+v", r)
	}
	if n := len(testenv.Drain(t, f.env["RABBITMQ_DLQ"])); n != 0 || f.calls.Load() != 0 {
		t.Fatalf("%d dead-letter notifications and %d webhook calls, want none", n, f.calls.Load())
	}
}

// claimFails is an inbox whose claims fail (Redis and its stand-in both
// down) while its other operations work (Redis back a moment later).
type claimFails struct{ processor.Inbox }

func (claimFails) Claim(context.Context, string, string, int, time.Duration) (bool, outbox.InboxState, string, error) {
	return false, outbox.InboxNone, "", errors.New("claim inbox in mongodb: connection refused")
}

// TestNoCallWithoutAClaim: a copy whose claim failed is handed back, with
// no webhook call: without a claim another copy's delivery could call
// beside it.
func TestNoCallWithoutAClaim(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	p := f.processor(t)
	p.Inbox = claimFails{p.Inbox}
	if r := p.Handle(context.Background(), body(env), false); r.Action != processor.Requeue {
		t.Fatalf("Handle: %+v, want a requeue", r)
	}
	f.expectNoCallThenDelivered(t, env)
}

// outboxLookupFails is a store whose outbox entries cannot be looked up.
type outboxLookupFails struct{ processor.Store }

func (outboxLookupFails) HasOutboxEntry(context.Context, string) (bool, error) {
	return false, errors.New("connection reset")
}

// TestMissingMessageWhoseEntryCannotBeReadIsRequeued: a copy of a message
// not (yet) stored, whose outbox entry could not be looked up, is handed
// back, not dead-lettered as an unknown id: its create may be under way.
func TestMissingMessageWhoseEntryCannotBeReadIsRequeued(t *testing.T) {
	f := setup(t, 0, nil)
	p := f.processor(t)
	p.Store = outboxLookupFails{p.Store}
	r := p.Handle(context.Background(), body(message.Envelope{ID: "0195f0a2-7b1c-7cde-8f00-0000000000ab"}), false)
	if r.Action != processor.Requeue {
		t.Fatalf("Handle: %+v, want a requeue", r)
	}
	if n := len(testenv.Drain(t, f.env["RABBITMQ_DLQ"])); n != 0 {
		t.Fatalf("%d dead-letter notifications, want none", n)
	}
}

// TestRedeliveredCopyWhileTheHolderDelivers: while one consumer holds the
// claim and waits for the webhook, a redelivered copy reaches another,
// which defers it. The holder's SENT still wins, and the deferred dispatch,
// published later, delivers nothing.
func TestRedeliveredCopyWhileTheHolderDelivers(t *testing.T) {
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	// The held call must outlive the other copy's handling: no timeout.
	f := setupHeld(t, 0, hold, map[string]string{"WEBHOOK_TIMEOUT": "30s"})
	t.Cleanup(release) // before the webhook's server closes
	env := f.published(t)
	holder := f.processor(t)
	other := (&fixture{a: testenv.App(t, f.env)}).processor(t)
	done := make(chan processor.Result)
	go func() { done <- holder.Handle(context.Background(), body(env), false) }()
	testenv.WaitFor(t, 30*time.Second, "the holder calls the webhook", func() bool { return f.calls.Load() == 1 })
	r := other.Handle(context.Background(), body(env), true)
	release()
	if r.Outcome != message.OutcomeDeferred {
		t.Fatalf("redelivered copy: %+v", r)
	}
	if r := <-done; r.Outcome != message.OutcomeDelivered {
		t.Fatalf("holder: %+v", r)
	}
	if m := f.message(t, env.ID); m.Status != message.StatusSent {
		t.Fatalf("after both: %s (seq %d), want SENT", m.Status, m.Seq)
	}
	// The deferred dispatch falls due and is published; its copy finds the
	// message SENT.
	relay := f.a.Relay(nil)
	relay.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	if _, err := relay.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, b := range testenv.Drain(t, f.env["RABBITMQ_QUEUE"]) {
		if res := holder.Handle(context.Background(), b, false); res.Action != processor.Ack {
			t.Fatalf("later copy: %+v", res)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("webhook called %d times, want 1", n)
	}
	if m := f.message(t, env.ID); m.Status != message.StatusSent {
		t.Fatalf("at the end: %s, want SENT", m.Status)
	}
}

// deadHolder takes the claim on env's dispatch as a consumer that died
// holding it; taken says whether it got as far as its webhook call.
func (f *fixture) deadHolder(t *testing.T, env message.Envelope, taken bool) {
	t.Helper()
	ctx := context.Background()
	if ok, _, _, err := f.a.Redis.Claim(ctx, env.ID, "dead-holder", env.Seq, time.Minute); err != nil || !ok {
		t.Fatalf("claim as the dead holder: %v %v", ok, err)
	}
	if taken {
		if err := f.a.Redis.MarkTaken(ctx, env.ID, env.Seq, time.Hour); err != nil {
			t.Fatalf("mark taken as the dead holder: %v", err)
		}
	}
}

// TestCopyOfADeadHoldersDispatchCountsItsAttempt: a consumer took the claim
// and died; the redelivered copy defers the message until the claim
// expires. The lost dispatch counts as an attempt if its consumer got as
// far as the webhook call (so that the next retry's backoff is not shorter
// than the calls made), and not if it died before (waiting for the rate
// limiter, say), as in the stale sweep.
func TestCopyOfADeadHoldersDispatchCountsItsAttempt(t *testing.T) {
	for _, tc := range []struct {
		taken    bool
		attempts int
	}{{taken: true, attempts: 1}, {taken: false, attempts: 0}} {
		t.Run(fmt.Sprintf("taken=%v", tc.taken), func(t *testing.T) {
			f := setup(t, 0, nil)
			env := f.published(t)
			f.deadHolder(t, env, tc.taken)
			if r := f.processor(t).Handle(context.Background(), body(env), true); r.Outcome != message.OutcomeDeferred {
				t.Fatalf("redelivered copy: %+v", r)
			}
			m := f.message(t, env.ID)
			if m.Status != message.StatusUnsent || m.Attempts != tc.attempts || m.Seq != 1 || f.calls.Load() != 0 {
				t.Fatalf("after the deferral: %s attempts %d seq %d, %d calls; want UNSENT, %d attempts, seq 1, no call",
					m.Status, m.Attempts, m.Seq, f.calls.Load(), tc.attempts)
			}
		})
	}
}

// TestCopyOfADeadHoldersLastAttemptIsLeftToTheSweep: with no attempt left
// after the lost dispatch, the redelivered copy schedules no retry (that
// would call the webhook once more than MAX_RETRIES allows) and writes no
// FAILED (the holder may be alive and about to record SENT): it leaves the
// message to the stale sweep. A lost dispatch that never reached its call
// used no attempt, so its message is deferred for the next one.
func TestCopyOfADeadHoldersLastAttemptIsLeftToTheSweep(t *testing.T) {
	f := setup(t, 0, map[string]string{"MAX_RETRIES": "0"})
	env := f.published(t)
	f.deadHolder(t, env, true)
	if r := f.processor(t).Handle(context.Background(), body(env), true); r.Action != processor.Ack || r.Outcome != "left_to_sweep" {
		t.Fatalf("redelivered copy: %+v", r)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusProcessing || m.Attempts != 0 || m.Seq != 0 || f.calls.Load() != 0 {
		t.Fatalf("after the copy: %s attempts %d seq %d, %d calls", m.Status, m.Attempts, m.Seq, f.calls.Load())
	}
	if has, err := f.a.Store.HasOutboxEntry(context.Background(), message.OutboxKey(env.ID, env.Seq)); err != nil || !has {
		t.Fatalf("the dispatch's outbox entry, for the sweep: %v %v", has, err)
	}

	untaken := f.published(t)
	f.deadHolder(t, untaken, false)
	if r := f.processor(t).Handle(context.Background(), body(untaken), true); r.Outcome != message.OutcomeDeferred {
		t.Fatalf("redelivered copy of a dispatch never taken: %+v, want a deferral", r)
	}
	if m := f.message(t, untaken.ID); m.Status != message.StatusUnsent || m.Attempts != 0 || m.Seq != 1 {
		t.Fatalf("after the copy of a dispatch never taken: %s attempts %d seq %d; want UNSENT, no attempt, seq 1", m.Status, m.Attempts, m.Seq)
	}
}

// TestCopyOfAStandInHoldersDispatchCountsItsAttempt: a consumer claimed the
// dispatch in the MongoDB stand-in while Redis was down, Redis came back
// empty, and the consumer died in its webhook call (its taken marker in
// the new Redis, or none if Redis was still down at the mark). The
// redelivered copy finds Redis's claim free; the dispatch is still taken
// (guards.Taken reads the stand-in too), so the copy defers the message,
// counting the lost call, and makes no call of its own: else that call
// would go uncounted and the next retry's backoff be one step short.
func TestCopyOfAStandInHoldersDispatchCountsItsAttempt(t *testing.T) {
	for _, marked := range []bool{true, false} {
		t.Run(fmt.Sprintf("marked=%v", marked), func(t *testing.T) {
			f := setup(t, 0, nil)
			env := f.published(t)
			ctx := context.Background()
			if ok, _, _, err := f.a.Store.ClaimInbox(ctx, env.ID, "dead-holder", env.Seq, time.Minute); err != nil || !ok {
				t.Fatalf("claim in the stand-in as the dead holder: %v %v", ok, err)
			}
			if marked {
				if err := f.a.Redis.MarkTaken(ctx, env.ID, env.Seq, time.Hour); err != nil {
					t.Fatalf("mark taken as the dead holder: %v", err)
				}
			}
			if r := f.processor(t).Handle(ctx, body(env), true); r.Outcome != message.OutcomeDeferred {
				t.Fatalf("redelivered copy: %+v, %d calls; want a deferral and no call", r, f.calls.Load())
			}
			m := f.message(t, env.ID)
			if m.Status != message.StatusUnsent || m.Attempts != 1 || m.Seq != 1 || f.calls.Load() != 0 {
				t.Fatalf("after the copy: %s attempts %d seq %d, %d calls; want UNSENT, 1 attempt, seq 1, no call",
					m.Status, m.Attempts, m.Seq, f.calls.Load())
			}
			if st, _, err := f.a.Redis.Peek(ctx, env.ID); err != nil || st != outbox.InboxNone {
				t.Fatalf("the copy's claim in Redis: %v %v; want it released", st, err)
			}
		})
	}
}

// TestBatchStartsNoRecordTooCloseToTheDeadline: with one record at a time,
// the second record waits for the first one's delivery (1 s) and then has
// less than the reserve left, so it is not started: the batch reports it
// not recorded, for Lambda to redeliver, rather than calling the webhook
// with too little time to record the answer.
func TestBatchStartsNoRecordTooCloseToTheDeadline(t *testing.T) {
	f := setup(t, time.Second, nil)
	p := f.processor(t)
	p.CallReserve = 0 // the check before the call: TestNoCallTooCloseToTheDeadline
	ev := rabbitMQEvent(f.published(t), f.published(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	sum, err := p.HandleRabbitMQEvent(ctx, ev, 1, 2*time.Second)
	if !errors.Is(err, processor.ErrBatchIncomplete) || sum.NotStarted != 1 || sum.NotRecorded != 0 || sum.Outcomes[message.OutcomeDelivered] != 1 {
		t.Fatalf("summary %+v, error %v; want one delivered and one not started", sum, err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("webhook called %d times, want 1", n)
	}
}

// rabbitMQEvent is an Amazon MQ event holding envs' bodies.
func rabbitMQEvent(envs ...message.Envelope) events.RabbitMQEvent {
	ev := events.RabbitMQEvent{EventSource: "aws:rmq", MessagesByQueue: map[string][]events.RabbitMQMessage{}}
	for _, env := range envs {
		ev.MessagesByQueue["q::/"] = append(ev.MessagesByQueue["q::/"], events.RabbitMQMessage{Data: base64.StdEncoding.EncodeToString(body(env))})
	}
	return ev
}

// TestBatchDeliversTwoCopiesOfADispatchOnce: a batch handed back and
// redelivered holds both copies of a dispatch published twice (by the fast
// path and the relay), both marked redelivered. One delivery serves both;
// the second copy does not take the first's claim for a dead consumer's and
// charge an attempt.
func TestBatchDeliversTwoCopiesOfADispatchOnce(t *testing.T) {
	f := setup(t, 300*time.Millisecond, nil)
	env := f.published(t)
	again := env
	again.PublishedAt = env.PublishedAt.Add(time.Second)
	ev := rabbitMQEvent(env, again)
	for i := range ev.MessagesByQueue["q::/"] {
		ev.MessagesByQueue["q::/"][i].Redelivered = true
	}
	sum, err := f.processor(t).HandleRabbitMQEvent(context.Background(), ev, 4, time.Second)
	if err != nil || sum.Outcomes[message.OutcomeDelivered] != 1 || sum.Outcomes["duplicate"] != 1 {
		t.Fatalf("summary %+v, error %v; want one delivered, one duplicate", sum, err)
	}
	m := f.message(t, env.ID)
	if m.Status != message.StatusSent || m.Attempts != 1 || len(m.Deliveries) != 1 || f.calls.Load() != 1 {
		t.Fatalf("after the batch: %s, %d attempts, deliveries %+v, %d calls; want SENT after one call", m.Status, m.Attempts, m.Deliveries, f.calls.Load())
	}
}

// TestTwoRedeliveredCopiesInOneProcessAreDeliveredOnce: the same, for a
// consumer that gets both copies back after a reconnect.
func TestTwoRedeliveredCopiesInOneProcessAreDeliveredOnce(t *testing.T) {
	f := setup(t, 300*time.Millisecond, nil)
	env := f.published(t)
	p := f.processor(t)
	results := make(chan processor.Result, 2)
	for range 2 {
		go func() { results <- p.Handle(context.Background(), body(env), true) }()
	}
	got := map[string]int{}
	for range 2 {
		r := <-results
		if r.Action != processor.Ack {
			t.Fatalf("copy: %+v", r)
		}
		got[r.Outcome]++
	}
	m := f.message(t, env.ID)
	if got[message.OutcomeDelivered] != 1 || got["duplicate"] != 1 || m.Attempts != 1 || len(m.Deliveries) != 1 || f.calls.Load() != 1 {
		t.Fatalf("outcomes %v; message %s, %d attempts, deliveries %+v, %d calls; want one delivery", got, m.Status, m.Attempts, m.Deliveries, f.calls.Load())
	}
}

// readHeld is a processor store whose message reads wait for release,
// then read, or with fail set fail, as in a MongoDB outage; entered is
// told of each read.
type readHeld struct {
	processor.Store
	entered chan<- struct{}
	release <-chan struct{}
	fail    bool
}

func (s readHeld) GetMessage(ctx context.Context, id string) (message.Message, error) {
	s.entered <- struct{}{}
	<-s.release
	if s.fail {
		return message.Message{}, errors.New("server selection error: context deadline exceeded")
	}
	return s.Store.GetMessage(ctx, id)
}

// claimsCounted is an inbox that counts the claims asked of it.
type claimsCounted struct {
	processor.Inbox
	n *atomic.Int32
}

func (i claimsCounted) Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	i.n.Add(1)
	return i.Inbox.Claim(ctx, id, token, seq, ttl)
}

// doneAsked is a context that closes asked when its Done is first asked
// for. A copy that waits for the one in flight here asks for it before
// anything else, in the select where it waits.
type doneAsked struct {
	context.Context
	once  sync.Once
	asked chan struct{}
}

func (c *doneAsked) Done() <-chan struct{} {
	c.once.Do(func() { close(c.asked) })
	return c.Context.Done()
}

// TestASecondCopyEndsAsTheFirst: a copy of a dispatch already in flight in
// this process waits for the first and ends as it did. When the first is
// handed back (MongoDB failed), so is the second: acknowledged as a
// duplicate, it would be gone if the first one's hand-back failed too, on
// a channel that closed under it.
func TestASecondCopyEndsAsTheFirst(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	p := f.processor(t)
	entered, release := make(chan struct{}, 2), make(chan struct{})
	p.Store = readHeld{Store: p.Store, entered: entered, release: release, fail: true}
	var claims atomic.Int32
	p.Inbox = claimsCounted{Inbox: p.Inbox, n: &claims}
	results := make(chan processor.Result, 2)
	go func() { results <- p.Handle(context.Background(), body(env), true) }()
	<-entered
	// The first copy holds its claim and waits in its read. The second
	// must come to wait for it, not claim the message itself.
	second := &doneAsked{Context: context.Background(), asked: make(chan struct{})}
	go func() { results <- p.Handle(second, body(env), true) }()
	select {
	case <-second.asked:
	case r := <-results:
		t.Fatalf("the second copy ended while the first was in flight: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the second copy did not come to wait for the first")
	}
	close(release)
	for range 2 {
		if r := <-results; r.Action != processor.Requeue {
			t.Fatalf("a copy of a dispatch handed back: %+v, want it handed back too", r)
		}
	}
	if n := claims.Load(); n != 1 {
		t.Fatalf("%d claims asked, want only the first copy's: the second did not wait for it", n)
	}
}

// TestFailedBatchWaitsBeforeItGoesBack: a batch whose records could not be
// recorded (MongoDB is failing) waits before Lambda gets it back, longer
// each time, and never past a second before the invocation's deadline; a
// batch whose stores answered starts the wait over, and so does one cut
// short only by the deadline.
func TestFailedBatchWaitsBeforeItGoesBack(t *testing.T) {
	f := setup(t, 0, nil)
	ev := rabbitMQEvent(f.published(t))
	p := f.processor(t)
	failing := f.processor(t)
	failing.Store = readFails{failing.Store}
	b := &processor.Batches{Processor: failing, Concurrency: 4, Reserve: time.Second, Pause: processor.Backoff{Max: time.Minute}}
	handle := func(timeout time.Duration) (processor.BatchSummary, error, time.Duration, time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		sum, err := b.Handle(ctx, ev)
		dl, _ := ctx.Deadline()
		return sum, err, time.Since(start), time.Until(dl)
	}

	for i, least := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		sum, err, took, _ := handle(time.Minute)
		if !errors.Is(err, processor.ErrBatchIncomplete) || sum.NotRecorded != 1 {
			t.Fatalf("failed batch %d: %+v, %v", i+1, sum, err)
		}
		if took < least {
			t.Fatalf("failed batch %d came back after %v, want at least %v", i+1, took, least)
		}
	}
	for range 10 {
		b.Pause.Next() // to the minute
	}
	if _, err, took, left := handle(3 * time.Second); err == nil || took < 1500*time.Millisecond || left < 500*time.Millisecond {
		t.Fatalf("with a minute's pause due and 3 s to go: came back after %v, %v before the deadline (%v); want about 2 s and 1 s", took, left, err)
	}

	b.Processor = p
	if sum, err, _, _ := handle(time.Minute); err != nil || sum.Outcomes[message.OutcomeDelivered] != 1 {
		t.Fatalf("with the store back: %+v, %v", sum, err)
	}
	if d := b.Pause.Next(); d != 100*time.Millisecond {
		t.Fatalf("after a batch whose stores answered, the next pause is %v, want 100ms", d)
	}

	b.Processor = failing
	handle(time.Minute)
	b.Reserve = time.Hour
	if sum, err, _, _ := handle(time.Minute); !errors.Is(err, processor.ErrBatchIncomplete) || sum.NotStarted != 1 {
		t.Fatalf("with no time to start a record: %+v, %v", sum, err)
	}
	if d := b.Pause.Next(); d != 100*time.Millisecond {
		t.Fatalf("after a batch cut short by the deadline only, the next pause is %v, want 100ms", d)
	}
}

// TestBackoffGrowsAndStartsOver: the pause doubles from 100 ms to its
// maximum, and Reset starts it over.
func TestBackoffGrowsAndStartsOver(t *testing.T) {
	b := processor.Backoff{Max: time.Second}
	var got []time.Duration
	for range 6 {
		got = append(got, b.Next())
	}
	b.Reset()
	got = append(got, b.Next())
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 100}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("pauses %v, want %v ms", got, want)
		}
	}
	if d := (&processor.Backoff{}).Next(); d != 100*time.Millisecond {
		t.Fatalf("first pause with no maximum set: %v", d)
	}
}

// readFails is a processor store whose message reads fail, as in a MongoDB
// outage.
type readFails struct{ processor.Store }

func (readFails) GetMessage(context.Context, string) (message.Message, error) {
	return message.Message{}, errors.New("server selection error: context deadline exceeded")
}

// TestTakenMarksOnlyDispatchesThatReachedTheWebhook: the stale sweep counts
// an attempt for a dispatch marked taken. A copy requeued before any call
// (its message could not be read) leaves no mark, so an outage of MongoDB
// longer than STALE_DURATION charges nobody an attempt; a call leaves one.
func TestTakenMarksOnlyDispatchesThatReachedTheWebhook(t *testing.T) {
	f := setup(t, 0, nil)
	ctx := context.Background()
	env := f.published(t)
	p := f.processor(t)
	p.Store = readFails{p.Store}
	if r := p.Handle(ctx, body(env), false); r.Action != processor.Requeue {
		t.Fatalf("with reads failing: %+v, want a requeue", r)
	}
	if taken, err := f.a.Redis.Taken(ctx, env.ID, env.Seq); err != nil || taken {
		t.Fatalf("Taken after a requeue before any call = %v, %v; want false", taken, err)
	}
	f.code.Store(http.StatusServiceUnavailable)
	if r := f.processor(t).Handle(ctx, body(env), true); r.Outcome != message.OutcomeRetry || f.calls.Load() != 1 {
		t.Fatalf("with the webhook failing: %+v, %d calls", r, f.calls.Load())
	}
	if taken, err := f.a.Redis.Taken(ctx, env.ID, env.Seq); err != nil || !taken {
		t.Fatalf("Taken after a call = %v, %v; want true", taken, err)
	}
}

// cancelAfterSend cancels the delivery's context the moment the webhook
// has answered, as a drain timeout or a Lambda deadline can.
type cancelAfterSend struct {
	processor.Sender
	cancel context.CancelFunc
}

func (s cancelAfterSend) Send(ctx context.Context, m message.Message) (message.WebhookResponse, error) {
	resp, err := s.Sender.Send(ctx, m)
	s.cancel()
	return resp, err
}

// TestAnswerIsRecordedAfterTheDeliveryIsCancelled: a delivery cancelled
// right after the webhook answered still records the answer, so that a
// redelivered copy neither calls the webhook again nor counts the call as
// lost.
func TestAnswerIsRecordedAfterTheDeliveryIsCancelled(t *testing.T) {
	for _, tc := range []struct {
		code     int
		outcome  string
		status   message.Status
		attempts int
	}{
		{code: http.StatusAccepted, outcome: message.OutcomeDelivered, status: message.StatusSent, attempts: 1},
		{code: http.StatusServiceUnavailable, outcome: message.OutcomeRetry, status: message.StatusUnsent, attempts: 1},
		{code: http.StatusBadRequest, outcome: message.OutcomeFailed, status: message.StatusFailed, attempts: 1},
	} {
		t.Run(http.StatusText(tc.code), func(t *testing.T) {
			f := setup(t, 0, nil)
			f.code.Store(int32(tc.code))
			env := f.published(t)
			p := f.processor(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p.Sender = cancelAfterSend{Sender: p.Sender, cancel: cancel}
			if r := p.Handle(ctx, body(env), false); r.Action != processor.Ack || r.Outcome != tc.outcome {
				t.Fatalf("Handle: %+v, want an ack with %s", r, tc.outcome)
			}
			m := f.message(t, env.ID)
			if m.Status != tc.status || m.Attempts != tc.attempts {
				t.Fatalf("message: %s after %d attempts, want %s after %d", m.Status, m.Attempts, tc.status, tc.attempts)
			}
			// The broker's copy, had the ack been lost: no second call, and
			// no attempt counted for the first one.
			if r := f.processor(t).Handle(context.Background(), body(env), true); r.Action != processor.Ack {
				t.Fatalf("redelivered copy: %+v", r)
			}
			if m := f.message(t, env.ID); m.Attempts != tc.attempts {
				t.Fatalf("after the redelivered copy: %d attempts, want %d", m.Attempts, tc.attempts)
			}
			if n := f.calls.Load(); n != 1 {
				t.Fatalf("webhook called %d times, want 1", n)
			}
		})
	}
}

// limiterThen answers every reservation with wait, after calling then.
type limiterThen struct {
	wait time.Duration
	then func()
}

func (l limiterThen) Reserve(context.Context, time.Duration) (time.Duration, bool, error) {
	l.then()
	return l.wait, true, nil
}

// expectNoCallThenDelivered checks that a delivery of env that stopped
// before its call made none, marked nothing taken and gave its claim back:
// the copy handed out again is delivered, and counted as the first attempt.
func (f *fixture) expectNoCallThenDelivered(t *testing.T, env message.Envelope) {
	t.Helper()
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("webhook called %d times by a delivery that stopped before its call", n)
	}
	if taken, err := f.a.Redis.Taken(context.Background(), env.ID, env.Seq); err != nil || taken {
		t.Fatalf("Taken = %v, %v; want false", taken, err)
	}
	if r := f.processor(t).Handle(context.Background(), body(env), true); r.Outcome != message.OutcomeDelivered {
		t.Fatalf("the copy handed out again: %+v, want it delivered", r)
	}
	if m := f.message(t, env.ID); m.Attempts != 1 || m.Status != message.StatusSent {
		t.Fatalf("message: %s after %d attempts, want SENT after 1", m.Status, m.Attempts)
	}
}

// TestCancelledBeforeTheCallReleasesTheClaim: a delivery cancelled before
// its webhook call (in the rate limit's wait, or just before the call)
// makes no call and gives its claim back, so the copy the broker hands out
// again is delivered, not taken for a dispatch lost in a call and charged
// an attempt.
func TestCancelledBeforeTheCallReleasesTheClaim(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait time.Duration
	}{
		{name: "in the rate limit's wait", wait: time.Minute},
		{name: "just before the call", wait: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, 0, nil)
			env := f.published(t)
			p := f.processor(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p.Limiter = limiterThen{wait: tc.wait, then: cancel}
			if r := p.Handle(ctx, body(env), false); r.Action != processor.Requeue {
				t.Fatalf("cancelled: %+v, want a requeue", r)
			}
			f.expectNoCallThenDelivered(t, env)
		})
	}
}

// TestNoCallThatCouldOutliveItsClaim: a delivery held up before its call
// (here by the rate limit's wait) until less than CallReserve of its claim
// is left makes no call: the claim could expire during it, and another
// consumer take the message for a dead one's and call again. It gives the
// claim back and counts no attempt, so the copy handed out again is
// delivered.
func TestNoCallThatCouldOutliveItsClaim(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait time.Duration
		call bool
	}{
		{name: "enough left", wait: 200 * time.Millisecond, call: true},
		{name: "too little left", wait: 1200 * time.Millisecond, call: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, 0, nil)
			env := f.published(t)
			p := f.processor(t)
			// The App's reserve covers the call, and leaves time before it
			// for the rate limit's longest wait and a read.
			if wt := f.a.Config.WebhookTimeout; p.CallReserve <= wt || p.ClaimTTL-p.CallReserve < p.MaxInlineWait+time.Second {
				t.Fatalf("CallReserve %s with WEBHOOK_TIMEOUT %s, a claim of %s and inline waits up to %s", p.CallReserve, wt, p.ClaimTTL, p.MaxInlineWait)
			}
			p.ClaimTTL, p.CallReserve = 2*time.Second, time.Second
			p.Limiter = limiterThen{wait: tc.wait, then: func() {}}
			r := p.Handle(context.Background(), body(env), false)
			if tc.call {
				if r.Outcome != message.OutcomeDelivered || f.calls.Load() != 1 {
					t.Fatalf("with %s of the claim left: %+v after %d calls, want delivered", p.ClaimTTL-tc.wait, r, f.calls.Load())
				}
				return
			}
			if r.Action != processor.Requeue || !strings.Contains(r.Err.Error(), "claim") {
				t.Fatalf("with %s of the claim left: %+v, want a requeue for the claim", p.ClaimTTL-tc.wait, r)
			}
			f.expectNoCallThenDelivered(t, env)
		})
	}
}

// TestNoCallTooCloseToTheDeadline: a record started with its reserve but
// held up before the call (a slow inbox or store) until the invocation's
// deadline could fall during the call or its record makes no call: Lambda
// would end the process between a 2xx and its record. The copy goes back
// as one not started, which does not hold the batch back as a store's
// failure does, and is delivered once, uncharged, when handed out again.
func TestNoCallTooCloseToTheDeadline(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	p := f.processor(t)
	need := f.a.Config.WebhookTimeout + processor.RecordTimeout
	ctx, cancel := context.WithTimeout(context.Background(), need)
	defer cancel()
	// Two copies of the dispatch in the batch (the fast path's and the
	// relay's): the one that waits for the other goes back as not
	// started too, not as a store's failure.
	sum, err := p.HandleRabbitMQEvent(ctx, rabbitMQEvent(env, env), 2, 0)
	if !errors.Is(err, processor.ErrBatchIncomplete) || sum.NotStarted != 2 || sum.NotRecorded != 0 {
		t.Fatalf("summary %+v, error %v; want both copies not started", sum, err)
	}
	f.expectNoCallThenDelivered(t, env)
}

// heldThenFailing is an inbox that answers the first claim as held by
// another consumer, then takes the next one in Redis but answers with an
// error, as a command retried after its first try took the claim would.
type heldThenFailing struct {
	processor.Inbox
	calls *atomic.Int32
}

func (i heldThenFailing) Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	if i.calls.Add(1) == 1 {
		return false, outbox.InboxInProgress, "", nil
	}
	_, _, _, _ = i.Inbox.Claim(ctx, id, token, seq, ttl)
	return false, outbox.InboxNone, "", errors.New("i/o timeout")
}

// TestClaimWaitLeavesNoClaimBehind: a copy waiting for another consumer's
// claim whose claim attempt fails gives back what that attempt may have
// taken, so the next copy is not held off until the claim expires.
func TestClaimWaitLeavesNoClaimBehind(t *testing.T) {
	f := setup(t, 0, nil)
	env := f.published(t)
	p := f.processor(t)
	p.Inbox = heldThenFailing{Inbox: p.Inbox, calls: &atomic.Int32{}}
	if r := p.Handle(context.Background(), body(env), false); r.Action != processor.Ack {
		t.Fatalf("copy whose claim attempt failed: %+v", r)
	}
	if ok, state, _, err := f.a.Redis.Claim(context.Background(), env.ID, "next", env.Seq, time.Minute); err != nil || !ok {
		t.Fatalf("the next copy's claim: %v (%v), %v; want it taken", ok, state, err)
	}
}
