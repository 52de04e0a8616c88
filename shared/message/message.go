// Package message holds the domain of the system: a message, its status and
// the rules for moving between statuses, validation of what a client sends,
// the retry schedule and the error codes every other package speaks. It
// imports nothing of this module, so every adapter and role can depend on it.
package message

import (
	"slices"
	"time"
)

// Status is where a message is in its life.
type Status string

// The statuses of the seed. A message waiting for a later time (its sendAt or
// its next attempt) is StatusUnsent with NextAttemptAt set: it is back in the
// outbox, and nothing else holds a live copy of it.
const (
	StatusUnsent     Status = "UNSENT"
	StatusProcessing Status = "PROCESSING"
	StatusSent       Status = "SENT"
	StatusFailed     Status = "FAILED"
)

// Valid reports whether s is one of the four statuses.
func (s Status) Valid() bool {
	switch s {
	case StatusUnsent, StatusProcessing, StatusSent, StatusFailed:
		return true
	}
	return false
}

// Final reports whether no further delivery will be made without a replay.
func (s Status) Final() bool { return s == StatusSent || s == StatusFailed }

// transitions lists every allowed move. UNSENT->SENT and UNSENT->FAILED exist
// because a processor may record an outcome for a copy of a message still
// UNSENT: the relay writes PROCESSING before it publishes, but a copy can
// still find the message UNSENT (one the relay published after createGrace
// for an entry whose message was stored only later, for one).
// FAILED->UNSENT is a replay.
var transitions = map[Status][]Status{
	StatusUnsent:     {StatusProcessing, StatusSent, StatusFailed},
	StatusProcessing: {StatusUnsent, StatusSent, StatusFailed},
	StatusSent:       {},
	StatusFailed:     {StatusUnsent},
}

// CanTransition reports whether a message in status from may move to to.
// Staying in the same status is not a transition.
func CanTransition(from, to Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Message is one message accepted from a client. Its ID is a UUIDv7, so IDs
// sort by creation time, and it is the stable webhook-id of every delivery.
type Message struct {
	ID      string `json:"id" bson:"_id"`
	To      string `json:"to" bson:"to"`
	Content string `json:"content" bson:"content"`
	Status  Status `json:"status" bson:"status"`
	// Attempts counts the webhook calls made (or possibly made) so far.
	Attempts  int       `json:"attempts" bson:"attempts"`
	CreatedAt time.Time `json:"createdAt" bson:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt" bson:"updatedAt"`
	// SendAt is the client's requested delivery time, if any.
	SendAt *time.Time `json:"sendAt" bson:"sendAt,omitempty"`
	// NextAttemptAt is set while the message waits in the outbox.
	NextAttemptAt *time.Time `json:"nextAttemptAt" bson:"nextAttemptAt,omitempty"`
	SentAt        *time.Time `json:"sentAt" bson:"sentAt,omitempty"`
	LastError     string     `json:"lastError,omitempty" bson:"lastError,omitempty"`
	// FailureReason says why a FAILED message was dead-lettered.
	FailureReason    string `json:"failureReason,omitempty" bson:"failureReason,omitempty"`
	WebhookMessageID string `json:"webhookMessageId,omitempty" bson:"webhookMessageId,omitempty"`
	// Seq is the dispatch sequence: it grows each time the message goes back
	// into the outbox. A queued copy carries the Seq it was published for, and
	// a processor only acts on a copy whose Seq is current, so an old copy can
	// never deliver out of turn.
	Seq int `json:"-" bson:"seq"`
	// Deliveries is the latest part of the delivery log, newest last. Lists
	// leave it out; GET /messages/{id} shows it.
	Deliveries []Delivery `json:"deliveries,omitempty" bson:"deliveries,omitempty"`
}

// MaxDeliveries bounds the delivery log kept on a message.
const MaxDeliveries = 20

// Delivery outcomes recorded in the log.
const (
	OutcomeDelivered    = "delivered"
	OutcomeRetry        = "retry"
	OutcomeFailed       = "failed"
	OutcomeDeferred     = "deferred"
	OutcomeStaleRecover = "stale_recovered"
)

// Delivery is one entry of a message's delivery log.
type Delivery struct {
	At         time.Time `json:"at" bson:"at"`
	Attempt    int       `json:"attempt" bson:"attempt"`
	Outcome    string    `json:"outcome" bson:"outcome"`
	StatusCode int       `json:"statusCode,omitempty" bson:"statusCode,omitempty"`
	Error      string    `json:"error,omitempty" bson:"error,omitempty"`
	DurationMS int64     `json:"durationMs" bson:"durationMs"`
	// Response is the start (256 bytes) of the body of an answer other
	// than 2xx.
	Response string `json:"response,omitempty" bson:"response,omitempty"`
	// Times counts an entry that happened again and again in a row (a
	// deferral each cool-down of an open circuit), At being the latest;
	// 0 for one that happened once.
	Times int `json:"times,omitempty" bson:"times,omitempty"`
}

// repeatedBy reports whether d is the same event as e, again: a deferral
// with the same attempt count and reason.
func (e Delivery) repeatedBy(d Delivery) bool {
	return e.Outcome == OutcomeDeferred && d.Outcome == OutcomeDeferred && e.Attempt == d.Attempt && e.Error == d.Error
}

// MergeRepeat returns d as the entry that replaces log's last one, and
// true, if d repeats it (see Outcome.MergeRepeat); otherwise d as it is and
// false.
func MergeRepeat(log []Delivery, d Delivery) (Delivery, bool) {
	n := len(log)
	if n == 0 || !log[n-1].repeatedBy(d) {
		return d, false
	}
	d.Times = max(log[n-1].Times, 1) + 1
	return d, true
}

// AppendDelivery returns log with d added, or with its last entry replaced
// by d if merge is set and d repeats it, keeping the last MaxDeliveries.
func AppendDelivery(log []Delivery, d Delivery, merge bool) []Delivery {
	if merge {
		if m, ok := MergeRepeat(log, d); ok {
			return append(slices.Clip(log[:len(log)-1]), m)
		}
	}
	log = append(slices.Clip(log), d)
	if len(log) > MaxDeliveries {
		log = log[len(log)-MaxDeliveries:]
	}
	return log
}

// Filter selects messages for a list.
type Filter struct {
	Status Status // empty: every status
	Limit  int
	// Cursor is the ID of the last message of the previous page; the next
	// page starts with the message created just before it.
	Cursor string
}

// Page is one page of a newest-first list.
type Page struct {
	Items      []Message `json:"items"`
	NextCursor string    `json:"nextCursor,omitempty"`
}

// Envelope is what travels through RabbitMQ: only the message's identity and
// dispatch sequence. The processor reads everything else from MongoDB, which
// it must read anyway for the durable duplicate check.
type Envelope struct {
	ID  string `json:"id"`
	Seq int    `json:"seq"`
	// PublishedAt lets the processor measure queue latency.
	PublishedAt time.Time `json:"publishedAt"`
}
