package lambdatest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func TestPublisherScheduleTick(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := ctxFor(t)

	// A closed gate leaves the messages in the outbox, due now: what the API
	// does while the schedule is stopped.
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	const n = 3
	var ids []string
	for i := range n {
		m, _, err := svc.Create(ctx, message.CreateRequest{To: "+905554444444", Content: fmt.Sprintf("tick %d", i)}, "")
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != message.StatusUnsent {
			t.Fatalf("seeded message is %s, want UNSENT", m.Status)
		}
		ids = append(ids, m.ID)
	}
	publisher := startFunction(t, "publisher", env)

	var sum outbox.Summary
	if err := json.Unmarshal(publisher.invokeFile("publisher-schedule-tick.json"), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Published != n || sum.Claimed != n || sum.Failed != 0 || sum.Skipped != "" {
		t.Errorf("summary %+v, want %d claimed and published", sum, n)
	}
	var queued []string
	for _, b := range drainAtLeast(t, env["RABBITMQ_QUEUE"], n, 5*time.Second) {
		var e message.Envelope
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("queued %s: %v", b, err)
		}
		queued = append(queued, e.ID)
	}
	slices.Sort(queued)
	slices.Sort(ids)
	if !slices.Equal(queued, ids) {
		t.Errorf("queued %v, want %v", queued, ids)
	}
	for _, id := range ids {
		m, err := a.Store.GetMessage(ctx, id)
		if err != nil || m.Status != message.StatusProcessing {
			t.Errorf("%s after the pass: %s, %v; want PROCESSING", id, m.Status, err)
		}
	}
	// The invocation's metrics hold the gauges an operator alarms on:
	// nothing left due, no dead letters, the three messages waiting in the
	// queue (no processor runs here), and no failed pass.
	logs := publisher.emu.Logs()
	for _, want := range []string{
		`{"Name":"outbox_backlog","Unit":"Count"}`, `"outbox_backlog":0`,
		`{"Name":"outbox_oldest_age","Unit":"Seconds"}`, `"outbox_oldest_age":0`,
		`{"Name":"failed_messages","Unit":"Count"}`, `"failed_messages":0`,
		`{"Name":"queue_ready","Unit":"Count"}`, `"queue_ready":3`,
		`{"Name":"dead_letter_queue_ready","Unit":"Count"}`, `"dead_letter_queue_ready":0`,
		`{"Name":"relay_pass_failures","Unit":"Count"}`, `"relay_pass_failures":0`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the function's metrics lack %s:\n%s", want, logs)
		}
	}

	// The next tick finds nothing due. It comes with an empty payload:
	// what EventBridge Scheduler sends with no Input is not documented,
	// and the run must not depend on it.
	sum = outbox.Summary{}
	body, err := publisher.invoke(nil)
	if err != nil {
		t.Fatalf("a tick with an empty payload: %v (answer %s)", err, body)
	}
	if err := json.Unmarshal(body, &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Published != 0 || sum.Failed != 0 {
		t.Errorf("second tick: %+v, want nothing published", sum)
	}
	if q := testenv.QueueDepth(t, env["RABBITMQ_QUEUE"]); q != 0 {
		t.Errorf("second tick queued %d messages", q)
	}
}

// TestPublisherWindow: with PUBLISH_WINDOW set, as the template sets it, one
// invocation keeps making passes, so a message that falls due a second into
// it is published by the same invocation, not the next minute's.
func TestPublisherWindow(t *testing.T) {
	env := testenv.Env(t, map[string]string{"PUBLISH_WINDOW": "3s", "PUBLISH_INTERVAL": "200ms"})
	a := testenv.App(t, env)
	ctx := ctxFor(t)
	at := time.Now().Add(1500 * time.Millisecond)
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	m, _, err := svc.Create(ctx, message.CreateRequest{To: "+905554444444", Content: "later", SendAt: &at}, "")
	if err != nil {
		t.Fatal(err)
	}
	publisher := startFunction(t, "publisher", env)
	start := time.Now()
	var sum outbox.Summary
	if err := json.Unmarshal(publisher.invokeFile("publisher-schedule-tick.json"), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Published != 1 || sum.Failed != 0 {
		t.Errorf("summary %+v, want the message published within the window", sum)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("the invocation took %s, shorter than its 3 s window allows", took)
	}
	if got, err := a.Store.GetMessage(ctx, m.ID); err != nil || got.Status != message.StatusProcessing {
		t.Errorf("after the invocation: %s, %v; want PROCESSING", got.Status, err)
	}
}
