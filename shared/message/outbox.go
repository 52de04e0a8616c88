package message

import (
	"fmt"
	"time"
)

// OutboxEntry is one dispatch of a message: waiting to be published
// (PublishedAt nil) or published and waiting for its outcome. Its key is
// "<message id>:<seq>", so every dispatch is a new document: a late write
// about an old dispatch (a publisher marking it published after the processor
// already moved the message on) finds nothing to change.
//
// The outbox holds only pending and in-flight work, never history, so a scan
// of it stays small: on the embedded MongoDB (FerretDB) every filter other
// than _id equality is a full scan, so this collection must not grow with
// the number of messages ever sent.
type OutboxEntry struct {
	Key         string     `bson:"_id"`
	MessageID   string     `bson:"messageId"`
	Seq         int        `bson:"seq"`
	DueAt       time.Time  `bson:"dueAt"`
	PublishedAt *time.Time `bson:"publishedAt,omitempty"`
	CreatedAt   time.Time  `bson:"createdAt"`
	// FastPath marks the entry of the API's fast path, stored as published
	// just before it is published: a crash in between leaves it published
	// in name only, so its first stale recovery counts no attempt.
	FastPath bool `bson:"fastPath,omitempty"`
}

// OutboxKey returns the key of dispatch seq of message id.
func OutboxKey(id string, seq int) string { return fmt.Sprintf("%s:%d", id, seq) }

// NewOutboxEntry returns the pending entry for dispatch seq of message id.
func NewOutboxEntry(id string, seq int, dueAt, now time.Time) OutboxEntry {
	return OutboxEntry{Key: OutboxKey(id, seq), MessageID: id, Seq: seq, DueAt: dueAt, CreatedAt: now}
}

// Outcome is the recorded result of one dispatch of a message. A store
// applies it only if the message is still at Seq, so an outcome about an old
// dispatch never overwrites a newer one.
type Outcome struct {
	MessageID string
	Seq       int
	// Status is SENT, FAILED, or UNSENT to put the message back in the outbox
	// (a retry, or a wait for the circuit breaker or rate limiter).
	Status   Status
	Attempts int
	At       time.Time
	// NextAttemptAt is when the new outbox entry falls due (UNSENT only).
	NextAttemptAt    *time.Time
	LastError        string
	FailureReason    string
	WebhookMessageID string
	// Delivery, if set, is appended to the message's delivery log.
	Delivery *Delivery
	// MergeRepeat lets Delivery replace the log's last entry, counting it
	// again (Delivery.Times), when it repeats it: a message deferred each
	// cool-down of a long outage would otherwise push its real attempts
	// out of the log's last MaxDeliveries entries.
	MergeRepeat bool
	// Replay marks the operator's replay of a FAILED message, the only
	// outcome that may move a message out of FAILED.
	Replay bool
	// Read, if set, is the message as the caller read it after taking its
	// inbox claim; only the claim holder may set it. A store without atomic
	// conditional updates (the embedded MongoDB) checks Seq and status
	// against it instead of reading the message again: the other writers
	// of a claimed message's dispatch (a consumer deferring a redelivered
	// copy, the stale sweep) read it afresh, and a SENT from the claim
	// holder is the outcome to keep. A real MongoDB checks atomically and
	// ignores it.
	Read *Message
}

// ErrKeyInUse is returned for an Idempotency-Key another request holds:
// the first request with it, still running, or another repeat taking over
// the same expired key.
var ErrKeyInUse = &Error{Code: EINPROGRESS, Field: "Idempotency-Key", Message: "is in use by a request still being processed"}

// ErrReplayed is returned when another request is replaying the same
// failure of a message.
var ErrReplayed = &Error{Code: ECONFLICT, Message: "the message is being retried by another request; read it again"}

// ErrStaleOutcome is returned when an outcome's Seq is no longer the
// message's current dispatch: somebody else already moved it on.
var ErrStaleOutcome = &Error{Code: ECONFLICT, Message: "message moved on to a newer dispatch"}

// IdempotencyRecord ties a client's Idempotency-Key to the message its first
// request created. It is inserted before the message, under a unique _id:
// the only write the embedded MongoDB makes atomic.
type IdempotencyRecord struct {
	Key         string    `bson:"_id"`
	RequestHash string    `bson:"requestHash"`
	MessageID   string    `bson:"messageId"`
	CreatedAt   time.Time `bson:"createdAt"`
	// Abandoned says the request that put the record has ended without
	// storing its message (it answered 503): a repeat need not wait out the
	// in-progress window before it takes the key over.
	Abandoned bool `bson:"abandoned,omitempty"`
}

// SchedulerState is whether the outbox publisher runs.
type SchedulerState string

// The two scheduler states.
const (
	SchedulerStarted SchedulerState = "started"
	SchedulerStopped SchedulerState = "stopped"
)

// DeadLetter is the notification sent to the dead-letter queue. For a queue
// message that could not be decoded, MessageID may be empty and Body holds
// the raw payload.
type DeadLetter struct {
	MessageID string    `json:"messageId,omitempty"`
	Reason    string    `json:"reason"`
	LastError string    `json:"lastError,omitempty"`
	Attempts  int       `json:"attempts"`
	FailedAt  time.Time `json:"failedAt"`
	Body      string    `json:"body,omitempty"`
}

// WebhookResponse is the webhook's answer to one delivery.
type WebhookResponse struct {
	StatusCode int
	// MessageID is the "messageId" of a JSON answer, if any.
	MessageID string
	// RetryAfter is the parsed Retry-After header (0 if none).
	RetryAfter time.Duration
	Duration   time.Duration
	// Body is the start of an answer other than 2xx, for the delivery log:
	// what the receiver said was wrong.
	Body string
}

// ReplayRequest selects FAILED messages to put back in the outbox with a
// fresh attempt budget: the listed IDs, or every message failed at or after
// Since (every failed message when both are empty).
type ReplayRequest struct {
	Since  *time.Time `json:"since,omitempty"`
	IDs    []string   `json:"ids,omitempty"`
	DryRun bool       `json:"dryRun,omitempty"`
}

// ReplayResult says what a replay matched and did.
type ReplayResult struct {
	DryRun   bool     `json:"dryRun"`
	Matched  int      `json:"matched"`
	Replayed int      `json:"replayed"`
	IDs      []string `json:"ids"`
	// More says the call stopped before its request's deadline with
	// messages left to look at: the caller repeats it for the rest.
	More bool `json:"more"`
}

// FailedRecord indexes one FAILED message: the dead-letter set, kept apart
// from the messages so that counting and replaying failures never scans
// the whole history.
type FailedRecord struct {
	MessageID string    `bson:"_id"`
	FailedAt  time.Time `bson:"failedAt"`
	Reason    string    `bson:"reason"`
}

// FailedRecord is the failed index's entry for o, a FAILED outcome.
func (o Outcome) FailedRecord() FailedRecord {
	return FailedRecord{MessageID: o.MessageID, FailedAt: o.At, Reason: o.FailureReason}
}

// FailedRecord is the failed index's entry for m, a FAILED message.
func (m Message) FailedRecord() FailedRecord {
	return FailedRecord{MessageID: m.ID, FailedAt: m.UpdatedAt, Reason: m.FailureReason}
}

// OutcomeReplayed marks a replay in the delivery log.
const OutcomeReplayed = "replayed"
