package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/core"
)

// TestStagePrefix: behind API Gateway's default endpoint, in every
// partition, a Location gets the stage in front; behind a custom domain it
// is left alone.
func TestStagePrefix(t *testing.T) {
	created := withStagePrefix(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/messages/1")
		w.WriteHeader(http.StatusAccepted)
	}))
	for host, want := range map[string]string{
		"abc123.execute-api.eu-west-1.amazonaws.com":     "/v1/messages/1",
		"abc123.execute-api.cn-north-1.amazonaws.com.cn": "/v1/messages/1",
		"api.example.com":           "/messages/1",
		"amazonaws.com.example.org": "/messages/1",
	} {
		var ra core.RequestAccessor
		r, err := ra.EventToRequestWithContext(context.Background(), events.APIGatewayProxyRequest{
			HTTPMethod:     http.MethodPost,
			Path:           "/messages",
			RequestContext: events.APIGatewayProxyRequestContext{Stage: "v1", DomainName: host},
		})
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		created.ServeHTTP(w, r)
		if got := w.Header().Get("Location"); got != want {
			t.Errorf("host %s: Location %q, want %q", host, got, want)
		}
	}
}
