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

// statusJoinable is how long after its start a run of the checks still
// going is joined rather than replaced. A run ends within CheckTimeout,
// which bounds every check and Info; a run older than that was frozen with
// its process (a Lambda execution environment between two invocations) and
// would report the length of the freeze as timeouts.
const statusJoinable = CheckTimeout + time.Second

// handleStatus answers the health report: 200 when ok or degraded, 503 when
// a critical check failed. h.Info's fields are merged at the top level, but
// cannot replace service, status or checks.
//
// The checks and Info run at once, each bounded by CheckTimeout, and their
// results answer every request that comes while they run (see statusRuns):
// the route needs no key, and a flood of calls must not become a flood of
// calls to every dependency. A request whose context ends first reports the
// checks not finished by then as down. The route is public
// (load balancers and probes have no key), so a failed check's error text
// (host names, addresses, user names) goes only to a caller with the API
// key: to nobody when none is set, as in AWS, where API Gateway checks the
// keys and the function never sees them. Any other caller gets the same
// report whatever key it sends: the statuses, never the text. (RateLimit
// counts a GET /status that sends a key, so that keys cannot be guessed
// here faster than on the other routes.) Every failure is logged, at most
// once a minute per check, since probes call often.
func handleStatus(h Health, log *slog.Logger, apiKey string) http.Handler {
	matches := keyMatcher(apiKey)
	runs := &statusRuns{health: h}
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
		results, info := runs.get().wait(r.Context())

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

		report := make(map[string]any, len(info)+3)
		for k, v := range info {
			report[k] = v
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

// statusRuns shares runs of a Health's checks between the requests for its
// report that come while they run. A request that comes after a run ended
// starts a new one rather than take its results, so that a client that
// calls again after a change (a dependency back up) sees it. A flood is
// bounded all the same: requests that come at once make one run, not one
// each.
type statusRuns struct {
	health Health
	mu     sync.Mutex
	last   *statusRun
}

// statusRun is one run of the checks and Info. Its fields are written once,
// by the goroutine that runs each, before it closes the matching channel.
type statusRun struct {
	start    time.Time // wall clock (see statusRuns.get)
	results  []CheckResult
	done     []chan struct{} // done[i] is closed when results[i] is set
	info     map[string]any
	infoDone chan struct{}
}

// ended reports whether every check and Info of the run have finished: from
// then on a request that comes must start a new run. (A request that has
// just had its answer must never be the last to see the run going: the
// client's next call would get the same results.)
func (run *statusRun) ended() bool {
	for _, d := range run.done {
		if !closed(d) {
			return false
		}
	}
	return closed(run.infoDone)
}

// statusJoined, when set (by the tests), is called with each request that
// has its run.
var statusJoined func()

// get returns the run a request reports: the last one if it is still going
// and started less than statusJoinable ago, otherwise a new one, started
// now. Ages are measured on the wall clock, which goes on while a Lambda
// execution environment is frozen (a monotonic clock may not); one that
// went back starts a new run.
func (s *statusRuns) get() *statusRun {
	now := time.Now().Round(0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if statusJoined != nil {
		defer statusJoined()
	}
	if run := s.last; run != nil && !run.ended() {
		if age := now.Sub(run.start); age >= 0 && age < statusJoinable {
			return run
		}
	}
	s.last = s.health.run(now)
	return s.last
}

// run starts the checks and Info, each in its own goroutine and on a
// context of its own: a run answers other requests too, so the end of the
// request that started it must not cut it short.
func (h Health) run(start time.Time) *statusRun {
	run := &statusRun{
		start:    start,
		results:  make([]CheckResult, len(h.Checks)),
		done:     make([]chan struct{}, len(h.Checks)),
		infoDone: make(chan struct{}),
	}
	for i, c := range h.Checks {
		run.done[i] = make(chan struct{})
		go func() {
			defer close(run.done[i])
			run.results[i] = RunCheck(context.Background(), c)
		}()
	}
	go func() {
		defer close(run.infoDone)
		if h.Info != nil {
			// Bounded like a check: a database that hangs must not
			// hold up the answer that says so.
			ctx, cancel := context.WithTimeout(context.Background(), CheckTimeout)
			defer cancel()
			run.info = h.Info(ctx)
		}
	}()
	return run
}

// wait returns the results of the run, and its Info, for a request whose
// context is ctx: a check not finished when ctx ends is down, and Info not
// finished then is left out. The results are the caller's own copy.
func (run *statusRun) wait(ctx context.Context) ([]CheckResult, map[string]any) {
	results := make([]CheckResult, len(run.results))
	for i, d := range run.done {
		select {
		case <-d:
		case <-ctx.Done():
		}
		if closed(d) {
			results[i] = run.results[i]
		} else {
			results[i] = CheckResult{Status: HealthDown, Error: fmt.Sprintf("no answer in time: %v", ctx.Err())}
		}
	}
	select {
	case <-run.infoDone:
	case <-ctx.Done():
	}
	if !closed(run.infoDone) {
		return results, nil
	}
	return results, run.info
}

// closed reports whether c is closed, without waiting.
func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
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
