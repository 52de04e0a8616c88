package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

type problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Field  string `json:"field"`
}

func do(t *testing.T, method, url, body string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// getMessage reads message id through the API at api.
func getMessage(t *testing.T, api, id string) message.Message {
	t.Helper()
	resp, b := do(t, "GET", api+"/messages/"+id, "", nil)
	var m message.Message
	if err := json.Unmarshal(b, &m); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /messages/%s: %d %v %s", id, resp.StatusCode, err, b)
	}
	return m
}

// TestAPIErrors runs every rejection of the API against the real system and
// checks that nothing was stored for any of them.
func TestAPIErrors(t *testing.T) {
	hook, url := newSink(t)
	_ = hook
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": url, "API_KEY": "s3cret"})
	api, stop := startSystem(t, env)
	defer stop()
	auth := map[string]string{"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
	long := strings.Repeat("x", 251)

	tests := []struct {
		name   string
		method string
		path   string
		body   string
		header map[string]string
		status int
		field  string
	}{
		{"no api key", "POST", "/messages", `{"to":"+905551111111","content":"hi"}`, nil, 401, ""},
		{"wrong api key", "GET", "/messages", ``, map[string]string{"X-API-Key": "nope"}, 401, ""},
		{"malformed json", "POST", "/messages", `{"to":`, auth, 400, ""},
		{"unknown field", "POST", "/messages", `{"to":"+905551111111","content":"hi","priority":1}`, auth, 400, "priority"},
		{"wrong type", "POST", "/messages", `{"to":905551111111,"content":"hi"}`, auth, 400, "to"},
		{"missing to", "POST", "/messages", `{"content":"hi"}`, auth, 400, "to"},
		{"invalid to", "POST", "/messages", `{"to":"0555","content":"hi"}`, auth, 400, "to"},
		{"missing content", "POST", "/messages", `{"to":"+905551111111"}`, auth, 400, "content"},
		{"content too long", "POST", "/messages", `{"to":"+905551111111","content":"` + long + `"}`, auth, 400, "content"},
		{"sendAt in the past", "POST", "/messages", `{"to":"+905551111111","content":"hi","sendAt":"2020-01-01T00:00:00Z"}`, auth, 400, "sendAt"},
		{"bad sendAt", "POST", "/messages", `{"to":"+905551111111","content":"hi","sendAt":"tomorrow"}`, auth, 400, "sendAt"},
		{"oversize body", "POST", "/messages", `{"to":"+905551111111","content":"` + strings.Repeat("x", 1<<20) + `"}`, auth, 413, ""},
		{"unknown id", "GET", "/messages/0195f0a2-7b1c-7cde-8f00-123456789abc", ``, auth, 404, ""},
		{"malformed id", "GET", "/messages/not-an-id", ``, auth, 404, ""},
		{"bad status filter", "GET", "/messages?status=DONE", ``, auth, 400, "status"},
		{"limit too large", "GET", "/messages?limit=501", ``, auth, 400, "limit"},
		{"unknown route", "GET", "/nope", ``, auth, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := do(t, tt.method, api+tt.path, tt.body, tt.header)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q, want application/problem+json", ct)
			}
			var p problem
			if err := json.Unmarshal(b, &p); err != nil || p.Status != tt.status || p.Title == "" {
				t.Fatalf("not a problem document: %s", b)
			}
			if tt.field != "" && p.Field != tt.field {
				t.Fatalf("problem names field %q, want %q: %s", p.Field, tt.field, b)
			}
		})
	}
	if got := listAll(t, api, "", auth); len(got) != 0 {
		t.Fatalf("rejected requests stored %d messages", len(got))
	}

	// A path not in its clean form is redirected by a problem too, not by
	// the HTML of the mux that serves /metrics beside the API.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", api+"//messages", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode/100 != 3 || resp.Header.Get("Location") != "/messages" || ct != "application/problem+json" {
		t.Fatalf("GET //messages: %d %q to %q, want a problem redirecting to /messages", resp.StatusCode, ct, resp.Header.Get("Location"))
	}
	if resp, b := do(t, "GET", api+"/metrics", "", nil); resp.StatusCode != 200 || !strings.Contains(string(b), "rms_") {
		t.Fatalf("GET /metrics beside the API: %d %.200s", resp.StatusCode, b)
	}

	// GET /status needs no key.
	if resp, b := do(t, "GET", api+"/status", "", nil); resp.StatusCode != 200 {
		t.Fatalf("status without a key: %d %s", resp.StatusCode, b)
	}

	// Idempotency-Key: a repeat answers 200 with the original, a different
	// body under the same key 422.
	idem := map[string]string{"Authorization": "Bearer s3cret", "Content-Type": "application/json", "Idempotency-Key": "k-1"}
	first, b1 := do(t, "POST", api+"/messages", `{"to":"+905551111111","content":"once"}`, idem)
	again, b2 := do(t, "POST", api+"/messages", `{ "content":"once", "to":"+905551111111" }`, idem)
	other, b3 := do(t, "POST", api+"/messages", `{"to":"+905551111111","content":"twice"}`, idem)
	var m1, m2 struct{ ID string }
	_ = json.Unmarshal(b1, &m1)
	_ = json.Unmarshal(b2, &m2)
	if first.StatusCode != 202 || again.StatusCode != 200 || m1.ID == "" || m1.ID != m2.ID {
		t.Fatalf("idempotent repeat: %d %s / %d %s", first.StatusCode, b1, again.StatusCode, b2)
	}
	if other.StatusCode != 422 {
		t.Fatalf("same key, other body: %d %s", other.StatusCode, b3)
	}
	if got := listAll(t, api, "", auth); len(got) != 1 {
		t.Fatalf("%d messages stored, want 1", len(got))
	}
}

// TestKeylessAPIWarnsAndRefusesOtherSites: run with no API_KEY on an address
// other machines reach, the API says so in its log at start; and, served
// straight from its listener, it refuses what a web page on another site can
// send it (a request addressed to the page's own domain, rebound to this
// address, or one with the page's Origin), while it serves requests
// addressed to localhost or an IP address.
func TestKeylessAPIWarnsAndRefusesOtherSites(t *testing.T) {
	env := testenv.Env(t, nil)
	_, port, err := net.SplitHostPort(env["API_ADDR"])
	if err != nil {
		t.Fatal(err)
	}
	env["API_ADDR"] = "0.0.0.0:" + port
	out := &logbuf.Buffer{}
	_, _, stop := startRole(t, "api", env, out)
	defer stop()
	if !strings.Contains(out.String(), "API_KEY is empty and API_ADDR is not a loopback address") {
		t.Errorf("no warning at start about a keyless API on %s:\n%s", env["API_ADDR"], out)
	}

	send := func(method, path, host, origin string) int {
		t.Helper()
		req, err := http.NewRequest(method, "http://127.0.0.1:"+port+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, host, origin string
		want                       int
	}{
		{"POST", "/scheduler/stop", "attacker.example:" + port, "", http.StatusForbidden},
		{"GET", "/messages", "attacker.example:" + port, "", http.StatusForbidden},
		{"POST", "/scheduler/stop", "127.0.0.1:" + port, "https://attacker.example", http.StatusForbidden},
		{"GET", "/messages", "localhost:" + port, "", http.StatusOK},
		{"GET", "/scheduler", "127.0.0.1:" + port, "http://localhost:3000", http.StatusOK},
	} {
		if got := send(tc.method, tc.path, tc.host, tc.origin); got != tc.want {
			t.Errorf("%s %s to %s from %q: %d, want %d", tc.method, tc.path, tc.host, tc.origin, got, tc.want)
		}
	}
}
