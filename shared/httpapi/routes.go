package httpapi

import "net/http"

// Route is one route of the API, with the path written the way API Gateway
// and the SAM template write it ("/messages/{id}").
type Route struct {
	Method string
	Path   string
	// Public routes answer without the API key.
	Public bool
}

type route struct {
	Route
	handler http.Handler
}

// routes lists every route of the API. It is the only place a route is
// registered, and Routes derives the public list from it.
func routes(o Options) []route {
	return []route{
		{Route{http.MethodPost, "/messages", false}, handleCreateMessage(o.Logger, o.Messages, o.MaxBodyBytes)},
		{Route{http.MethodGet, "/messages", false}, handleListMessages(o.Logger, o.Messages)},
		{Route{http.MethodGet, "/messages/{id}", false}, handleGetMessage(o.Logger, o.Messages)},
		{Route{http.MethodPost, "/messages/{id}/retry", false}, handleRetryMessage(o.Logger, o.Messages)},
		{Route{http.MethodPost, "/dlq/replay", false}, handleReplay(o.Logger, o.Messages, o.MaxReplayBodyBytes)},
		{Route{http.MethodPost, "/scheduler/start", false}, handleSchedulerStart(o.Logger, o.Scheduler)},
		{Route{http.MethodPost, "/scheduler/stop", false}, handleSchedulerStop(o.Logger, o.Scheduler)},
		{Route{http.MethodGet, "/scheduler", false}, handleSchedulerStatus(o.Logger, o.Scheduler)},
		{Route{http.MethodGet, "/status", true}, handleStatus(o.Health, o.Logger, o.APIKey)},
		{Route{http.MethodGet, "/livez", true}, handleLivez(o.Health.Service)},
	}
}

// Routes returns every route NewServer serves, in the order routes.go lists
// them. Tests compare it with the API events of the SAM template.
func Routes() []Route {
	rs := routes(Options{})
	out := make([]Route, len(rs))
	for i, rt := range rs {
		out[i] = rt.Route
	}
	return out
}
