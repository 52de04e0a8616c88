package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/redistest"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

func post(t *testing.T, url string) *http.Response {
	t.Helper()
	return postWithKey(t, url, "client-1")
}

func postWithKey(t *testing.T, url, key string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/messages", strings.NewReader(`{"to":"+905551111111","content":"hi"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestInboundRateLimit: a client over its limit gets 429 with Retry-After,
// counted in Redis; with Redis unreachable the limit fails open.
func TestInboundRateLimit(t *testing.T) {
	for _, tt := range []struct {
		name    string
		redis   string
		limited bool
	}{
		{"redis up", testenv.RedisAddr, true},
		{"redis down", "127.0.0.1:1", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := testenv.App(t, testenv.Env(t, map[string]string{"API_RATE_LIMIT": "0.01", "API_RATE_BURST": "2", "REDIS_URI": tt.redis}))
			sched := a.LocalScheduler()
			srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
			defer srv.Close()
			var codes []int
			var last *http.Response
			for range 3 {
				last = post(t, srv.URL)
				codes = append(codes, last.StatusCode)
			}
			if !tt.limited {
				if codes[2] != http.StatusAccepted {
					t.Fatalf("with redis down the limit fails open, got %v", codes)
				}
				return
			}
			if codes[0] != 202 || codes[1] != 202 || codes[2] != http.StatusTooManyRequests {
				t.Fatalf("codes %v, want 202 202 429", codes)
			}
			if last.Header.Get("Retry-After") == "" || last.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("429 without Retry-After or problem+json: %v", last.Header)
			}
		})
	}
}

// TestInboundRateLimitCountsUnknownKeysByAddress: a client that sends a new
// made-up key with every request still counts against its address, and
// the holder of the configured key against that key, whatever its address.
func TestInboundRateLimitCountsUnknownKeysByAddress(t *testing.T) {
	for _, apiKey := range []string{"", "the-key"} {
		t.Run("API_KEY="+apiKey, func(t *testing.T) {
			a := testenv.App(t, testenv.Env(t, map[string]string{"API_RATE_LIMIT": "0.5", "API_RATE_BURST": "2", "API_KEY": apiKey}))
			sched := a.LocalScheduler()
			srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
			defer srv.Close()
			var codes []int
			for i := range 3 {
				resp := postWithKey(t, srv.URL, fmt.Sprintf("made-up-%d", i))
				codes = append(codes, resp.StatusCode)
			}
			if codes[2] != http.StatusTooManyRequests {
				t.Fatalf("codes %v: the third request with a fresh made-up key was not limited", codes)
			}
			if apiKey == "" {
				return
			}
			// The key's holder has a bucket of its own.
			if resp := postWithKey(t, srv.URL, apiKey); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("the key's holder got %d, want 202", resp.StatusCode)
			}
		})
	}
}

// TestSchedulerRoutesAnswer503WhenTheStoreFails: with MongoDB gone, the
// scheduler routes answer 503 with Retry-After, as every other route does,
// not 500.
func TestSchedulerRoutesAnswer503WhenTheStoreFails(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	sched := a.LocalScheduler()
	srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
	defer srv.Close()
	if err := a.Store.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, route := range []struct{ method, path string }{
		{http.MethodGet, "/scheduler"},
		{http.MethodPost, "/scheduler/stop"},
	} {
		req, _ := http.NewRequest(route.method, srv.URL+route.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s %s with the store closed: %d, Retry-After %q; want 503 with Retry-After",
				route.method, route.path, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
}

// TestFastPath: with the scheduler started, the API publishes a new message
// itself (PROCESSING, queued at once); with FAST_PATH=false it only stores
// it UNSENT for the publisher, as with the scheduler stopped.
func TestFastPath(t *testing.T) {
	for _, tc := range []struct {
		fastPath string
		status   message.Status
		queued   int
	}{{"", message.StatusProcessing, 1}, {"false", message.StatusUnsent, 0}} {
		t.Run("FAST_PATH="+tc.fastPath, func(t *testing.T) {
			env := testenv.Env(t, map[string]string{"FAST_PATH": tc.fastPath, "SCHEDULER_INITIAL_STATE": "started"})
			a := testenv.App(t, env)
			sched := a.LocalScheduler()
			srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
			defer srv.Close()
			resp, err := http.Post(srv.URL+"/messages", "application/json", strings.NewReader(`{"to":"+905551111111","content":"hi"}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var m message.Message
			if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusAccepted || m.Status != tc.status {
				t.Fatalf("POST: %d %+v %v, want 202 and %s", resp.StatusCode, m, err, tc.status)
			}
			if n := testenv.QueueDepth(t, env["RABBITMQ_QUEUE"]); n != tc.queued {
				t.Errorf("%d messages queued by the API, want %d", n, tc.queued)
			}
		})
	}
}

// storeFailedMessage stores a FAILED message, in the failed index.
func storeFailedMessage(t *testing.T, a *app.App) {
	t.Helper()
	ctx := t.Context()
	now := time.Now().UTC()
	m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: "failed"}, now)
	m.Status, m.FailureReason = message.StatusFailed, "permanent failure"
	if err := a.Store.CreateMessage(ctx, m, message.NewOutboxEntry(m.ID, 0, now, now)); err != nil {
		t.Fatal(err)
	}
	if err := a.Store.IndexFailed(ctx, m.FailedRecord()); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLetterAlertIsRateLimited: GET /status counts the failures on every
// probe; the warning that they are above DLQ_ALERT_THRESHOLD is logged once
// a minute, not once a probe, and the count still answers every time.
func TestDeadLetterAlertIsRateLimited(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, map[string]string{"DLQ_ALERT_THRESHOLD": "0"}))
	var logs logbuf.Buffer
	a.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ctx := t.Context()
	storeFailedMessage(t, a)
	for range 3 {
		if n, err := a.FailedMessages(ctx); err != nil || n != 1 {
			t.Fatalf("FailedMessages = %d, %v; want 1", n, err)
		}
	}
	if n := strings.Count(logs.String(), "dead-letter queue above its alert threshold"); n != 1 {
		t.Fatalf("%d warnings for 3 counts within a minute, want 1:\n%s", n, logs.String())
	}
}

// TestDeadLettersFromEitherSideCheckTheAlert: a message dead-lettered by
// the processor or by the stale sweep checks the count against
// DLQ_ALERT_THRESHOLD, so that a system nobody probes still warns.
func TestDeadLettersFromEitherSideCheckTheAlert(t *testing.T) {
	for _, side := range []string{"processor", "stale sweep"} {
		t.Run(side, func(t *testing.T) {
			a := testenv.App(t, testenv.Env(t, map[string]string{"DLQ_ALERT_THRESHOLD": "0", "WEBHOOK_URL": "http://127.0.0.1:1/webhook"}))
			var logs logbuf.Buffer
			a.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			var counted atomic.Int64
			a.Observe = func(event string, n int) { counted.Add(int64(n)) }
			storeFailedMessage(t, a)
			observe := a.Relay(nil).Observe
			if side == "processor" {
				p, err := a.Processor()
				if err != nil {
					t.Fatal(err)
				}
				observe = p.Observe
			}
			observe("dead_lettered", 1)
			testenv.WaitFor(t, 10*time.Second, "the alert's warning", func() bool {
				return strings.Contains(logs.String(), "dead-letter queue above its alert threshold")
			})
			if n := counted.Load(); n != 1 {
				t.Fatalf("Observe counted %d, want the 1 passed on", n)
			}
		})
	}
}

// TestStatusReportsARateLimitFailingOpen: when Redis answers PING but the
// rate limit's script fails (here on keys of the wrong type), requests go
// through and GET /status says degraded, until the script works again.
func TestStatusReportsARateLimitFailingOpen(t *testing.T) {
	env := testenv.Env(t, map[string]string{"API_RATE_LIMIT": "100", "API_RATE_BURST": "100"})
	a := testenv.App(t, env)
	sched := a.LocalScheduler()
	srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
	defer srv.Close()
	status := func() string {
		t.Helper()
		resp, err := http.Get(srv.URL + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct{ Status string }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return body.Status
	}
	if s := status(); s != "ok" {
		t.Fatalf("status before: %s, want ok", s)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr})
	defer rdb.Close()
	keys := []string{env["REDIS_KEY_PREFIX"] + "inbound:ip:127.0.0.1", env["REDIS_KEY_PREFIX"] + "inbound:status-probe"}
	for _, key := range keys {
		if err := rdb.Del(t.Context(), key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.RPush(t.Context(), key, "not a rate").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if resp := post(t, srv.URL); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("with the limit failing: %d, want 202 (it fails open)", resp.StatusCode)
	}
	if s := status(); s != "degraded" {
		t.Fatalf("status with the limit failing open: %s, want degraded", s)
	}
	if err := rdb.Del(t.Context(), keys...).Err(); err != nil {
		t.Fatal(err)
	}
	if s := status(); s != "ok" {
		t.Fatalf("status once the limit works again: %s, want ok", s)
	}
}

// processorBehindACut returns an app whose Redis is reached through a
// proxy the test can cut, and its processor.
func processorBehindACut(t *testing.T) (*redistest.Cut, *app.App, *processor.Processor) {
	t.Helper()
	cut := redistest.NewCut(t)
	a := testenv.App(t, testenv.Env(t, map[string]string{"REDIS_URI": cut.Addr(), "WEBHOOK_URL": "http://127.0.0.1:1/webhook"}))
	p, err := a.Processor()
	if err != nil {
		t.Fatal(err)
	}
	return cut, a, p
}

// TestReleaseClearsAStandInClaimOnceRedisIsBack: a claim taken in the
// MongoDB stand-in while Redis was down, and released after Redis came
// back, leaves nothing there: left, the sweep would take it for a dispatch
// that may have reached the webhook and count an attempt.
func TestReleaseClearsAStandInClaimOnceRedisIsBack(t *testing.T) {
	cut, a, p := processorBehindACut(t)
	ctx := context.Background()
	const id = "0195f0a2-7b1c-7cde-8f00-0000000000c1"
	cut.Set(true)
	if ok, _, _, err := p.Inbox.Claim(ctx, id, "token-1", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim with Redis down: %v %v", ok, err)
	}
	if taken, err := a.Store.TakenInbox(ctx, id, 0); err != nil || !taken {
		t.Fatalf("the stand-in holds no claim: %v %v", taken, err)
	}
	cut.Set(false)
	testenv.WaitFor(t, 10*time.Second, "Redis answering again", func() bool { return a.Redis.Ping(ctx) == nil })
	if err := p.Inbox.Release(ctx, id, "token-1"); err != nil {
		t.Fatalf("release with Redis back: %v", err)
	}
	if taken, err := a.Store.TakenInbox(ctx, id, 0); err != nil || taken {
		t.Fatalf("after the release, the stand-in still holds the claim: %v %v", taken, err)
	}
}

// TestNoTakenMarkForARedisClaimIsAnError: a delivery whose claim Redis
// took, and which cannot mark its dispatch taken because Redis has failed
// since, gets the error (and makes no call), even once another delivery
// has fallen back to the MongoDB stand-in. A call without the mark would
// count no attempt if its processor died in it. A claim taken in the
// stand-in needs no mark: it answers for its dispatch itself.
func TestNoTakenMarkForARedisClaimIsAnError(t *testing.T) {
	cut, _, p := processorBehindACut(t)
	ctx := context.Background()
	const inRedis, inStandIn = "0195f0a2-7b1c-7cde-8f00-0000000000d1", "0195f0a2-7b1c-7cde-8f00-0000000000d2"
	if ok, _, _, err := p.Inbox.Claim(ctx, inRedis, "token-1", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim with Redis up: %v %v", ok, err)
	}
	cut.Set(true)
	if ok, _, _, err := p.Inbox.Claim(ctx, inStandIn, "token-2", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim with Redis down: %v %v", ok, err)
	}
	if err := p.Inbox.MarkTaken(ctx, inRedis, "token-1", 0, time.Minute); err == nil {
		t.Fatal("MarkTaken of a claim taken in Redis, with Redis down: nil, want the error")
	}
	if err := p.Inbox.MarkTaken(ctx, inStandIn, "token-2", 0, time.Minute); err != nil {
		t.Fatalf("MarkTaken of a claim taken in the stand-in, with Redis down: %v, want nil", err)
	}
	// A claim taken in Redis on a message whose older claim the stand-in
	// still holds (kept after a record that failed) is no stand-in claim.
	if err := p.Inbox.MarkTaken(ctx, inStandIn, "token-3", 1, time.Minute); err == nil {
		t.Fatal("MarkTaken of another claim on a message the stand-in holds a claim on, with Redis down: nil, want the error")
	}
}

// statusReport is GET /status's answer, as far as these tests read it.
type statusReport struct {
	code   int
	Status string
	Checks map[string]struct{ Status string }
}

func getStatus(t *testing.T, url string) statusReport {
	t.Helper()
	resp, err := http.Get(url + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := statusReport{code: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestStatusReportsTheSharedWebhookCircuit: the API's report, the only one
// in AWS, says the webhook is down (and the service degraded, not down:
// messages are still accepted) while the circuit breaker the processors
// share in Redis is open, and ok once it has closed. With Redis down the
// state is unknown: the redis check fails, the webhook's does not.
func TestStatusReportsTheSharedWebhookCircuit(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	sched := a.LocalScheduler()
	srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
	defer srv.Close()
	if r := getStatus(t, srv.URL); r.code != http.StatusOK || r.Status != "ok" || r.Checks["webhook"].Status != "ok" {
		t.Fatalf("circuit closed: %+v, want 200, ok and checks.webhook ok", r)
	}
	if err := a.Redis.OpenCircuit(t.Context(), "webhook", time.Minute); err != nil {
		t.Fatal(err)
	}
	if r := getStatus(t, srv.URL); r.code != http.StatusOK || r.Status != "degraded" || r.Checks["webhook"].Status != "down" {
		t.Fatalf("circuit open: %+v, want 200, degraded and checks.webhook down", r)
	}
	if err := a.Redis.OpenCircuit(t.Context(), "webhook", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the key expires
	if r := getStatus(t, srv.URL); r.code != http.StatusOK || r.Status != "ok" || r.Checks["webhook"].Status != "ok" {
		t.Fatalf("circuit closed again: %+v, want 200, ok and checks.webhook ok", r)
	}

	down := testenv.App(t, testenv.Env(t, map[string]string{"REDIS_URI": "127.0.0.1:1"}))
	sched = down.LocalScheduler()
	srv2 := httptest.NewServer(down.APIHandler(sched, sched.Gate()))
	defer srv2.Close()
	if r := getStatus(t, srv2.URL); r.Status != "degraded" || r.Checks["redis"].Status != "down" || r.Checks["webhook"].Status != "ok" {
		t.Fatalf("redis down: %+v, want degraded, checks.redis down and checks.webhook ok", r)
	}
}

// TestLivezWhileMongoDBIsDown: with MongoDB gone, the API is not ready
// (GET /status 503) but alive (GET /livez 200, without the API key), so a
// liveness probe does not restart it for an outage a restart cannot fix.
func TestLivezWhileMongoDBIsDown(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, map[string]string{"API_KEY": "the-key", "API_RATE_LIMIT": "100", "API_RATE_BURST": "100"}))
	sched := a.LocalScheduler()
	srv := httptest.NewServer(a.APIHandler(sched, sched.Gate()))
	defer srv.Close()
	if err := a.Store.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := getStatus(t, srv.URL); r.code != http.StatusServiceUnavailable || r.Checks["mongodb"].Status != "down" {
		t.Fatalf("GET /status with MongoDB closed: %+v, want 503 with checks.mongodb down", r)
	}
	resp, err := http.Get(srv.URL + "/livez")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /livez with MongoDB closed: %d, want 200", resp.StatusCode)
	}
}

// standInFixture returns an app whose Redis is reached through a proxy the
// test can cut, its environment, its processor and a message published at
// dispatch 0, after running whileDown with Redis cut (and back since).
func standInFixture(t *testing.T, whileDown func(ctx context.Context, env map[string]string, a *app.App, p *processor.Processor, id string)) (map[string]string, *app.App, *processor.Processor, message.Envelope) {
	t.Helper()
	cut := redistest.NewCut(t)
	env := testenv.Env(t, map[string]string{"REDIS_URI": cut.Addr(), "WEBHOOK_URL": "http://127.0.0.1:1/webhook"})
	a := testenv.App(t, env)
	ctx := context.Background()
	m, _, err := a.Service(func(context.Context) (bool, error) { return false, nil }).
		Create(ctx, message.CreateRequest{To: "+905551111111", Content: "hello"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := a.Relay(nil).Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("publish: %+v %v", s, err)
	}
	testenv.Drain(t, env["RABBITMQ_QUEUE"])
	p, err := a.Processor()
	if err != nil {
		t.Fatal(err)
	}
	cut.Set(true)
	whileDown(ctx, env, a, p, m.ID)
	cut.Set(false)
	testenv.WaitFor(t, 10*time.Second, "Redis answering again", func() bool { return a.Redis.Ping(ctx) == nil })
	return env, a, p, message.Envelope{ID: m.ID, Seq: 0}
}

// claimWhileDown takes the claim on id as token, with Redis down.
func claimWhileDown(ctx context.Context, t *testing.T, p *processor.Processor, id, token string) {
	t.Helper()
	if ok, _, _, err := p.Inbox.Claim(ctx, id, token, 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim with Redis down: %v %v", ok, err)
	}
}

// TestAStandInDoneMarkerIsSeenOnceRedisIsBack: a delivery answered 2xx
// while Redis was down left its done marker in the MongoDB stand-in, and
// its SENT was never recorded. Once Redis is back, the redelivered copy
// finds the marker there and records SENT from it, without a second call
// (Redis, back empty, holds no marker).
func TestAStandInDoneMarkerIsSeenOnceRedisIsBack(t *testing.T) {
	_, a, p, env := standInFixture(t, func(ctx context.Context, env map[string]string, a *app.App, p *processor.Processor, id string) {
		claimWhileDown(ctx, t, p, id, "first")
		if err := p.Inbox.Complete(ctx, id, "wid-1", time.Hour); err != nil {
			t.Fatal(err)
		}
	})
	ctx := context.Background()
	body, _ := json.Marshal(env)
	if r := p.Handle(ctx, body, true); r.Outcome != "delivered_from_inbox" {
		t.Fatalf("redelivered copy with the done marker in the stand-in: %+v, want SENT recorded from it without a call", r)
	}
	if m, err := a.Store.GetMessage(ctx, env.ID); err != nil || m.Status != message.StatusSent || m.WebhookMessageID != "wid-1" {
		t.Fatalf("message %s, webhook messageId %q (%v); want SENT with wid-1", m.Status, m.WebhookMessageID, err)
	}
}

// TestAStandInClaimHoldsOffAClaimInRedis: a delivery took its claim in the
// MongoDB stand-in while Redis was down and is in its webhook call when
// Redis comes back. Another process's copy of the message, claiming in
// Redis (empty), finds the stand-in's claim and leaves the message to it.
func TestAStandInClaimHoldsOffAClaimInRedis(t *testing.T) {
	var other *processor.Processor
	_, _, p, m := standInFixture(t, func(ctx context.Context, env map[string]string, a *app.App, p *processor.Processor, id string) {
		// Opened before the stand-in is written to: a second store
		// opening the embedded MongoDB's file while the first writes can
		// find it busy.
		var err error
		if other, err = testenv.App(t, env).Processor(); err != nil {
			t.Fatal(err)
		}
		claimWhileDown(ctx, t, p, id, "in-the-call")
	})
	ctx := context.Background()
	if ok, st, _, err := other.Inbox.Claim(ctx, m.ID, "second", 0, time.Minute); err != nil || ok || st != outbox.InboxInProgress {
		t.Fatalf("claim in Redis beside the stand-in's: claimed %v, state %v (%v); want it held", ok, st, err)
	}
	// Given back in Redis: the holder's release leaves the way clear.
	if err := p.Inbox.Release(ctx, m.ID, "in-the-call"); err != nil {
		t.Fatal(err)
	}
	if ok, _, _, err := other.Inbox.Claim(ctx, m.ID, "third", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim after the holder let go: %v %v", ok, err)
	}
}

// TestAStandInWriteIsCoveredForItsWholeKeep: a write to the MongoDB
// stand-in is covered by the record that has every process read it, for
// at least the time it may matter, however much of the last record was
// left; and this process's first write of an outage waits a second, for
// every process's reading of the record (once a second) to see it.
func TestAStandInWriteIsCoveredForItsWholeKeep(t *testing.T) {
	var before time.Time
	_, a, _, _ := standInFixture(t, func(ctx context.Context, env map[string]string, a *app.App, p *processor.Processor, id string) {
		start := time.Now()
		claimWhileDown(ctx, t, p, id, "first")
		if took := time.Since(start); took < 900*time.Millisecond {
			t.Fatalf("the outage's first claim in the stand-in took %s, want a second's wait for the record to be seen", took)
		}
		// A record from earlier with a little over half its keep left.
		a.SetStandInMarkedUntil(time.Now().Add(a.StandInKeep() * 6 / 10))
		before = time.Now()
		if err := p.Inbox.Complete(ctx, id, "wid-1", time.Hour); err != nil {
			t.Fatal(err)
		}
	})
	until, err := a.Store.StandInUsedUntil(context.Background())
	if keep := a.StandInKeep(); err != nil || until.Before(before.Add(keep)) {
		t.Fatalf("stand-in recorded in use until %s (%v), want at least %s after the write", until, err, keep)
	}
}

// TestStandInCountsAsUsedBeforeItsFirstReading: a process whose first
// reading of the record is still in flight takes the stand-in for in use,
// rather than miss what it holds right after an outage.
func TestStandInCountsAsUsedBeforeItsFirstReading(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	if !a.StandInUsed(context.Background(), true) {
		t.Fatal("with the first reading in flight: not in use, want in use")
	}
	if a.StandInUsed(context.Background(), false) {
		t.Fatal("read, with no record: in use, want not")
	}
}
