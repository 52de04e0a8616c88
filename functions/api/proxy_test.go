package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// TestProxyAnswersUnreadableEventsWithAProblem: an event that is no valid
// HTTP request gets a 400 problem and no error (an error would reach the
// client as API Gateway's bare 502), and nothing of the request reaches the
// log but its method, neither the function's nor what the adapter prints
// itself (the standard log package and standard output); a valid event is
// served by the handler as before.
func TestProxyAnswersUnreadableEventsWithAProblem(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "events", "api-status.json"))
	if err != nil {
		t.Fatal(err)
	}
	var status events.APIGatewayProxyRequest
	if err := json.Unmarshal(raw, &status); err != nil {
		t.Fatalf("events/api-status.json: %v", err)
	}
	var logs bytes.Buffer
	handle := proxy(httpapi.NewStatusHandler(httpapi.Health{Service: "api"}, nil), slog.New(slog.NewJSONHandler(&logs, nil)))

	resp, err := handle(context.Background(), status)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(resp.Body, `"status":"ok"`) {
		t.Fatalf("GET /status: %d %q, %v; want 200 with the report", resp.StatusCode, resp.Body, err)
	}

	const secret = "+905551111111"
	for _, tc := range []struct {
		name string
		edit func(ev *events.APIGatewayProxyRequest)
	}{
		{"bad escape in the path", func(ev *events.APIGatewayProxyRequest) { ev.Path = "/messages/%zz" }},
		{"bad escape with a query", func(ev *events.APIGatewayProxyRequest) {
			ev.Path = "/messages/%zz"
			ev.MultiValueQueryStringParameters = map[string][]string{"to": {secret}}
		}},
		{"body marked base64 that is not", func(ev *events.APIGatewayProxyRequest) {
			ev.HTTPMethod, ev.Path, ev.Body, ev.IsBase64Encoded = http.MethodPost, "/messages", "not base64!", true
		}},
		{"invalid method", func(ev *events.APIGatewayProxyRequest) { ev.HTTPMethod = "GET /" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs.Reset()
			ev := status
			tc.edit(&ev)
			stopCapture := capturePrints(t)
			resp, err := handle(context.Background(), ev)
			printed := stopCapture()
			if err != nil {
				t.Fatalf("error %v: API Gateway would answer 502", err)
			}
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400; body %q", resp.StatusCode, resp.Body)
			}
			if ct := http.Header(resp.MultiValueHeaders).Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type = %q, want application/problem+json", ct)
			}
			var p httpapi.Problem
			dec := json.NewDecoder(strings.NewReader(resp.Body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&p); err != nil {
				t.Fatalf("body %q: %v", resp.Body, err)
			}
			if p.Type == "" || p.Title == "" || p.Status != http.StatusBadRequest || p.Detail == "" {
				t.Errorf("incomplete problem: %+v", p)
			}
			id := ev.RequestContext.RequestID
			if got := http.Header(resp.MultiValueHeaders).Get(httpapi.RequestIDHeader); id == "" || p.RequestID != id || got != id {
				t.Errorf("request ID: %q in the problem, %q in the header; want API Gateway's %q, which the log line has", p.RequestID, got, id)
			}
			if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), strings.TrimPrefix(secret, "+")) {
				t.Errorf("the log holds the query string: %s", logs.String())
			}
			if strings.Contains(printed, strings.TrimPrefix(secret, "+")) || strings.Contains(printed, "%zz") {
				t.Errorf("the adapter printed the request: %q", printed)
			}
			if !strings.Contains(logs.String(), "not a valid HTTP request") {
				t.Errorf("the refusal is not logged: %q", logs.String())
			}
		})
	}
}

// TestProxyAnswersBeforeTheInvocationDeadline: a handler whose dependency
// hangs until the request's context runs out gets to return its 503 problem
// well before the invocation's deadline, when Lambda would end the function
// and API Gateway answer 504 in its place.
func TestProxyAnswersBeforeTheInvocationDeadline(t *testing.T) {
	hung := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		w.Header().Set("Content-Type", "application/problem+json")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"type":"about:blank","title":"Service Unavailable","status":503}` + "\n"))
	})
	handle := proxy(hung, slog.New(slog.DiscardHandler))
	deadline := time.Now().Add(4 * time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	resp, err := handle(ctx, events.APIGatewayProxyRequest{HTTPMethod: http.MethodGet, Path: "/messages"})
	left := time.Until(deadline)
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || http.Header(resp.MultiValueHeaders).Get("Retry-After") == "" {
		t.Fatalf("answer %d %v %q, %v; want the handler's 503 with Retry-After", resp.StatusCode, resp.MultiValueHeaders, resp.Body, err)
	}
	if left < time.Second {
		t.Fatalf("the answer came %s before the invocation's deadline, want at least 1s: Lambda would have ended the function first", left)
	}

	// Without a deadline (not in Lambda), the request gets none either.
	var hasDeadline bool
	handle = proxy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, hasDeadline = r.Context().Deadline()
		w.WriteHeader(http.StatusNoContent)
	}), slog.New(slog.DiscardHandler))
	if _, err := handle(context.Background(), events.APIGatewayProxyRequest{HTTPMethod: http.MethodGet, Path: "/status"}); err != nil || hasDeadline {
		t.Fatalf("without an invocation deadline: err %v, request deadline %t; want none", err, hasDeadline)
	}
}

// TestProxyUsesTheGatewayRequestID: a request whose client sent no usable
// X-Request-Id carries API Gateway's request ID, the one its own error
// documents give, and answers with it; a client's usable ID still wins.
func TestProxyUsesTheGatewayRequestID(t *testing.T) {
	handle := proxy(httpapi.NewStatusHandler(httpapi.Health{Service: "api"}, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		name, header, gateway string
		want                  string // "" for a fresh ID, neither the client's nor the gateway's
	}{
		{"no header", "", "abc-123", "abc-123"},
		{"client's ID", "client-7", "abc-123", "client-7"},
		{"client's ID unusable", "evil id", "abc-123", "abc-123"},
		{"gateway's ID unusable", "", "bad id\n", ""},
		{"no gateway ID", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := events.APIGatewayProxyRequest{
				HTTPMethod:     http.MethodGet,
				Path:           "/status",
				RequestContext: events.APIGatewayProxyRequestContext{RequestID: tc.gateway},
			}
			if tc.header != "" {
				ev.MultiValueHeaders = map[string][]string{"X-Request-Id": {tc.header}}
			}
			resp, err := handle(context.Background(), ev)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /status: %d %q, %v", resp.StatusCode, resp.Body, err)
			}
			got := http.Header(resp.MultiValueHeaders).Get("X-Request-Id")
			if tc.want != "" && got != tc.want {
				t.Fatalf("X-Request-Id = %q, want %q", got, tc.want)
			}
			if tc.want == "" && (got == "" || got == tc.header || got == tc.gateway) {
				t.Fatalf("X-Request-Id = %q, want a fresh one", got)
			}
		})
	}
}

// capturePrints sends what the standard log package and standard output
// receive to a buffer until the returned function is called. That function
// puts both back and returns everything they received: it closes the pipe
// that stands in for standard output and reads it to the end, so a check of
// what was printed never runs before the last write has been read.
func capturePrints(t *testing.T) (stop func() string) {
	t.Helper()
	var logged bytes.Buffer
	logOut := log.Writer()
	log.SetOutput(&logged)
	r, w, err := os.Pipe()
	if err != nil {
		log.SetOutput(logOut)
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(&out, r) // until w is closed and everything is read
	}()
	var once sync.Once
	var printed string
	stop = func() string {
		once.Do(func() {
			os.Stdout = stdout
			log.SetOutput(logOut)
			_ = w.Close()
			<-done
			_ = r.Close()
			printed = logged.String() + out.String()
		})
		return printed
	}
	// A test that fails before it calls stop still gets its outputs back.
	t.Cleanup(func() { stop() })
	return stop
}
