package httpapi

import (
	"context"
	"log/slog"
	"net/http"
)

func handleSchedulerStart(log *slog.Logger, s Scheduler) http.Handler {
	return handleScheduler(log, func(ctx context.Context) (SchedulerStatus, error) { return s.Start(ctx) })
}

func handleSchedulerStop(log *slog.Logger, s Scheduler) http.Handler {
	return handleScheduler(log, func(ctx context.Context) (SchedulerStatus, error) { return s.Stop(ctx) })
}

func handleSchedulerStatus(log *slog.Logger, s Scheduler) http.Handler {
	return handleScheduler(log, func(ctx context.Context) (SchedulerStatus, error) { return s.Status(ctx) })
}

// handleScheduler answers 200 with the schedule's state after do.
func handleScheduler(log *slog.Logger, do func(context.Context) (SchedulerStatus, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := do(r.Context())
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, r, log, http.StatusOK, st)
	})
}
