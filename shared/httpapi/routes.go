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
		{Route{http.MethodPost, "/messages", false}, noQuery(handleCreateMessage(o.Logger, o.Messages, o.MaxBodyBytes))},
		{Route{http.MethodGet, "/messages", false}, handleListMessages(o.Logger, o.Messages)},
		{Route{http.MethodGet, "/messages/{id}", false}, noQuery(handleGetMessage(o.Logger, o.Messages))},
		{Route{http.MethodPost, "/messages/{id}/retry", false}, noQuery(handleRetryMessage(o.Logger, o.Messages))},
		{Route{http.MethodPost, "/dlq/replay", false}, handleReplay(o.Logger, o.Messages, o.MaxReplayBodyBytes)},
		{Route{http.MethodPost, "/scheduler/start", false}, noQuery(handleSchedulerStart(o.Logger, o.Scheduler))},
		{Route{http.MethodPost, "/scheduler/stop", false}, noQuery(handleSchedulerStop(o.Logger, o.Scheduler))},
		{Route{http.MethodGet, "/scheduler", false}, noQuery(handleSchedulerStatus(o.Logger, o.Scheduler))},
		{Route{http.MethodGet, "/status", true}, handleStatus(o.Health, o.Logger, o.APIKey)},
		{Route{http.MethodGet, "/livez", true}, handleLivez(o.Health.Service)},
	}
}

// noQuery refuses a request to h whose URL has a query string: the route
// takes no parameter, and one given, misspelt or meant for another route,
// must not be ignored without a word. (GET /messages and POST /dlq/replay
// check theirs; the probes' routes ignore any, as probes may add their own.)
func noQuery(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := queryParams(w, r); ok {
			h.ServeHTTP(w, r)
		}
	})
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
