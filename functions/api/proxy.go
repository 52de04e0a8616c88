package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/core"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// proxy returns the function's handler: each API Gateway event becomes a
// request to h, and h's answer the event's response.
//
// The adapter's own ProxyWithContext answers an event it cannot turn into a
// request (a path with a bad escape such as /messages/%zz, a body marked
// base64 that is not) with an error, which API Gateway shows the client as a
// bare 502. It is the client's request that is wrong, so proxy answers 400
// with a problem document like every other error of the API, and returns no
// error: the function did its job.
func proxy(h http.Handler, log *slog.Logger) func(context.Context, events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
	var ra core.RequestAccessor
	return func(ctx context.Context, ev events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
		r, err := ra.EventToRequestWithContext(ctx, ev)
		if err != nil {
			// A *url.Error repeats the whole URL, query string included,
			// which this function's logs leave out; its cause names the
			// bad part. (The adapter prints the URL to stderr itself.)
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			log.WarnContext(ctx, "API Gateway event is not a valid HTTP request",
				"method", ev.HTTPMethod,
				"api_request_id", ev.RequestContext.RequestID,
				"error", err.Error(),
			)
			return unreadableRequest(), nil
		}
		w := core.NewProxyResponseWriter()
		h.ServeHTTP(w, r)
		return w.GetProxyResponse()
	}
}

// unreadableRequest is the 400 problem for an event that is not a valid
// HTTP request. Its detail is fixed: the parser's error would echo parts of
// the request back.
func unreadableRequest() events.APIGatewayProxyResponse {
	body, _ := json.Marshal(httpapi.Problem{ // A Problem always encodes.
		Type:   "about:blank",
		Title:  http.StatusText(http.StatusBadRequest),
		Status: http.StatusBadRequest,
		Detail: "the request could not be read: its method, path or query string is malformed, or its body is marked base64 and is not",
	})
	return events.APIGatewayProxyResponse{
		StatusCode: http.StatusBadRequest,
		MultiValueHeaders: map[string][]string{
			"Content-Type":           {"application/problem+json"},
			"X-Content-Type-Options": {"nosniff"},
			"Cache-Control":          {"no-store"},
		},
		Body: string(body) + "\n",
	}
}
