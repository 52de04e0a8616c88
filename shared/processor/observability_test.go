package processor_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

// timings records what a processor's Timing receives.
type timings struct {
	mu  sync.Mutex
	got map[string][]time.Duration
}

func (t *timings) record(kind string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.got == nil {
		t.got = map[string][]time.Duration{}
	}
	t.got[kind] = append(t.got[kind], d)
}

func (t *timings) of(kind string) []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Duration(nil), t.got[kind]...)
}

// logLines decodes the JSON log lines in out.
func logLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// TestDeferralsLogAtDebug: while the circuit is open or the rate limit
// refuses, every message of a backlog is deferred again each cool-down.
// The deferrals are logged at Debug, not a line at Info for each, and are
// still counted; no webhook call is made, so none is timed.
func TestDeferralsLogAtDebug(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(t *testing.T, f *fixture, p *processor.Processor)
	}{
		// The app's own breaker, which hears of the circuit through
		// Redis, as it does when another process tripped it.
		{name: "circuit open", set: func(t *testing.T, f *fixture, p *processor.Processor) {
			if err := f.a.Redis.OpenCircuit(context.Background(), "webhook", time.Minute); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "rate limited", set: func(t *testing.T, f *fixture, p *processor.Processor) { p.Limiter = usedUp(t, f) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, 0, nil)
			const n = 10
			envs := make([]message.Envelope, n)
			for i := range envs {
				envs[i] = f.published(t)
			}
			p := f.processor(t)
			tc.set(t, f, p)
			out := &logbuf.Buffer{}
			p.Logger = slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
			var ev testenv.Tally
			p.Observe = ev.Record
			var tm timings
			p.Timing = tm.record
			for _, env := range envs {
				if r := p.Handle(context.Background(), body(env), false); r.Action != processor.Ack || r.Outcome != message.OutcomeDeferred {
					t.Fatalf("Handle: %+v, want it deferred", r)
				}
			}
			debug := 0
			for _, l := range logLines(t, out.String()) {
				if l["level"] != slog.LevelDebug.String() {
					t.Errorf("logged at %v while deferring: %v", l["level"], l)
					continue
				}
				if l["msg"] == "message processed" && l["outcome"] == message.OutcomeDeferred {
					debug++
				}
			}
			if debug != n {
				t.Errorf("%d deferrals logged at Debug, want %d", debug, n)
			}
			events := ev.Counts()
			if events["deferred"] != n {
				t.Errorf("events %v, want %d deferred", events, n)
			}
			if want := map[bool]int{true: n}[tc.name == "rate limited"]; events["webhook_rate_limit_deferred"] != want {
				t.Errorf("events %v, want %d webhook_rate_limit_deferred", events, want)
			}
			if f.calls.Load() != 0 || len(tm.of("webhook")) != 0 {
				t.Errorf("%d webhook calls and %d timed, want none", f.calls.Load(), len(tm.of("webhook")))
			}
		})
	}
}

// TestDeadLettersLogAWarningWithTheirReason: a dead-lettered message is a
// warning in the log, with its reason and the webhook's last answer; a
// retry says what failed and when the next attempt is.
func TestDeadLettersLogAWarningWithTheirReason(t *testing.T) {
	// The retry falls due long after the test: the second publish below
	// must carry the second message alone.
	f := setup(t, 0, map[string]string{"MAX_RETRIES": "2", "RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	f.code.Store(503)
	env := f.published(t)
	p := f.processor(t)
	out := &logbuf.Buffer{}
	p.Logger = slog.New(slog.NewJSONHandler(out, nil))
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("first attempt: %+v, want a retry", r)
	}
	f.code.Store(400)
	env = f.published(t)
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeFailed {
		t.Fatalf("a 400: %+v, want it dead-lettered", r)
	}
	var retry, failed map[string]any
	for _, l := range logLines(t, out.String()) {
		if l["msg"] == "message processed" {
			switch l["outcome"] {
			case message.OutcomeRetry:
				retry = l
			case message.OutcomeFailed:
				failed = l
			}
		}
	}
	if retry == nil || retry["level"] != "INFO" || retry["last_error"] != "HTTP 503 Service Unavailable" || retry["next_attempt_at"] == nil {
		t.Errorf("retry logged as %v, want INFO with last_error and next_attempt_at", retry)
	}
	if failed == nil || failed["level"] != "WARN" || failed["reason"] != "permanent failure: HTTP 400 Bad Request" || failed["last_error"] != "HTTP 400 Bad Request" {
		t.Errorf("dead letter logged as %v, want WARN with its reason and last_error", failed)
	}
	// The delivery log keeps what the receiver answered.
	log := f.message(t, env.ID).Deliveries
	if d := log[len(log)-1]; d.StatusCode != 400 || d.Response != `{"message":"Accepted","messageId":"wh-1"}` {
		t.Errorf("the 400's log entry %+v, want its status and the body the webhook answered", d)
	}
}

// TestDeliveryLatencyRunsFromTheLatestStart: the delivery latency runs
// from acceptance, or from the later sendAt the client asked for or the
// replay from the dead-letter queue; the wait for either is not latency.
func TestDeliveryLatencyRunsFromTheLatestStart(t *testing.T) {
	now := time.Now().UTC()
	created := now.Add(-time.Hour)
	for _, tc := range []struct {
		name  string
		shape func(m *message.Message)
		from  time.Time
	}{
		{name: "accepted", shape: func(*message.Message) {}, from: created},
		{name: "sendAt", shape: func(m *message.Message) {
			at := now.Add(-10 * time.Second)
			m.SendAt, m.NextAttemptAt = &at, &at
		}, from: now.Add(-10 * time.Second)},
		{name: "replayed", shape: func(m *message.Message) {
			at := now.Add(-20 * time.Minute)
			m.SendAt = &at
			m.Deliveries = []message.Delivery{
				{At: now.Add(-15 * time.Minute), Attempt: 1, Outcome: message.OutcomeFailed, StatusCode: 400},
				{At: now.Add(-10 * time.Second), Attempt: 1, Outcome: message.OutcomeReplayed},
			}
		}, from: now.Add(-10 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, 0, nil)
			ctx := context.Background()
			m := message.New(uuid.NewString(), message.CreateRequest{To: "+905551111111", Content: "hello"}, created)
			tc.shape(&m)
			if err := f.a.Store.CreateMessage(ctx, m, message.NewOutboxEntry(m.ID, 0, now, created)); err != nil {
				t.Fatal(err)
			}
			p := f.processor(t)
			var tm timings
			p.Timing = tm.record
			before := time.Now()
			if r := p.Handle(ctx, body(message.Envelope{ID: m.ID}), false); r.Outcome != message.OutcomeDelivered {
				t.Fatalf("Handle: %+v", r)
			}
			got := tm.of("delivery")
			// Between the wait before the call and the time it took.
			lo, hi := before.Sub(tc.from)-time.Second, time.Since(tc.from)+time.Second
			if len(got) != 1 || got[0] < lo || got[0] > hi {
				t.Fatalf("delivery latency %v, want one between %s and %s", got, lo, hi)
			}
		})
	}
}

// notSent is a Sender that fails before its request goes out, as the
// webhook client does when it cannot encode the body.
type notSent struct{}

func (notSent) Send(context.Context, message.Message) (message.WebhookResponse, error) {
	return message.WebhookResponse{}, errors.New("encode webhook body: unsupported value")
}

// TestFailedCallsAreTimed: a webhook call that fails (here the client's
// timeout) is in the webhook latency too, not only the answered ones; a
// call that never went out is not.
func TestFailedCallsAreTimed(t *testing.T) {
	f := setup(t, time.Second, map[string]string{"WEBHOOK_TIMEOUT": "200ms", "RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "1m"})
	env := f.published(t)
	p := f.processor(t)
	var tm timings
	p.Timing = tm.record
	r := p.Handle(context.Background(), body(env), false)
	if r.Outcome != message.OutcomeRetry {
		t.Fatalf("Handle: %+v, want a retry after the timeout", r)
	}
	got := tm.of("webhook")
	if len(got) != 1 || got[0] < 200*time.Millisecond || got[0] > 900*time.Millisecond {
		t.Fatalf("webhook timings %v, want one of the 200ms timeout", got)
	}
	if d := tm.of("delivery"); len(d) != 0 {
		t.Fatalf("delivery timings %v for a call that failed, want none", d)
	}

	env = f.published(t)
	p.Sender = notSent{}
	if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeRetry {
		t.Fatalf("Handle with a request that never went out: %+v, want a retry", r)
	}
	if got := tm.of("webhook"); len(got) != 1 {
		t.Fatalf("webhook timings %v, want none for the request that never went out", got)
	}
}

// TestRateLimitWaitIsCounted: a delivery that waits in place for the
// outbound rate limit is counted as webhook_rate_limit_waited and its wait
// timed as rate_limit_wait; one that does not wait counts neither.
func TestRateLimitWaitIsCounted(t *testing.T) {
	for _, wait := range []time.Duration{0, 50 * time.Millisecond} {
		f := setup(t, 0, nil)
		env := f.published(t)
		p := f.processor(t)
		p.Limiter = limiterThen{wait: wait, then: func() {}}
		var ev testenv.Tally
		p.Observe = ev.Record
		var tm timings
		p.Timing = tm.record
		if r := p.Handle(context.Background(), body(env), false); r.Outcome != message.OutcomeDelivered {
			t.Fatalf("wait %s: %+v, want delivered", wait, r)
		}
		waited := ev.Counts()["webhook_rate_limit_waited"]
		timed := tm.of("rate_limit_wait")
		want := 0
		if wait > 0 {
			want = 1
		}
		if waited != want || len(timed) != want || (want == 1 && timed[0] != wait) {
			t.Fatalf("wait %s: counted %d waits, timed %v; want %d, of %s", wait, waited, timed, want, wait)
		}
	}
}

// TestRateLimitDeferralIsCountedOnceRecorded: a message the outbound rate
// limit puts back in the outbox is counted webhook_rate_limit_deferred once
// the deferral is recorded, as it is counted deferred; one whose record
// failed (handed back to the queue, to be counted when it lands) is not.
func TestRateLimitDeferralIsCountedOnceRecorded(t *testing.T) {
	f := setup(t, 0, nil)
	p := f.processor(t)
	p.Limiter = usedUp(t, f)
	p.Store = recordFails{p.Store}
	var ev testenv.Tally
	p.Observe = ev.Record
	if r := p.Handle(context.Background(), body(f.published(t)), false); r.Action != processor.Requeue {
		t.Fatalf("Handle with the record failing: %+v, want the copy handed back", r)
	}
	if events := ev.Counts(); events["webhook_rate_limit_deferred"] != 0 || events["deferred"] != 0 {
		t.Fatalf("events %v, want no deferral counted", events)
	}
}
