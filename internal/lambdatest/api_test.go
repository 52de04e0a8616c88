package lambdatest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// getMessageID is the fixed id of events/api-get-message.json.
const getMessageID = "01938f3a-0000-7000-8000-000000000001"

func TestAPICreateMessage(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	api := startFunction(t, "api", env)

	r := proxyResponse(t, api.invokeFile("api-create-message.json"))
	var m message.Message
	decodeBody(t, r, 202, &m)
	if !message.ValidID(m.ID) || m.To != "+905551111111" || m.Content != "Hello from the outbox" {
		t.Fatalf("answered %+v", m)
	}
	if ct := header(r, "Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	// Behind the default execute-api host, paths start with the stage.
	if loc := header(r, "Location"); loc != "/Prod/messages/"+m.ID {
		t.Errorf("Location %q, want /Prod/messages/%s", loc, m.ID)
	}

	stored, err := a.Store.GetMessage(ctxFor(t), m.ID)
	if err != nil {
		t.Fatalf("the message is not in MongoDB: %v", err)
	}
	if stored.To != m.To || stored.Content != m.Content {
		t.Errorf("stored %+v, answered %+v", stored, m)
	}

	// The scheduler is started (the default), so the API published the
	// message itself: the fast path.
	var found bool
	for _, b := range drainAtLeast(t, env["RABBITMQ_QUEUE"], 1, 5*time.Second) {
		var e message.Envelope
		if err := json.Unmarshal(b, &e); err != nil {
			t.Errorf("queued %s: %v", b, err)
			continue
		}
		if e.ID == m.ID && e.Seq == 0 && !e.PublishedAt.IsZero() {
			found = true
		}
	}
	if !found {
		t.Errorf("no envelope of %s on the queue: the fast path did not publish it", m.ID)
	}
}

func TestAPICreateMessageInvalid(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	api := startFunction(t, "api", env)

	r := proxyResponse(t, api.invokeFile("api-create-message-invalid.json"))
	if ct := header(r, "Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	var p httpapi.Problem
	decodeBody(t, r, 400, &p)
	names := p.Field == "to"
	for _, fp := range p.Errors {
		names = names || fp.Field == "to"
	}
	if !names || p.Status != 400 {
		t.Errorf("the problem does not name the field to: %s", r.Body)
	}

	page, err := a.Store.ListMessages(ctxFor(t), message.Filter{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != 0 {
		t.Errorf("a rejected request stored %d messages", len(page.Items))
	}
	if n := testenv.QueueDepth(t, env["RABBITMQ_QUEUE"]); n != 0 {
		t.Errorf("a rejected request queued %d messages", n)
	}
}

func TestAPIGetMessage(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	now := time.Now().UTC().Truncate(time.Millisecond)
	seeded := message.New(getMessageID, message.CreateRequest{To: "+905552222222", Content: "Seeded for api-get-message"}, now)
	if err := a.Store.CreateMessage(ctxFor(t), seeded, message.NewOutboxEntry(seeded.ID, 0, now, now)); err != nil {
		t.Fatal(err)
	}
	api := startFunction(t, "api", env)

	var m message.Message
	decodeBody(t, proxyResponse(t, api.invokeFile("api-get-message.json")), 200, &m)
	if m.ID != getMessageID || m.To != seeded.To || m.Content != seeded.Content || m.Status != message.StatusUnsent {
		t.Errorf("answered %+v, want the seeded %+v", m, seeded)
	}
}

func TestAPIListMessages(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := ctxFor(t)
	now := time.Now().UTC().Truncate(time.Millisecond)
	var ids []string
	for i := range 2 {
		m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905553333333", Content: "list " + string(rune('a'+i))}, now)
		if err := a.Store.CreateMessage(ctx, m, message.NewOutboxEntry(m.ID, 0, now, now)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	// The first is delivered; the second stays UNSENT and must not be listed.
	sent := message.Outcome{MessageID: ids[0], Seq: 0, Status: message.StatusSent, Attempts: 1, At: now, WebhookMessageID: "wh-list"}
	if err := a.Store.RecordOutcome(ctx, sent); err != nil {
		t.Fatal(err)
	}
	api := startFunction(t, "api", env)

	var page message.Page
	decodeBody(t, proxyResponse(t, api.invokeFile("api-list-messages.json")), 200, &page)
	if len(page.Items) != 1 || page.Items[0].ID != ids[0] || page.Items[0].Status != message.StatusSent {
		t.Errorf("listed %+v, want only the SENT message %s", page.Items, ids[0])
	}
}

// TestAPIScheduler stops, reads, starts and reads the scheduler through one
// function instance (so all but the first invocation are warm). Without
// SCHEDULE_NAME the state lives in MongoDB.
func TestAPIScheduler(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	api := startFunction(t, "api", env)

	for _, step := range []struct {
		file string
		want message.SchedulerState
	}{
		{"api-scheduler-stop.json", message.SchedulerStopped},
		{"api-scheduler-status.json", message.SchedulerStopped},
		{"api-scheduler-start.json", message.SchedulerStarted},
		{"api-scheduler-status.json", message.SchedulerStarted},
	} {
		var st httpapi.SchedulerStatus
		decodeBody(t, proxyResponse(t, api.invokeFile(step.file)), 200, &st)
		if st.State != step.want || st.Backend != "mongodb" {
			t.Errorf("%s: state %q on %q, want %q on mongodb", step.file, st.State, st.Backend, step.want)
		}
		stored, _, err := a.Store.SchedulerState(ctxFor(t), message.SchedulerStarted)
		if err != nil {
			t.Fatal(err)
		}
		if stored != step.want {
			t.Errorf("%s: MongoDB holds %q, want %q", step.file, stored, step.want)
		}
	}
}

func TestAPIStatus(t *testing.T) {
	env := testenv.Env(t, nil)
	api := startFunction(t, "api", env)

	var report struct {
		Status string                         `json:"status"`
		Checks map[string]httpapi.CheckResult `json:"checks"`
	}
	decodeBody(t, proxyResponse(t, api.invokeFile("api-status.json")), 200, &report)
	if report.Status != "ok" {
		t.Errorf("status %q, want ok: %+v", report.Status, report.Checks)
	}
	for _, dep := range []string{"mongodb", "rabbitmq", "redis", "webhook"} {
		if report.Checks[dep].Status != httpapi.HealthOK {
			t.Errorf("%s: %+v", dep, report.Checks[dep])
		}
	}

	// Liveness answers without asking anything, under API Gateway's
	// request id.
	resp := proxyResponse(t, api.invokeFile("api-livez.json"))
	var live struct{ Service, Status string }
	decodeBody(t, resp, 200, &live)
	if live.Service != "api" || live.Status != "ok" {
		t.Errorf("GET /livez = %+v, want the api ok", live)
	}
	if id := header(resp, "X-Request-Id"); id != "5e0b6c1a-3f7d-4c8e-9a2b-1d4f6a8c0e09" {
		t.Errorf("GET /livez answered under request id %q, want API Gateway's", id)
	}
}

// TestColdStartNamesTheDependencyThatDoesNotAnswer: a cold start whose
// MongoDB does not answer fails within Lambda's 10 s for an init, logging
// which dependency it waited for, rather than running out Lambda's init
// time without a word and the invocation's after it.
func TestColdStartNamesTheDependencyThatDoesNotAnswer(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MONGODB_URI": "mongodb://" + testenv.FreeAddr(t) + "/"})
	api := startFunction(t, "api", env)
	start := time.Now()
	body, err := api.invoke(readEvent(t, "api-status.json"))
	took := time.Since(start)
	if err == nil {
		t.Fatalf("the invocation succeeded with no MongoDB: %s", body)
	}
	if took > 10*time.Second {
		t.Errorf("the cold start failed after %s, past Lambda's 10 s for an init", took.Round(time.Millisecond))
	}
	if logs := api.emu.Logs(); !strings.Contains(logs, "cold start failed") || !strings.Contains(logs, "connect to mongodb") {
		t.Errorf("the function's logs do not name the dependency it waited for:\n%s", logs)
	}
}
