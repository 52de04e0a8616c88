package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// TestReplayInput: POST /dlq/replay takes the same care with its input as
// POST /messages, and never reads a mistake as "replay everything".
func TestReplayInput(t *testing.T) {
	ts := newTestServer(t)
	w := ts.do(t, "POST", "/messages", `{"to":"+905551111111","content":"x"}`)
	id := decodeJSON[message.Message](t, w).ID
	ts.record(t, id, message.StatusFailed, message.Delivery{Outcome: message.OutcomeFailed, StatusCode: 400})

	for _, c := range []struct {
		name, path, body string
		headers          []string
		status           int
		field            string
	}{
		{name: "empty ids", path: "/dlq/replay", body: `{"ids":[]}`, status: 400, field: "ids"},
		{name: "null ids", path: "/dlq/replay", body: `{"ids":null}`, status: 400, field: "ids"},
		{name: "ids not an array", path: "/dlq/replay", body: `{"ids":"x"}`, status: 400, field: "ids"},
		{name: "dryRun not a boolean", path: "/dlq/replay?dryRun=maybe", status: 400, field: "dryRun"},
		{name: "dryRun empty", path: "/dlq/replay?dryRun=", status: 400, field: "dryRun"},
		{name: "since empty in the query", path: "/dlq/replay?since=", status: 400, field: "since"},
		{name: "since empty in the body", path: "/dlq/replay", body: `{"since":""}`, status: 400, field: "since"},
		{name: "since null", path: "/dlq/replay", body: `{"since":null}`, status: 400, field: "since"},
		{name: "since not a string", path: "/dlq/replay", body: `{"since":1700000000}`, status: 400, field: "since"},
		{name: "since in the query and empty in the body", path: "/dlq/replay?since=2999-01-01T00:00:00Z", body: `{"since":""}`, status: 400, field: "since"},
		{name: "since in the query and the body", path: "/dlq/replay?since=2999-01-01T00:00:00Z", body: `{"since":"2000-01-01T00:00:00Z"}`, status: 400, field: "since"},
		{name: "text content type", path: "/dlq/replay", body: `{"dryRun":true}`, headers: []string{"Content-Type", "text/plain"}, status: 415},
		{name: "data after the object", path: "/dlq/replay", body: `{"dryRun":true} {"ids":[]}`, status: 400},
		{name: "unknown field", path: "/dlq/replay", body: `{"id":"x"}`, status: 400, field: "id"},
		{name: "null body", path: "/dlq/replay", body: ` null`, status: 400},
		{name: "array body", path: "/dlq/replay", body: `[]`, status: 400},
	} {
		t.Run(c.name, func(t *testing.T) {
			readProblem(t, ts.do(t, "POST", c.path, c.body, c.headers...), c.status, c.field)
		})
	}
	if m, err := ts.a.Store.GetMessage(t.Context(), id); err != nil || m.Status != message.StatusFailed {
		t.Fatalf("after the rejected requests: %+v %v, want it still FAILED", m, err)
	}

	// Any spelling strconv.ParseBool takes is a dry run.
	w = ts.do(t, "POST", "/dlq/replay?dryRun=1", "")
	if res := decodeJSON[message.ReplayResult](t, w); w.Code != http.StatusOK || res.Matched != 1 || res.Replayed != 0 {
		t.Fatalf("dry run: %d %+v", w.Code, res)
	}
	w = ts.do(t, "POST", "/dlq/replay", `{"ids":["`+id+`"]}`)
	if res := decodeJSON[message.ReplayResult](t, w); w.Code != http.StatusOK || res.Replayed != 1 {
		t.Fatalf("replay: %d %+v", w.Code, res)
	}
}

// TestReplayThousandIDs: POST /dlq/replay takes the 1,000 ids the README
// promises, even pretty-printed one a line, which the 16 KiB limit of the
// other routes would refuse; its own limit still holds.
func TestReplayThousandIDs(t *testing.T) {
	ts := newTestServer(t)
	id := decodeJSON[message.Message](t, ts.do(t, "POST", "/messages", `{"to":"+905551111111","content":"x"}`)).ID
	ts.record(t, id, message.StatusFailed, message.Delivery{Outcome: message.OutcomeFailed, StatusCode: 400})
	ids := []string{strings.ToUpper(id)}
	for len(ids) < 1000 {
		ids = append(ids, uuid.NewString())
	}
	b, err := json.MarshalIndent(map[string]any{"ids": ids, "dryRun": true}, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= int(httpapi.DefaultMaxBodyBytes) {
		t.Fatalf("the body is %d bytes: it tests nothing", len(b))
	}
	w := ts.do(t, "POST", "/dlq/replay", string(b))
	if res := decodeJSON[message.ReplayResult](t, w); w.Code != http.StatusOK || res.Matched != 1 || len(res.IDs) != 1 || res.IDs[0] != id {
		t.Fatalf("dry run of 1,000 ids: %d %+v", w.Code, res)
	}
	big := `{"ids":["` + id + `"],"dryRun":true}` + strings.Repeat(" ", int(httpapi.DefaultMaxReplayBodyBytes))
	readProblem(t, ts.do(t, "POST", "/dlq/replay", big), http.StatusRequestEntityTooLarge, "")
}

// TestReplayDuplicateIDs: an id listed twice, in any case, is one message,
// so a dry run counts what the real run replays.
func TestReplayDuplicateIDs(t *testing.T) {
	ts := newTestServer(t)
	id := decodeJSON[message.Message](t, ts.do(t, "POST", "/messages", `{"to":"+905551111111","content":"x"}`)).ID
	ts.record(t, id, message.StatusFailed, message.Delivery{Outcome: message.OutcomeFailed, StatusCode: 400})
	for _, c := range []struct {
		name   string
		ids    []string
		dryRun bool
	}{
		{"dry run, same case", []string{id, id}, true},
		{"dry run, other case", []string{strings.ToUpper(id), id}, true},
		{"real run", []string{id, strings.ToUpper(id)}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, _ := json.Marshal(map[string]any{"ids": c.ids, "dryRun": c.dryRun})
			w := ts.do(t, "POST", "/dlq/replay", string(b))
			res := decodeJSON[message.ReplayResult](t, w)
			replayed := 1
			if c.dryRun {
				replayed = 0
			}
			if w.Code != http.StatusOK || res.Matched != 1 || res.Replayed != replayed || len(res.IDs) != 1 || res.IDs[0] != id {
				t.Fatalf("%d %+v; want matched 1, replayed %d, ids [%s]", w.Code, res, replayed, id)
			}
		})
	}
}
