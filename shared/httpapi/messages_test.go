package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

const phone = "+905551111111"

func body(to, content string) string {
	return fmt.Sprintf(`{"to":%q,"content":%q}`, to, content)
}

func TestCreateMessage(t *testing.T) {
	valid := body(phone, "hello")
	cases := []struct {
		name    string
		body    string
		headers []string
		status  int
		field   string // for a problem: the field it must name
		code    string // for a problem: its code, if any
	}{
		{name: "valid", body: valid, status: http.StatusAccepted},
		{name: "content type with charset", body: valid, headers: []string{"Content-Type", "application/json; charset=utf-8"}, status: http.StatusAccepted},
		{name: "trailing white space", body: valid + " \n\t", status: http.StatusAccepted},
		{name: "future sendAt", body: `{"to":"+905551111111","content":"hi","sendAt":"2099-01-01T00:00:00+03:00"}`, status: http.StatusAccepted},
		{name: "null sendAt", body: `{"to":"+905551111111","content":"hi","sendAt":null}`, status: http.StatusAccepted},
		{name: "250 two-byte characters", body: body(phone, strings.Repeat("ş", 250)), status: http.StatusAccepted},
		{name: "250 four-byte characters", body: body(phone, strings.Repeat("😀", 250)), status: http.StatusAccepted},
		{name: "surrogate pair escape", body: `{"to":"+905551111111","content":"\ud83d\ude00"}`, status: http.StatusAccepted},
		{name: "escaped backslash before u", body: `{"to":"+905551111111","content":"\\ud800"}`, status: http.StatusAccepted},
		{name: "255-character idempotency key", body: valid, headers: []string{"Idempotency-Key", strings.Repeat("k", 255)}, status: http.StatusAccepted},

		{name: "malformed JSON", body: `{"to":`, status: 400, code: message.EINVALID},
		{name: "syntax error", body: `{"to" "x"}`, status: 400, code: message.EINVALID},
		{name: "empty body", body: "", headers: []string{"Content-Type", "application/json"}, status: 400, code: message.EINVALID},
		{name: "array body", body: `[]`, status: 400, code: message.EINVALID},
		{name: "unknown field", body: `{"to":"+905551111111","content":"hi","priority":1}`, status: 400, field: "priority"},
		{name: "to of wrong type", body: `{"to":905551111111,"content":"hi"}`, status: 400, field: "to"},
		{name: "content of wrong type", body: `{"to":"+905551111111","content":["hi"]}`, status: 400, field: "content"},
		{name: "sendAt of wrong type", body: `{"to":"+905551111111","content":"hi","sendAt":1700000000}`, status: 400, field: "sendAt"},
		{name: "sendAt not RFC 3339", body: `{"to":"+905551111111","content":"hi","sendAt":"tomorrow"}`, status: 400, field: "sendAt"},
		{name: "sendAt in the past", body: `{"to":"+905551111111","content":"hi","sendAt":"2020-01-01T00:00:00Z"}`, status: 400, field: "sendAt"},
		{name: "missing to", body: `{"content":"hi"}`, status: 400, field: "to"},
		{name: "bad to", body: body("05551111111", "hi"), status: 400, field: "to"},
		{name: "to with letters", body: body("+90555abc1111", "hi"), status: 400, field: "to"},
		{name: "empty content", body: body(phone, ""), status: 400, field: "content"},
		{name: "missing content", body: `{"to":"+905551111111"}`, status: 400, field: "content"},
		{name: "251 two-byte characters", body: body(phone, strings.Repeat("ş", 251)), status: 400, field: "content"},
		{name: "content not UTF-8", body: "{\"to\":\"+905551111111\",\"content\":\"caf\xe9\"}", status: 400, code: message.EINVALID},
		{name: "lone high surrogate escape", body: `{"to":"+905551111111","content":"\ud800"}`, status: 400, code: message.EINVALID},
		{name: "high surrogate before a non-surrogate", body: `{"to":"+905551111111","content":"\ud800\u0041"}`, status: 400, code: message.EINVALID},
		{name: "lone low surrogate escape", body: `{"to":"+905551111111","content":"x\udc00"}`, status: 400, code: message.EINVALID},
		{name: "trailing object", body: valid + `{}`, status: 400, code: message.EINVALID},
		{name: "trailing garbage", body: valid + ` x`, status: 400, code: message.EINVALID},
		{name: "idempotency key not UTF-8", body: valid, headers: []string{"Idempotency-Key", "order-\xff\xfe"}, status: 400, field: "Idempotency-Key"},
		{name: "idempotency key too long", body: valid, headers: []string{"Idempotency-Key", strings.Repeat("k", 256)}, status: 400, field: "Idempotency-Key"},
		{name: "idempotency key of spaces", body: valid, headers: []string{"Idempotency-Key", "  "}, status: 400, field: "Idempotency-Key"},
		{name: "body too large", body: body(phone, strings.Repeat("a", 17<<10)), status: 413, code: message.ETOOLARGE},
		{name: "trailing data too large", body: valid + strings.Repeat(" ", 17<<10) + "{}", status: 413, code: message.ETOOLARGE},
		{name: "no content type", body: valid, headers: []string{"Content-Type", ""}, status: 415},
		{name: "text content type", body: valid, headers: []string{"Content-Type", "text/plain"}, status: 415},
		{name: "form content type", body: valid, headers: []string{"Content-Type", "application/x-www-form-urlencoded"}, status: 415},
		{name: "malformed content type", body: valid, headers: []string{"Content-Type", "application/json;;="}, status: 415},
		{name: "compressed body", body: valid, headers: []string{"Content-Encoding", "gzip"}, status: 415},
		{name: "identity coding", body: valid, headers: []string{"Content-Encoding", "identity"}, status: 202},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t)
			w := ts.do(t, http.MethodPost, "/messages", tc.body, tc.headers...)
			if tc.status < 400 {
				if w.Code != tc.status {
					t.Fatalf("status = %d, want %d; body: %s", w.Code, tc.status, w.Body)
				}
				m := decodeJSON[message.Message](t, w)
				if m.ID == "" || m.Status != message.StatusUnsent || m.To != phone {
					t.Errorf("message = %+v", m)
				}
				if got, want := w.Header().Get("Location"), "/messages/"+m.ID; got != want {
					t.Errorf("Location = %q, want %q", got, want)
				}
				return
			}
			p := readProblem(t, w, tc.status, tc.field)
			if tc.code != "" && p.Code != tc.code {
				t.Errorf("code = %q, want %q", p.Code, tc.code)
			}
			if p.Instance != "/messages" {
				t.Errorf("instance = %q", p.Instance)
			}
			if strings.Contains(w.Body.String(), phone) {
				t.Errorf("problem echoes the phone number: %s", w.Body)
			}
		})
	}
}

// TestEveryInvalidFieldIsReported: a request with several invalid fields
// hears of all of them, in errors and in the detail; field names the
// first.
func TestEveryInvalidFieldIsReported(t *testing.T) {
	ts := newTestServer(t)
	p := readProblem(t, ts.do(t, http.MethodPost, "/messages", `{"to":"0555","content":""}`), http.StatusBadRequest, "to")
	if len(p.Errors) != 2 || p.Errors[0].Field != "to" || p.Errors[1].Field != "content" || p.Errors[1].Detail != "is required" {
		t.Fatalf("errors %+v, want to's and content's", p.Errors)
	}
	if !strings.Contains(p.Detail, "to must be an E.164 number") || !strings.Contains(p.Detail, "; content is required") {
		t.Fatalf("detail %q, want both fields", p.Detail)
	}
}

// TestIdempotencyKeyGivenEmptyOrTwice: an Idempotency-Key header sent
// empty (a client's unset variable) or twice is a 400, not a request
// without a key, which would make a second message on the retry the key
// was meant to make safe.
func TestIdempotencyKeyGivenEmptyOrTwice(t *testing.T) {
	ts := newTestServer(t)
	for _, keys := range [][]string{{""}, {"a", "b"}, {"a", "a"}} {
		r := httptest.NewRequest(http.MethodPost, "/messages", strings.NewReader(body(phone, "once")))
		r.Header.Set("Content-Type", "application/json")
		r.Header["Idempotency-Key"] = keys
		w := httptest.NewRecorder()
		ts.h.ServeHTTP(w, r)
		readProblem(t, w, http.StatusBadRequest, "Idempotency-Key")
	}
	if page, err := ts.a.Store.ListMessages(t.Context(), message.Filter{Limit: 10}); err != nil || len(page.Items) != 0 {
		t.Fatalf("after the rejected requests: %d messages (%v), want none", len(page.Items), err)
	}
}

func TestCreateMessageSendAt(t *testing.T) {
	ts := newTestServer(t)
	w := ts.do(t, http.MethodPost, "/messages", `{"to":"+905551111111","content":"hi","sendAt":"2099-01-01T03:00:00+03:00"}`)
	m := decodeJSON[message.Message](t, w)
	want := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	if m.SendAt == nil || !m.SendAt.Equal(want) {
		t.Errorf("sendAt = %v, want %v", m.SendAt, want)
	}
	if !strings.Contains(w.Body.String(), `"sendAt":"2099-01-01T00:00:00Z"`) {
		t.Errorf("sendAt not in RFC 3339: %s", w.Body)
	}

	// Kept to the millisecond, as stored: the 202 and a later read agree.
	w = ts.do(t, http.MethodPost, "/messages", `{"to":"+905551111111","content":"hi","sendAt":"2099-01-01T03:00:00.123456789+03:00"}`)
	m = decodeJSON[message.Message](t, w)
	got := decodeJSON[message.Message](t, ts.do(t, http.MethodGet, "/messages/"+m.ID, ""))
	if want := time.Date(2099, 1, 1, 0, 0, 0, 123e6, time.UTC); !m.SendAt.Equal(want) || !got.SendAt.Equal(want) {
		t.Errorf("sendAt in the 202 %v, read back %v; want %v in both", m.SendAt, got.SendAt, want)
	}
}

func TestCreateMessageSmallerLimit(t *testing.T) {
	ts := newTestServer(t, func(o *httpapi.Options) { o.MaxBodyBytes = 32 })
	readProblem(t, ts.do(t, http.MethodPost, "/messages", body(phone, "twenty-six characters....")), 413, "")
}

func TestCreateMessageIdempotency(t *testing.T) {
	ts := newTestServer(t)
	key := []string{"Idempotency-Key", "order-42"}

	first := ts.do(t, http.MethodPost, "/messages", body(phone, "hello"), key...)
	if first.Code != http.StatusAccepted || first.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("first: %d %v %s", first.Code, first.Header(), first.Body)
	}
	m1 := decodeJSON[message.Message](t, first)

	again := ts.do(t, http.MethodPost, "/messages", body(phone, "hello"), key...)
	if again.Code != http.StatusOK {
		t.Fatalf("replay status = %d, want 200; body: %s", again.Code, again.Body)
	}
	if got := again.Header().Get("Idempotent-Replayed"); got != "true" {
		t.Errorf("Idempotent-Replayed = %q, want true", got)
	}
	if m2 := decodeJSON[message.Message](t, again); m2.ID != m1.ID {
		t.Errorf("replay returned %s, want %s", m2.ID, m1.ID)
	}

	p := readProblem(t, ts.do(t, http.MethodPost, "/messages", body(phone, "other"), key...), http.StatusUnprocessableEntity, "")
	if p.Code != message.EMISMATCH {
		t.Errorf("code = %q, want %q", p.Code, message.EMISMATCH)
	}

	// A first request with key "running" whose message is not stored yet:
	// its record, with the hash of the same request (read from the record
	// of order-42, which was made with it).
	ctx := context.Background()
	rec, _, err := ts.a.Store.PutIdempotencyRecord(ctx, message.IdempotencyRecord{Key: "order-42"})
	if err != nil {
		t.Fatal(err)
	}
	running := message.IdempotencyRecord{Key: "running", RequestHash: rec.RequestHash, MessageID: "0190a0b0-0000-7000-8000-0000000000aa", CreatedAt: time.Now().UTC()}
	if _, inserted, err := ts.a.Store.PutIdempotencyRecord(ctx, running); err != nil || !inserted {
		t.Fatalf("store the running request's record: %v %v", inserted, err)
	}
	p = readProblem(t, ts.do(t, http.MethodPost, "/messages", body(phone, "hello"), "Idempotency-Key", "running"), http.StatusConflict, "")
	if p.Code != message.EINPROGRESS {
		t.Errorf("code = %q, want %q", p.Code, message.EINPROGRESS)
	}

	// Without a key, the same request makes a second message.
	if w := ts.do(t, http.MethodPost, "/messages", body(phone, "hello")); w.Code != http.StatusAccepted {
		t.Errorf("keyless repeat: %d", w.Code)
	}
}

func TestServiceErrors(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
	}{
		{"conflict", message.Errorf(message.ECONFLICT, "conflict"), http.StatusConflict},
		{"mismatch", message.Errorf(message.EMISMATCH, "mismatch"), http.StatusUnprocessableEntity},
		{"in progress", message.Errorf(message.EINPROGRESS, "running"), http.StatusConflict},
		{"too large", message.Errorf(message.ETOOLARGE, "too large"), http.StatusRequestEntityTooLarge},
		{"unavailable", fmt.Errorf("store: %w", message.Errorf(message.EUNAVAILABLE, "database unreachable")), http.StatusServiceUnavailable},
		{"internal code", message.Errorf(message.EINTERNAL, "secret internals"), http.StatusInternalServerError},
		{"unknown code", message.Errorf("weird", "secret internals"), http.StatusInternalServerError},
		{"plain error", errors.New("mongodb://admin:secret@db: connection refused"), http.StatusInternalServerError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t)
			ts.msgs.setErr(tc.err)
			for _, req := range []struct{ method, path, body string }{
				{http.MethodPost, "/messages", body(phone, "hi")},
				{http.MethodGet, "/messages", ""},
				{http.MethodGet, "/messages/0190a0b0-0000-7000-8000-000000000001", ""},
			} {
				w := ts.do(t, req.method, req.path, req.body)
				readProblem(t, w, tc.status, "")
				if tc.status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") != "5" {
					t.Errorf("%s %s: Retry-After = %q, want 5", req.method, req.path, w.Header().Get("Retry-After"))
				}
				if tc.status == http.StatusInternalServerError {
					if strings.Contains(w.Body.String(), "secret") {
						t.Errorf("500 leaks the error: %s", w.Body)
					}
					if !strings.Contains(ts.logs.String(), "secret") {
						t.Errorf("500 did not log the error: %s", ts.logs)
					}
				}
			}
		})
	}
}

func TestListMessages(t *testing.T) {
	ts := newTestServer(t)

	w := ts.do(t, http.MethodGet, "/messages", "")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"items":[]`) {
		t.Fatalf("empty list: %d %s", w.Code, w.Body)
	}

	var ids []string
	for i := range 5 {
		m := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, fmt.Sprint("m", i))))
		ids = append(ids, m.ID)
	}
	ts.record(t, ids[1], message.StatusSent, message.Delivery{Attempt: 1, Outcome: message.OutcomeDelivered, StatusCode: 202})
	ts.record(t, ids[4], message.StatusUnsent, message.Delivery{Attempt: 1, Outcome: message.OutcomeRetry, StatusCode: 503})

	p := decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages?limit=2", ""))
	if len(p.Items) != 2 || p.Items[0].ID != ids[4] || p.NextCursor != ids[3] {
		t.Fatalf("first page = %+v", p)
	}
	if p.Items[0].Deliveries != nil {
		t.Errorf("list shows deliveries: %+v", p.Items[0])
	}
	p = decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages?limit=2&cursor="+p.NextCursor, ""))
	if len(p.Items) != 2 || p.Items[0].ID != ids[2] {
		t.Fatalf("second page = %+v", p)
	}
	p = decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages?status=SENT", ""))
	if len(p.Items) != 1 || p.Items[0].ID != ids[1] || p.NextCursor != "" {
		t.Fatalf("SENT page = %+v", p)
	}

	for _, tc := range []struct{ query, field string }{
		{"status=sent", "status"},
		{"status=DONE", "status"},
		{"limit=0", "limit"},
		{"limit=501", "limit"},
		{"limit=-1", "limit"},
		{"limit=ten", "limit"},
		{"cursor=" + strings.Repeat("c", 300), "cursor"},
		// A cursor is a message id; anything else is not one this API
		// returned, and must not page from wherever it sorts.
		{"cursor=abc", "cursor"},
		{"cursor=" + strings.Repeat("f", 36), "cursor"},
		{"cursor=0190a0b0-0000-7000-8000-00000000000g", "cursor"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			readProblem(t, ts.do(t, http.MethodGet, "/messages?"+tc.query, ""), http.StatusBadRequest, tc.field)
		})
	}
	if w := ts.do(t, http.MethodGet, "/messages?limit=500&status=FAILED", ""); w.Code != http.StatusOK {
		t.Errorf("limit=500: %d %s", w.Code, w.Body)
	}
	// A cursor in capitals is the same id, and pages from the same place.
	p = decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages?limit=2&cursor="+strings.ToUpper(ids[3]), ""))
	if len(p.Items) != 2 || p.Items[0].ID != ids[2] || p.Items[1].ID != ids[1] {
		t.Errorf("page after the uppercase cursor = %+v, want %s and %s", p, ids[2], ids[1])
	}
}

// TestQueryParameters: a query parameter a route does not take, or one
// given twice, is a 400 naming it rather than ignored: ?statuss=FAILED
// must not answer with every message. The parameters the README documents
// keep working.
func TestQueryParameters(t *testing.T) {
	ts := newTestServer(t)
	m := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, "hi")))
	for _, tc := range []struct {
		method, path, field string
	}{
		{http.MethodPost, "/messages?sendAt=2030-01-01T00:00:00Z", "sendAt"},
		{http.MethodGet, "/messages/" + m.ID + "?fields=status", "fields"},
		{http.MethodPost, "/messages/" + m.ID + "/retry?force=true", "force"},
		{http.MethodPost, "/scheduler/start?x=1", "x"},
		{http.MethodPost, "/scheduler/stop?x=1&x=2", "x"},
		{http.MethodGet, "/scheduler?verbose=1", "verbose"},
		{http.MethodGet, "/messages?statuss=FAILED", "statuss"},
		{http.MethodGet, "/messages?status=FAILED&Status=SENT", "Status"},
		{http.MethodGet, "/messages?status=SENT&status=FAILED", "status"},
		{http.MethodGet, "/messages?limit=1&limit=500", "limit"},
		{http.MethodGet, "/messages?cursor=" + m.ID + "&cursor=" + m.ID, "cursor"},
		{http.MethodGet, "/messages?dryRun=true", "dryRun"},
		{http.MethodPost, "/dlq/replay?dryrun=true", "dryrun"},
		{http.MethodPost, "/dlq/replay?dryRun=true&dryRun=false", "dryRun"},
		{http.MethodPost, "/dlq/replay?dryRun=true&since=2020-01-01T00:00:00Z&since=2030-01-01T00:00:00Z", "since"},
		{http.MethodPost, "/dlq/replay?dryRun=true&ids=" + m.ID, "ids"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			b := ""
			if tc.method == http.MethodPost && strings.HasPrefix(tc.path, "/messages?") {
				b = body(phone, "refused for its query")
			}
			p := readProblem(t, ts.do(t, tc.method, tc.path, b), http.StatusBadRequest, tc.field)
			if !strings.HasPrefix(p.Detail, tc.field+" ") {
				t.Errorf("detail %q does not start with the parameter", p.Detail)
			}
		})
	}
	for _, path := range []string{"/messages?status=%zz&x", "/messages?status=SENT;limit=1"} {
		readProblem(t, ts.do(t, http.MethodGet, path, ""), http.StatusBadRequest, "")
	}
	if m2, err := ts.a.Store.GetMessage(t.Context(), m.ID); err != nil || m2.Status != message.StatusUnsent {
		t.Fatalf("after the rejected requests: %+v %v", m2, err)
	}
	if page := decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages", "")); len(page.Items) != 1 {
		t.Fatalf("after the rejected requests the store holds %d messages, want the one created first", len(page.Items))
	}
	if st := decodeJSON[map[string]any](t, ts.do(t, http.MethodGet, "/scheduler", "")); st["state"] != "stopped" {
		t.Fatalf("after the rejected requests the scheduler is %v, want it still stopped", st["state"])
	}

	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/messages?status=UNSENT&limit=10&cursor=" + strings.Repeat("f", 8) + m.ID[8:]},
		{http.MethodGet, "/messages?status=&limit=&cursor="},
		{http.MethodPost, "/dlq/replay?dryRun=true&since=2020-01-01T00:00:00Z"},
		// Probes may add parameters of their own.
		{http.MethodGet, "/livez?probe=kubelet"},
	} {
		if w := ts.do(t, tc.method, tc.path, ""); w.Code != http.StatusOK {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, w.Code, w.Body)
		}
	}
}

// TestProblemDetail: a problem's detail is its field followed by the
// message, a predicate about it, and so names the field once: the service's
// errors are written that way too.
func TestProblemDetail(t *testing.T) {
	ts := newTestServer(t)
	key := []string{"Idempotency-Key", "detail-1"}
	ts.do(t, http.MethodPost, "/messages", body(phone, "hello"), key...)
	ids := make([]string, 1001)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	replay, _ := json.Marshal(map[string]any{"ids": ids, "dryRun": true})
	for _, tc := range []struct {
		name, method, path, body string
		headers                  []string
		status                   int
		field, detail            string
	}{
		{"service error", http.MethodPost, "/messages", body(phone, "other"), key,
			http.StatusUnprocessableEntity, "Idempotency-Key", "Idempotency-Key was used with a different request"},
		{"service error of a bulk replay", http.MethodPost, "/dlq/replay", string(replay), nil,
			http.StatusBadRequest, "ids", "ids must hold at most 1000 ids per call"},
		{"predicate", http.MethodPost, "/messages", `{"content":"hi"}`, nil,
			http.StatusBadRequest, "to", "to is required"},
		{"predicate of the HTTP layer", http.MethodGet, "/messages?limit=0", "", nil,
			http.StatusBadRequest, "limit", "limit must be an integer from 1 to 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := readProblem(t, ts.do(t, tc.method, tc.path, tc.body, tc.headers...), tc.status, tc.field)
			if p.Detail != tc.detail {
				t.Errorf("detail = %q, want %q", p.Detail, tc.detail)
			}
		})
	}
}

func TestGetMessage(t *testing.T) {
	ts := newTestServer(t)
	m := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, "hi")))
	ts.record(t, m.ID, message.StatusSent, message.Delivery{Attempt: 1, Outcome: message.OutcomeDelivered, StatusCode: 202})

	got := decodeJSON[message.Message](t, ts.do(t, http.MethodGet, "/messages/"+m.ID, ""))
	if got.ID != m.ID || len(got.Deliveries) != 1 || got.Deliveries[0].StatusCode != 202 {
		t.Errorf("got %+v", got)
	}
	// A UUID is the same in capitals.
	if got := decodeJSON[message.Message](t, ts.do(t, http.MethodGet, "/messages/"+strings.ToUpper(m.ID), "")); got.ID != m.ID {
		t.Errorf("by the uppercase ID: got %+v", got)
	}

	p := readProblem(t, ts.do(t, http.MethodGet, "/messages/0190a0b0-0000-7000-8000-0000000000ff", ""), http.StatusNotFound, "")
	if p.Code != message.ENOTFOUND || p.Instance != "/messages/0190a0b0-0000-7000-8000-0000000000ff" {
		t.Errorf("problem = %+v", p)
	}

	calls := ts.msgs.calls()
	for _, id := range []string{"42", "not-a-uuid", "0190a0b0-0000-7000-8000-00000000000g", "0190a0b0x0000-7000-8000-000000000001"} {
		readProblem(t, ts.do(t, http.MethodGet, "/messages/"+id, ""), http.StatusNotFound, "")
	}
	if n := ts.msgs.calls() - calls; n != 0 {
		t.Errorf("invalid IDs reached the service: %d calls", n)
	}
}

func TestScheduler(t *testing.T) {
	ts := newTestServer(t)
	for _, tc := range []struct {
		method, path string
		want         message.SchedulerState
	}{
		{http.MethodGet, "/scheduler", message.SchedulerStopped},
		{http.MethodPost, "/scheduler/start", message.SchedulerStarted},
		{http.MethodPost, "/scheduler/start", message.SchedulerStarted},
		{http.MethodGet, "/scheduler", message.SchedulerStarted},
		{http.MethodPost, "/scheduler/stop", message.SchedulerStopped},
	} {
		w := ts.do(t, tc.method, tc.path, "")
		if w.Code != http.StatusOK {
			t.Fatalf("%s %s: %d %s", tc.method, tc.path, w.Code, w.Body)
		}
		st := decodeJSON[map[string]any](t, w)
		if st["state"] != string(tc.want) || st["backend"] != "mongodb" {
			t.Errorf("%s %s: %v, want state %s", tc.method, tc.path, st, tc.want)
		}
	}
	ts.sched.mu.Lock()
	ts.sched.err = message.Errorf(message.EUNAVAILABLE, "scheduler API unreachable")
	ts.sched.mu.Unlock()
	readProblem(t, ts.do(t, http.MethodPost, "/scheduler/start", ""), http.StatusServiceUnavailable, "")
}

// TestJSONBodiesNeedTheJSONContentType: a body sent to POST /messages or POST
// /dlq/replay without Content-Type: application/json, or with text/plain or
// a form's type (what a web page on another site can send without a CORS
// preflight), is refused with a 415 problem that names the type, and nothing
// is stored or replayed. Parameters such as charset are fine, and a POST
// /dlq/replay without a body needs no Content-Type.
func TestJSONBodiesNeedTheJSONContentType(t *testing.T) {
	ts := newTestServer(t)
	id := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, "fails"))).ID
	ts.record(t, id, message.StatusFailed, message.Delivery{Attempt: 1, Outcome: message.OutcomeFailed, StatusCode: 400})
	for _, ct := range []string{"", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"} {
		t.Run("Content-Type "+ct, func(t *testing.T) {
			for _, req := range []struct{ path, body string }{
				{"/messages", body(phone, "from another site")},
				{"/dlq/replay", `{"ids":["` + id + `"]}`},
			} {
				p := readProblem(t, ts.do(t, http.MethodPost, req.path, req.body, "Content-Type", ct), http.StatusUnsupportedMediaType, "")
				if !strings.Contains(p.Detail, "Content-Type") || !strings.Contains(p.Detail, "application/json") {
					t.Errorf("POST %s: detail %q does not name the type wanted", req.path, p.Detail)
				}
			}
		})
	}
	ts.expectOnlyFailed(t, id)

	if w := ts.do(t, http.MethodPost, "/messages", body(phone, "hi"), "Content-Type", "application/json; charset=utf-8"); w.Code != http.StatusAccepted {
		t.Errorf("application/json with a charset: %d %s", w.Code, w.Body)
	}
	if w := ts.do(t, http.MethodPost, "/dlq/replay?dryRun=true", ""); w.Code != http.StatusOK {
		t.Errorf("a replay without a body or Content-Type: %d %s", w.Code, w.Body)
	}
}

// TestBodyKeysAreExactAndGivenOnce: encoding/json keeps the last of a key
// given twice and matches keys to fields whatever their case, so
// {"to":"A","TO":"B"} would store B, which a reader of the request, or a
// filter in front of the API, may well take for A. A body with a key given
// twice (escaped or not) or one that differs from a field's name only by
// case (Unicode folding included: "ſ" folds to "s") is a 400 naming that key,
// and nothing is stored or replayed. Keys inside strings and nested values
// are not keys of the body.
func TestBodyKeysAreExactAndGivenOnce(t *testing.T) {
	ts := newTestServer(t)
	id := decodeJSON[message.Message](t, ts.do(t, http.MethodPost, "/messages", body(phone, "fails"))).ID
	ts.record(t, id, message.StatusFailed, message.Delivery{Attempt: 1, Outcome: message.OutcomeFailed, StatusCode: 400})
	const other = "+905552222222"
	for _, tc := range []struct {
		name, path, body, field string
	}{
		{"the review's example", "/messages", `{"to":"` + phone + `","TO":"` + other + `","content":"a","CONTENT":"b"}`, "TO"},
		{"a field in another case", "/messages", `{"To":"` + phone + `","content":"a"}`, "To"},
		{"a field given twice", "/messages", `{"to":"` + phone + `","content":"a","to":"` + other + `"}`, "to"},
		{"a field given twice, once escaped", "/messages", `{"to":"` + phone + `","content":"a","\u0074o":"` + other + `"}`, "to"},
		{"a field given twice, the first null", "/messages", `{"to":"` + phone + `","content":"a","sendAt":null,"sendAt":"2099-01-01T00:00:00Z"}`, "sendAt"},
		{"a field with a long s", "/messages", `{"to":"` + phone + `","content":"a","ſendAt":"2099-01-01T00:00:00Z"}`, "ſendAt"},
		{"a replay's field in another case", "/dlq/replay", `{"ids":["` + id + `"],"DRYRUN":true}`, "DRYRUN"},
		{"a replay's field given twice", "/dlq/replay", `{"dryRun":true,"ids":["` + id + `"],"dryRun":false}`, "dryRun"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			readProblem(t, ts.do(t, http.MethodPost, tc.path, tc.body), http.StatusBadRequest, tc.field)
		})
	}
	ts.expectOnlyFailed(t, id)

	content := `\"to\":\"x\", {\"TO\":[\"to\"]}, \\\"`
	w := ts.do(t, http.MethodPost, "/messages", ` { "content" : "`+content+`" ,"to":"`+phone+`" } `)
	if m := decodeJSON[message.Message](t, w); w.Code != http.StatusAccepted || m.Content != `"to":"x", {"TO":["to"]}, \"` {
		t.Errorf("keys inside a string: %d %s", w.Code, w.Body)
	}
	if w := ts.do(t, http.MethodPost, "/dlq/replay", `{"ids":["`+id+`","`+strings.ToUpper(id)+`"],"dryRun":true}`); w.Code != http.StatusOK {
		t.Errorf("a replay with each key once: %d %s", w.Code, w.Body)
	}
}

// expectOnlyFailed checks that the refused requests stored and replayed
// nothing: id, the one message stored before them, is still alone and
// FAILED.
func (ts *testServer) expectOnlyFailed(t *testing.T, id string) {
	t.Helper()
	if p := decodeJSON[message.Page](t, ts.do(t, http.MethodGet, "/messages", "")); len(p.Items) != 1 {
		t.Errorf("%d messages stored, want only the first", len(p.Items))
	}
	if m, err := ts.a.Store.GetMessage(t.Context(), id); err != nil || m.Status != message.StatusFailed {
		t.Fatalf("after the refused replays: %+v %v, want it still FAILED", m, err)
	}
}
