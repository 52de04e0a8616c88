package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/core"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// deadlineReserve is how long before the invocation's deadline the request
// given to the handler runs out. At the deadline itself (the function's
// Timeout, 29 s, API Gateway's own limit) Lambda ends the function without a
// word: the 503 problem with Retry-After that the handler answers when a
// hanging dependency runs its request's context out is never returned, API
// Gateway answers its bare 504 instead, and Lambda resets the execution
// environment, so the next request pays a cold start. Two seconds leave
// time to write the problem, return it through the adapter and flush the
// invocation's metrics.
const deadlineReserve = 2 * time.Second

// proxy returns the function's handler: each API Gateway event becomes a
// request to h, and h's answer the event's response.
//
// The request's context runs out deadlineReserve before the invocation's,
// so that h answers before Lambda ends the function. The request's
// X-Request-Id is API Gateway's request ID when the client sent none that
// the API keeps, so that API Gateway's own error documents ("requestId")
// and the function's answers and logs name a request alike.
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
		if deadline, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline.Add(-deadlineReserve))
			defer cancel()
		}
		var r *http.Request
		err := checkRequestLine(ev)
		if err == nil {
			r, err = ra.EventToRequestWithContext(ctx, ev)
		}
		if err != nil {
			// A *url.Error repeats the whole URL, query string included,
			// which this function's logs leave out; its cause names the
			// bad part.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			log.WarnContext(ctx, "API Gateway event is not a valid HTTP request",
				"method", ev.HTTPMethod,
				"api_request_id", ev.RequestContext.RequestID,
				"error", err.Error(),
			)
			return unreadableRequest(ev.RequestContext.RequestID), nil
		}
		if id := ev.RequestContext.RequestID; !httpapi.ValidRequestID(r.Header.Get(httpapi.RequestIDHeader)) && httpapi.ValidRequestID(id) {
			r.Header.Set(httpapi.RequestIDHeader, id)
		}
		w := core.NewProxyResponseWriter()
		h.ServeHTTP(w, r)
		return w.GetProxyResponse()
	}
}

// checkRequestLine makes the request the adapter would make of ev's method
// and path, without its query string, headers or body, and returns its
// error. The adapter prints the error of a request it cannot make, with the
// whole URL and its query string, to standard output, outside this
// function's logs and their rule that no query string is logged: such an
// event must not reach it. The query string it builds itself, escaping
// each parameter, so it cannot make a request fail.
func checkRequestLine(ev events.APIGatewayProxyRequest) error {
	path := ev.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	_, err := http.NewRequest(strings.ToUpper(ev.HTTPMethod), "https://api.invalid"+path, nil)
	return err
}

// unreadableRequest is the 400 problem for an event that is not a valid
// HTTP request. Its detail is fixed: the parser's error would echo parts of
// the request back. It carries API Gateway's request ID, as the log line
// does, so that the two can be tied together.
func unreadableRequest(requestID string) events.APIGatewayProxyResponse {
	if !httpapi.ValidRequestID(requestID) {
		requestID = ""
	}
	body, _ := json.Marshal(httpapi.Problem{ // A Problem always encodes.
		Type:      "about:blank",
		Title:     http.StatusText(http.StatusBadRequest),
		Status:    http.StatusBadRequest,
		Detail:    "the request could not be read: its method, path or query string is malformed, or its body is marked base64 and is not",
		RequestID: requestID,
	})
	headers := map[string][]string{
		"Content-Type":           {"application/problem+json"},
		"X-Content-Type-Options": {"nosniff"},
		"Cache-Control":          {"no-store"},
	}
	if requestID != "" {
		headers[httpapi.RequestIDHeader] = []string{requestID}
	}
	return events.APIGatewayProxyResponse{
		StatusCode:        http.StatusBadRequest,
		MultiValueHeaders: headers,
		Body:              string(body) + "\n",
	}
}
