package processor

import (
	"context"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// Store is the durable record the processor reads and writes. Safe for
// concurrent use.
type Store interface {
	// GetMessage returns message.ErrNotFound for an unknown ID.
	GetMessage(ctx context.Context, id string) (message.Message, error)
	// RecordOutcomes applies each outcome o to its message if the message
	// is still at o.Seq (message.ErrStaleOutcome otherwise), then closes the
	// dispatch: for UNSENT it inserts the next outbox entry (Seq+1, due at
	// o.NextAttemptAt) and the message's Seq becomes o.Seq+1; in every case
	// it deletes the entry of dispatch o.Seq. The message is written first,
	// so that a crash in between leaves work the stale sweep can finish.
	// errs[i] is outcome i's result; a nil slice means all succeeded. It
	// writes the batch in as few commands as it can.
	RecordOutcomes(ctx context.Context, outcomes []message.Outcome) (errs []error)
	// HasOutboxEntry reports whether the outbox entry with this key exists.
	HasOutboxEntry(ctx context.Context, key string) (bool, error)
	// IndexFailed adds a FAILED message to the failed index, or updates
	// its entry there.
	IndexFailed(ctx context.Context, r message.FailedRecord) error
}

// Inbox is the fast, atomic guard in front of deliveries (Redis SET NX).
// Redis here keeps nothing on disk, so the inbox is never the only guard:
// the message's status in MongoDB is the durable one.
type Inbox interface {
	// Claim takes the in-progress claim on id for ttl. It returns the state
	// found instead if the message is already claimed (InboxInProgress) or
	// done (InboxDone, with the webhook's message ID).
	// token is unique to the caller's attempt: only it releases the claim.
	// seq is the dispatch of the copy at hand.
	Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (claimed bool, state outbox.InboxState, webhookMessageID string, err error)
	// MarkTaken marks dispatch seq of id taken for ttl, right before its
	// webhook call, by the delivery that holds the claim token: the stale
	// sweep counts an attempt only for a dispatch so marked (see
	// outbox.Inbox.Taken).
	MarkTaken(ctx context.Context, id, token string, seq int, ttl time.Duration) error
	// Taken reports whether dispatch seq of id was so marked: whether a
	// consumer that never answered got as far as its webhook call.
	Taken(ctx context.Context, id string, seq int) (bool, error)
	// Complete marks id done for ttl, keeping the webhook's message ID.
	// Written right after the webhook answers 2xx and before MongoDB, it
	// shrinks the window in which a crash causes a second delivery.
	Complete(ctx context.Context, id, webhookMessageID string, ttl time.Duration) error
	// Release drops the in-progress claim taken with token (a retry is
	// scheduled); a claim another holder took since stays.
	Release(ctx context.Context, id, token string) error
}

// DeadLetters receives a persistent notification for each dead-lettered
// message (the durable dead-letter queue, RABBITMQ_DLQ).
type DeadLetters interface {
	NotifyDeadLetter(ctx context.Context, n message.DeadLetter) error
}

// Sender makes one webhook call for a message: a POST of {id, to, content}
// with Standard Webhooks headers (webhook-id is the message ID). It follows
// no redirects. err is a transport failure (connection refused, timeout);
// any HTTP answer, 2xx or not, comes back as a response with a nil error.
// The response's Duration is the call's time, set for a transport failure
// too; it is zero when no request went out (the body could not be encoded).
// Safe for concurrent use.
type Sender interface {
	Send(ctx context.Context, m message.Message) (message.WebhookResponse, error)
}

// Limiter paces calls to the webhook. Reserve takes one token if the wait
// for it is at most maxWait and returns that wait (0: go now); otherwise it
// takes nothing and returns reserved false with the wait until a token
// would be free.
type Limiter interface {
	Reserve(ctx context.Context, maxWait time.Duration) (wait time.Duration, reserved bool, err error)
}
