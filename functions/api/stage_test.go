package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/core"
)

// TestPathPrefix: behind API Gateway's default endpoint, in every
// partition, a Location gets the stage in front. Behind a custom domain
// that maps the API under a base path, the base path API Gateway leaves in
// the request's path is stripped before routing and put in front of a
// Location; without a base path, or on a path outside it, both are left
// alone.
func TestPathPrefix(t *testing.T) {
	var routed string
	created := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		routed = r.URL.Path
		w.Header().Set("Location", "/messages/1")
		w.WriteHeader(http.StatusAccepted)
	})
	for _, tc := range []struct {
		host, basePath, path string
		routed, location     string
	}{
		{"abc123.execute-api.eu-west-1.amazonaws.com", "", "/messages", "/messages", "/v1/messages/1"},
		{"abc123.execute-api.cn-north-1.amazonaws.com.cn", "", "/messages", "/messages", "/v1/messages/1"},
		{"abc123.execute-api.eu-west-1.api.aws", "", "/messages", "/messages", "/v1/messages/1"},
		{"api.aws.example.org", "", "/messages", "/messages", "/messages/1"},
		{"abc123.execute-api.eu-west-1.amazonaws.com", "/api", "/messages", "/messages", "/v1/messages/1"},
		{"api.example.com", "", "/messages", "/messages", "/messages/1"},
		{"amazonaws.com.example.org", "", "/messages", "/messages", "/messages/1"},
		{"api.example.com", "/api", "/api/messages", "/messages", "/api/messages/1"},
		{"api.example.com", "/api/v1", "/api/v1/messages/x", "/messages/x", "/api/v1/messages/1"},
		{"api.example.com", "/api", "/api", "/", "/api/messages/1"},
		{"api.example.com", "/api", "/apix/messages", "/apix/messages", "/messages/1"},
	} {
		var ra core.RequestAccessor
		r, err := ra.EventToRequestWithContext(context.Background(), events.APIGatewayProxyRequest{
			HTTPMethod:     http.MethodPost,
			Path:           tc.path,
			RequestContext: events.APIGatewayProxyRequestContext{Stage: "v1", DomainName: tc.host},
		})
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		withPathPrefix(created, tc.basePath).ServeHTTP(w, r)
		if got := w.Header().Get("Location"); routed != tc.routed || got != tc.location {
			t.Errorf("%s%s with base path %q: routed %q with Location %q, want %q and %q", tc.host, tc.path, tc.basePath, routed, got, tc.routed, tc.location)
		}
	}
}
