package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// TestProxyAnswersUnreadableEventsWithAProblem: an event that is no valid
// HTTP request gets a 400 problem and no error (an error would reach the
// client as API Gateway's bare 502), and nothing of the request reaches the
// log but its method; a valid event is served by the handler as before.
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
			resp, err := handle(context.Background(), ev)
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
			if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), strings.TrimPrefix(secret, "+")) {
				t.Errorf("the log holds the query string: %s", logs.String())
			}
			if !strings.Contains(logs.String(), "not a valid HTTP request") {
				t.Errorf("the refusal is not logged: %q", logs.String())
			}
		})
	}
}
