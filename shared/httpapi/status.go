package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// CheckTimeout bounds each dependency check of GET /status.
const CheckTimeout = 2 * time.Second

// maxCheckErrorLength bounds the error text of a failed check, in characters.
const maxCheckErrorLength = 200

// The statuses of a health report and of each of its checks.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDown     = "down"
)

// CheckResult is the outcome of one check in a health report.
type CheckResult struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// checkLogEvery is how often a check that keeps failing is logged.
const checkLogEvery = time.Minute

// handleStatus runs every check at once, each bounded by CheckTimeout and
// the request's context, and answers the report: 200 when ok or degraded,
// 503 when a critical check failed. h.Info's fields are merged at the top
// level, but cannot replace service, status or checks. The route is public
// (load balancers and probes have no key), so a failed check's error text
// (host names, addresses, user names) goes only to a caller with the API
// key: to nobody when none is set, as in AWS, where API Gateway checks the
// keys and the function never sees them. Every failure is logged, at most
// once a minute per check, since probes call often.
func handleStatus(h Health, log *slog.Logger, apiKey string) http.Handler {
	matches := keyMatcher(apiKey)
	var mu sync.Mutex
	logged := map[string]time.Time{}
	logFailure := func(name, err string) {
		mu.Lock()
		now := time.Now()
		due := now.Sub(logged[name]) >= checkLogEvery
		if due {
			logged[name] = now
		}
		mu.Unlock()
		if due {
			log.Warn("status check failed", "check", name, "error", err)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reveal := apiKey != "" && hasKey(matches, r)
		ctx := r.Context()
		results := make([]CheckResult, len(h.Checks))
		done := make(chan struct{}, len(h.Checks))
		for i, c := range h.Checks {
			go func() {
				defer func() { done <- struct{}{} }()
				results[i] = RunCheck(ctx, c)
			}()
		}
		for range h.Checks {
			<-done
		}

		overall := HealthOK
		checks := make(map[string]CheckResult, len(h.Checks))
		for i, c := range h.Checks {
			if results[i].Status != HealthOK {
				logFailure(c.Name, results[i].Error)
				if !reveal {
					results[i].Error = ""
				}
				if c.Critical {
					overall = HealthDown
				} else if overall == HealthOK {
					overall = HealthDegraded
				}
			}
			checks[c.Name] = results[i]
		}

		report := map[string]any{}
		if h.Info != nil {
			// Bounded like a check: a database that hangs must not hold
			// up the answer that says so.
			infoCtx, cancel := context.WithTimeout(ctx, CheckTimeout)
			info := h.Info(infoCtx)
			cancel()
			for k, v := range info {
				report[k] = v
			}
		}
		report["service"] = h.Service
		report["status"] = overall
		report["checks"] = checks

		code := http.StatusOK
		if overall == HealthDown {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, r, nil, code, report)
	})
}

// handleLivez answers that the process is alive and serving HTTP, and
// nothing more: it calls no dependency. GET /status is readiness, and says
// 503 while MongoDB or RabbitMQ is down; a liveness probe that read it
// would restart a healthy process for an outage a restart cannot fix.
func handleLivez(service string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, r, nil, http.StatusOK, map[string]string{"service": service, "status": HealthOK})
	})
}

// RunCheck runs c with a deadline and returns even if c ignores it: the
// check goes on in the background and its late answer is dropped. A
// panicking check is a failed check, not a crashed process.
func RunCheck(ctx context.Context, c Check) CheckResult {
	if c.Check == nil {
		return CheckResult{Status: HealthDown, Error: "no check function"}
	}
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				errc <- fmt.Errorf("check panicked: %v", v)
			}
		}()
		errc <- c.Check(ctx)
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		// CheckTimeout passed, or the request's own deadline did.
		err = fmt.Errorf("no answer in time: %w", ctx.Err())
	}
	if err == nil {
		return CheckResult{Status: HealthOK}
	}
	return CheckResult{Status: HealthDown, Error: truncate(err.Error(), maxCheckErrorLength)}
}

// truncate cuts s to at most n characters, on a character boundary.
func truncate(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}
