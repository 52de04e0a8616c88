// Package httpapi is the HTTP face of the system: the one http.Handler that
// local mode serves with net/http and the API Lambda serves through the API
// Gateway proxy adapter. Every route is listed in routes.go; every error
// leaves as an RFC 9457 application/problem+json document.
package httpapi

import (
	"log/slog"
	"net/http"
	"time"
)

// DefaultMaxBodyBytes is the largest request body accepted when
// Options.MaxBodyBytes is not set.
const DefaultMaxBodyBytes int64 = 16 << 10

// DefaultMaxReplayBodyBytes is the largest POST /dlq/replay body accepted
// when Options.MaxReplayBodyBytes is not set. A replay may list 1,000 ids,
// 38 bytes each when quoted: about 40 KB compact, and about 45 KB
// pretty-printed one id a line, which DefaultMaxBodyBytes would refuse.
const DefaultMaxReplayBodyBytes int64 = 64 << 10

// DefaultRequestTimeout bounds a request when Options.RequestTimeout is not
// set. It is a little above API Gateway's 29-second integration timeout, so
// in Lambda the deadline the function gives the request (2 s before its own)
// comes first, and locally a request whose store hangs ends about when it
// would have in AWS.
const DefaultRequestTimeout = 30 * time.Second

// Options are the dependencies and settings of the API server.
type Options struct {
	// Messages and Scheduler are required.
	Messages  Messages
	Scheduler Scheduler
	Health    Health
	// APIKey, when not empty, must be sent as "Authorization: Bearer <key>"
	// or "X-API-Key: <key>" on every route but GET /status and GET /livez.
	// When it is empty and the handler is served directly (ServedDirectly),
	// requests a web page on another site could make are refused instead.
	APIKey string
	// MaxBodyBytes bounds a request body (default DefaultMaxBodyBytes)
	// but POST /dlq/replay's.
	MaxBodyBytes int64
	// MaxReplayBodyBytes bounds the body of POST /dlq/replay (default
	// DefaultMaxReplayBodyBytes).
	MaxReplayBodyBytes int64
	// RequestTimeout is the deadline put on each request's context
	// (default DefaultRequestTimeout), so that a dependency that hangs
	// cannot hold a request, and its goroutine, forever.
	RequestTimeout time.Duration
	// Logger receives one line per request and the detail of every 5xx
	// (default slog.Default()).
	Logger *slog.Logger
	// Middleware wraps the router, first element outermost. It runs after
	// request IDs, logging and panic recovery, so what it answers is logged
	// and its panics become 500 problems. May be nil.
	Middleware []func(http.Handler) http.Handler
}

func (o *Options) setDefaults() {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxReplayBodyBytes <= 0 {
		o.MaxReplayBodyBytes = DefaultMaxReplayBodyBytes
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// NewServer returns the handler that serves every route of the API. It
// panics if o.Messages or o.Scheduler is nil: that is a wiring mistake that
// should stop the program at start, not surface as 500s later.
func NewServer(o Options) http.Handler {
	if o.Messages == nil {
		panic("httpapi: NewServer: Options.Messages is nil")
	}
	if o.Scheduler == nil {
		panic("httpapi: NewServer: Options.Scheduler is nil")
	}
	o.setDefaults()
	return newHandler(o, routes(o))
}

// NewStatusHandler returns a handler that serves GET /status and GET /livez
// alone, for a role (the processor, the publisher) that has no other HTTP
// routes. It logs to logger (slog.Default() if nil).
func NewStatusHandler(h Health, logger *slog.Logger) http.Handler {
	o := Options{Health: h, Logger: logger}
	o.setDefaults()
	var only []route
	for _, rt := range routes(o) {
		if rt.Method == http.MethodGet && (rt.Path == "/status" || rt.Path == "/livez") {
			only = append(only, rt)
		}
	}
	return newHandler(o, only)
}

// newHandler registers rs on a ServeMux and wraps it in the middleware every
// handler of this package shares.
func newHandler(o Options, rs []route) http.Handler {
	mux := http.NewServeMux()
	requireKey := requireAPIKey(o.APIKey)
	for _, rt := range rs {
		h := rt.handler
		if !rt.Public {
			h = requireKey(h)
		}
		mux.Handle(rt.Method+" "+rt.Path, h)
	}
	var h http.Handler = problemRouter(mux)
	for i := len(o.Middleware) - 1; i >= 0; i-- {
		if o.Middleware[i] != nil {
			h = o.Middleware[i](h)
		}
	}
	// Before the middleware: a request refused for its Host or Origin
	// does not count against the rate limit.
	h = guardKeyless(o.APIKey, h)
	h = withDeadline(o.RequestTimeout, h)
	h = recoverPanics(o.Logger, h)
	h = logRequests(o.Logger, h)
	h = withRequestID(h)
	return h
}
