package lambdatest

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

// The fixed ids of the processor fixtures.
const (
	batchID1     = "01938f3a-0000-7000-8000-000000000002"
	batchID2     = "01938f3a-0000-7000-8000-000000000003"
	duplicatedID = "01938f3a-0000-7000-8000-000000000004"
	unknownID    = "01938f3a-0000-7000-8000-000000000005"
	diedInCallID = "01938f3a-0000-7000-8000-000000000006"
	neverTakenID = "01938f3a-0000-7000-8000-000000000007"
)

// startProcessor runs the processor function delivering to a counting test
// webhook.
func startProcessor(t *testing.T) (*function, *app.App, map[string]string, *webhook) {
	t.Helper()
	hook := &webhook{}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": srv.URL})
	a := testenv.App(t, env)
	return startFunction(t, "processor", env), a, env, hook
}

// seedPublished stores messages as the publisher leaves them: dispatch 0,
// its outbox entry in place (the processor accepts UNSENT or PROCESSING at
// the envelope's seq).
func seedPublished(t *testing.T, a *app.App, ids ...string) {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, id := range ids {
		m := message.New(id, message.CreateRequest{To: "+905555555555", Content: "Seeded for the processor"}, now)
		if err := a.Store.CreateMessage(ctxFor(t), m, message.NewOutboxEntry(id, 0, now, now)); err != nil {
			t.Fatal(err)
		}
	}
}

func batchSummary(t *testing.T, body []byte) processor.BatchSummary {
	t.Helper()
	var sum processor.BatchSummary
	if err := json.Unmarshal(body, &sum); err != nil {
		t.Fatalf("not a batch summary (%v): %s", err, body)
	}
	return sum
}

func requireSent(t *testing.T, a *app.App, ids ...string) {
	t.Helper()
	for _, id := range ids {
		m, err := a.Store.GetMessage(ctxFor(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != message.StatusSent || m.WebhookMessageID != "wh-"+id || m.Attempts != 1 {
			t.Errorf("%s: %s, webhook messageId %q, %d attempts; want SENT, wh-%s, 1", id, m.Status, m.WebhookMessageID, m.Attempts, id)
		}
	}
}

func TestProcessorBatch(t *testing.T) {
	fn, a, _, hook := startProcessor(t)
	seedPublished(t, a, batchID1, batchID2)

	sum := batchSummary(t, fn.invokeFile("processor-rabbitmq-batch.json"))
	if sum.Records != 2 || sum.Outcomes[message.OutcomeDelivered] != 2 || sum.NotRecorded != 0 {
		t.Errorf("summary %+v, want 2 records delivered", sum)
	}
	want := map[string]int{batchID1: 1, batchID2: 1}
	if got := hook.counts(); !equalCounts(got, want) {
		t.Errorf("webhook calls %v, want %v", got, want)
	}
	requireSent(t, a, batchID1, batchID2)
	// The invocation's metrics say whether the webhook's circuit is open.
	if logs := fn.emu.Logs(); !strings.Contains(logs, `{"Name":"circuit_open","Unit":"None"}`) || !strings.Contains(logs, `"circuit_open":0`) {
		t.Errorf("no circuit_open gauge at 0 in the function's metrics:\n%s", logs)
	}
	// And the latencies of the two deliveries, in milliseconds.
	for _, name := range []string{"webhook_latency", "delivery_latency"} {
		if logs := fn.emu.Logs(); !strings.Contains(logs, `{"Name":"`+name+`","Unit":"Milliseconds"}`) || !regexp.MustCompile(`"`+name+`":\[[0-9.]+,[0-9.]+\]`).MatchString(logs) {
			t.Errorf("no two values of %s in the function's metrics:\n%s", name, logs)
		}
	}

	// Amazon MQ redelivers a whole batch when an invocation fails: the same
	// event again delivers nothing twice and still succeeds.
	sum = batchSummary(t, fn.invokeFile("processor-rabbitmq-batch.json"))
	if sum.Records != 2 || sum.Outcomes["duplicate"] != 2 || sum.NotRecorded != 0 {
		t.Errorf("redelivered batch: summary %+v, want 2 duplicates", sum)
	}
	if got := hook.counts(); !equalCounts(got, want) {
		t.Errorf("after the redelivered batch: webhook calls %v, want %v", got, want)
	}
}

// TestProcessorRedeliveredBatch: Amazon MQ hands a batch out again, marked
// redelivered, after an invocation that failed or timed out. A record whose
// dispatch that invocation took to its webhook call (its claim and taken
// mark still in Redis) is not called again now: it is put back in the
// outbox for when the claim expires, counting the lost call as an attempt.
// A record the dead invocation never took is delivered.
func TestProcessorRedeliveredBatch(t *testing.T) {
	fn, a, env, hook := startProcessor(t)
	seedPublished(t, a, diedInCallID, neverTakenID)
	ctx := ctxFor(t)
	cfg := testenv.Config(t, env)
	if ok, _, _, err := a.Redis.Claim(ctx, diedInCallID, "timed-out-invocation", 0, cfg.ClaimTTL()); err != nil || !ok {
		t.Fatalf("claim as the timed-out invocation: %v %v", ok, err)
	}
	if err := a.Redis.MarkTaken(ctx, diedInCallID, 0, time.Hour); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	sum := batchSummary(t, fn.invokeFile("processor-rabbitmq-redelivered.json"))
	if sum.Records != 2 || sum.Outcomes[message.OutcomeDeferred] != 1 || sum.Outcomes[message.OutcomeDelivered] != 1 || sum.NotRecorded != 0 {
		t.Errorf("summary %+v, want one deferred and one delivered", sum)
	}
	if got, want := hook.counts(), map[string]int{neverTakenID: 1}; !equalCounts(got, want) {
		t.Errorf("webhook calls %v, want %v", got, want)
	}
	requireSent(t, a, neverTakenID)
	m, err := a.Store.GetMessage(ctx, diedInCallID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != message.StatusUnsent || m.Attempts != 1 || m.NextAttemptAt == nil ||
		m.NextAttemptAt.Before(before.Add(cfg.ClaimTTL()-time.Second)) || m.NextAttemptAt.After(time.Now().Add(cfg.ClaimTTL()+time.Second)) {
		t.Errorf("the record whose call was lost: %s after %d attempts, next at %v; want UNSENT after 1, once the claim (%s) has expired", m.Status, m.Attempts, m.NextAttemptAt, cfg.ClaimTTL())
	}
}

func TestProcessorDuplicates(t *testing.T) {
	fn, a, _, hook := startProcessor(t)
	seedPublished(t, a, duplicatedID)

	sum := batchSummary(t, fn.invokeFile("processor-rabbitmq-duplicates.json"))
	if sum.Records != 2 || sum.Outcomes[message.OutcomeDelivered] != 1 || sum.Outcomes["duplicate"] != 1 || sum.NotRecorded != 0 {
		t.Errorf("summary %+v, want one delivered and one duplicate", sum)
	}
	if got, want := hook.counts(), map[string]int{duplicatedID: 1}; !equalCounts(got, want) {
		t.Errorf("webhook calls %v, want %v", got, want)
	}
	requireSent(t, a, duplicatedID)
}

func TestProcessorMalformed(t *testing.T) {
	fn, a, env, hook := startProcessor(t)

	sum := batchSummary(t, fn.invokeFile("processor-rabbitmq-malformed.json"))
	if sum.Records != 3 || sum.Outcomes["dead_lettered_malformed"] != 3 || sum.NotRecorded != 0 {
		t.Errorf("summary %+v, want 3 records dead-lettered", sum)
	}
	if got := hook.counts(); len(got) != 0 {
		t.Errorf("webhook calls %v, want none", got)
	}

	var notes []message.DeadLetter
	for _, b := range drainAtLeast(t, env["RABBITMQ_DLQ"], 3, 5*time.Second) {
		var n message.DeadLetter
		if err := json.Unmarshal(b, &n); err != nil {
			t.Fatalf("dead-letter notification %s: %v", b, err)
		}
		notes = append(notes, n)
	}
	if len(notes) != 3 {
		t.Fatalf("%d notifications on the DLQ, want 3: %+v", len(notes), notes)
	}
	var notBase64, notJSON, unknown int
	for _, n := range notes {
		switch {
		case n.Reason == "":
			t.Errorf("a notification without a reason: %+v", n)
		case strings.Contains(n.Reason, "base64"):
			notBase64++
		case n.MessageID == unknownID:
			unknown++
		case strings.Contains(n.Reason, "malformed"):
			notJSON++
		}
	}
	if notBase64 != 1 || notJSON != 1 || unknown != 1 {
		t.Errorf("notifications %+v: want one for the data that is not base64, one for the body that is not JSON, one for the unknown id", notes)
	}
	if _, err := a.Store.GetMessage(context.Background(), unknownID); message.ErrorCode(err) != message.ENOTFOUND {
		t.Errorf("the unknown id exists now: %v", err)
	}
}

func equalCounts(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
