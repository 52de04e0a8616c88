package httpapi

import (
	"context"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Messages is what the API does with messages. Errors are *message.Error
// where a client should see them (EINVALID with a Field, ENOTFOUND,
// EMISMATCH, EINPROGRESS, ECONFLICT, EUNAVAILABLE); anything else is a 500
// whose detail is not shown.
type Messages interface {
	// Create validates req, stores the message durably and, if the
	// scheduler is started, publishes it right away. With a non-empty
	// idempotencyKey, a repeat of the same request returns the original
	// message and replayed true; the same key with a different request is
	// EMISMATCH; the same key while the first request is still running is
	// EINPROGRESS.
	Create(ctx context.Context, req message.CreateRequest, idempotencyKey string) (m message.Message, replayed bool, err error)
	Get(ctx context.Context, id string) (message.Message, error)
	List(ctx context.Context, f message.Filter) (message.Page, error)
	// Retry puts one FAILED message back in the outbox with a fresh attempt
	// budget; ECONFLICT if it is not FAILED.
	Retry(ctx context.Context, id string) (message.Message, error)
	// Replay does the same for many FAILED messages (or counts them, for a
	// dry run).
	Replay(ctx context.Context, req message.ReplayRequest) (message.ReplayResult, error)
}

// SchedulerStatus is the state of the outbox publisher's schedule.
type SchedulerStatus struct {
	State     message.SchedulerState `json:"state"`
	UpdatedAt *time.Time             `json:"updatedAt,omitempty"`
	// Backend says where the state lives: "mongodb" in local mode,
	// "eventbridge-scheduler" in Lambda.
	Backend string `json:"backend"`
	// Schedule names the EventBridge schedule, if any.
	Schedule string `json:"schedule,omitempty"`
}

// Scheduler starts, stops and reads the outbox publisher's schedule. Start
// and Stop are idempotent.
type Scheduler interface {
	Status(ctx context.Context) (SchedulerStatus, error)
	Start(ctx context.Context) (SchedulerStatus, error)
	Stop(ctx context.Context) (SchedulerStatus, error)
}

// Check is one dependency of a health report.
type Check struct {
	Name string
	// Critical dependencies (MongoDB, RabbitMQ) make the service "down"
	// when they fail; others (Redis) make it "degraded".
	Critical bool
	Check    func(ctx context.Context) error
}

// Health describes what GET /status reports.
type Health struct {
	Service string
	Checks  []Check
	// Info adds role-specific facts (the processor's breaker and consumer
	// state) to the report. May be nil.
	Info func(ctx context.Context) map[string]any
}
