package outbox

import (
	"context"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Store is the durable side of the outbox. Implementations must be safe for
// concurrent use.
//
// On the embedded MongoDB (FerretDB) only inserts under a unique _id are
// atomic; a conditional update is a read then a write and two of them can
// interleave. Nothing here relies on the atomicity of a conditional update:
// each dispatch of a message has its own outbox document (see
// message.OutboxEntry), the one relay at a time holds a lease, and the
// processor's inbox claim keeps two copies of a message from both reaching
// the webhook.
type Store interface {
	// CreateMessages stores new messages, each with its first outbox entry,
	// in as few writes as it can (one per collection for the batch): the
	// entries first, then the messages, so that a crash between the two
	// leaves entries whose messages are unknown (which the processor leaves
	// to the stale sweep, and the sweep drops) rather than accepted messages
	// that nothing will ever publish. An entry stored as published (the fast
	// path's) waits for its outcome apart from the entries the relay scans.
	// errs[i] is item i's result, an *message.Error with code ECONFLICT if
	// its message ID exists; a nil slice means all succeeded.
	CreateMessages(ctx context.Context, items []NewMessage) (errs []error)
	GetMessage(ctx context.Context, id string) (message.Message, error)
	ListMessages(ctx context.Context, f message.Filter) (message.Page, error)

	// PutIdempotencyRecord inserts r. If a record with r.Key exists it
	// returns that record and inserted false.
	PutIdempotencyRecord(ctx context.Context, r message.IdempotencyRecord) (existing message.IdempotencyRecord, inserted bool, err error)
	// DeleteIdempotencyRecord gives back the key of a request that was not
	// accepted, if the record under key still names messageID.
	DeleteIdempotencyRecord(ctx context.Context, key, messageID string) error
	// ExpireIdempotencyRecord removes an expired record, if the record
	// under key still names messageID (not one a concurrent request put in
	// its place); message.ErrKeyInUse if another request is doing so.
	ExpireIdempotencyRecord(ctx context.Context, key, messageID string) error
	// AbandonIdempotencyRecord marks the record under key abandoned (see
	// message.IdempotencyRecord), if it still names messageID.
	AbandonIdempotencyRecord(ctx context.Context, key, messageID string) error

	// DueOutbox returns up to limit unpublished entries due at or before
	// now, earliest first.
	DueOutbox(ctx context.Context, now time.Time, limit int) ([]message.OutboxEntry, error)
	// MarkProcessing moves the message of each entry from UNSENT to
	// PROCESSING, if it is still at the entry's Seq. Entries whose message
	// moved on, is not there yet or does not exist are left alone; it
	// returns the IDs of the messages not ready for their entry: those
	// that do not exist, and those at an earlier Seq than their entry (a
	// replay writes the entry of the next dispatch before the message).
	MarkProcessing(ctx context.Context, entries []message.OutboxEntry, at time.Time) (notReady []string, err error)
	// MarkPublished records that these entries were published and
	// confirmed by the broker. An entry that no longer exists, or was
	// written again since it was read (another CreatedAt), is left alone.
	MarkPublished(ctx context.Context, entries []message.OutboxEntry, at time.Time) error
	// MarkUnpublished hands entries stored as published (the fast path's)
	// whose publish was not confirmed back to the relay, which publishes
	// them when they fall due.
	MarkUnpublished(ctx context.Context, entries []message.OutboxEntry) error
	// StaleOutbox returns up to limit entries published before before.
	StaleOutbox(ctx context.Context, before time.Time, limit int) ([]message.OutboxEntry, error)
	// EnsureOutbox inserts e unless an entry with its key exists.
	EnsureOutbox(ctx context.Context, e message.OutboxEntry) error
	// DeleteOutbox removes the entry with this key, if any.
	DeleteOutbox(ctx context.Context, key string) error
	// ReplaceOutbox stores e as the pending entry of its key, in place of
	// any entry of that key, pending or in flight: the pending one in one
	// write, then the in-flight one removed, so that the key never goes
	// without an entry.
	ReplaceOutbox(ctx context.Context, e message.OutboxEntry) error
	// DropOutbox removes entry e if it was not written again since it was
	// read (its createdAt is unchanged).
	DropOutbox(ctx context.Context, e message.OutboxEntry) error
	// RecordOutcome applies one outcome: see processor.Store's
	// RecordOutcomes.
	RecordOutcome(ctx context.Context, o message.Outcome) error

	// ListFailed returns the FAILED messages' records failed at or after
	// since (all when nil), oldest first, at most limit; RemoveFailed drops
	// one after a replay, unless the message has failed again since;
	// CountFailed counts them. They read a separate
	// index of failures, never the whole message history.
	ListFailed(ctx context.Context, since *time.Time, limit int) ([]message.FailedRecord, error)
	RemoveFailed(ctx context.Context, id string) error
	// ClaimReplay makes the caller the one replay of dispatch seq of
	// message id, or returns message.ErrReplayed (ECONFLICT) if another
	// request has it or had it. settle ends the claim, saying whether the
	// replay was made (a replay that failed can be tried again at once);
	// an error from it means the marker lapses after its stale time
	// instead.
	ClaimReplay(ctx context.Context, id string, seq int) (settle func(ctx context.Context, replayed bool) error, err error)
	CountFailed(ctx context.Context) (int64, error)
	// IndexFailed adds a FAILED message to the index, or updates it there.
	IndexFailed(ctx context.Context, r message.FailedRecord) error

	// SchedulerState returns the stored publisher state, or def if none is
	// stored yet.
	SchedulerState(ctx context.Context, def message.SchedulerState) (message.SchedulerState, time.Time, error)
	// SetSchedulerState stores the publisher state.
	SetSchedulerState(ctx context.Context, s message.SchedulerState, at time.Time) error
}

// NewMessage is a message to create with its first outbox entry.
type NewMessage struct {
	Message message.Message
	Entry   message.OutboxEntry
}

// Publisher sends envelopes to the broker. PublishConfirmed returns once the
// broker has confirmed each envelope (persistent delivery, publisher
// confirms); confirmed holds the envelopes that were confirmed, in any
// order, and err says why the others were not. It must be safe for
// concurrent use.
type Publisher interface {
	PublishConfirmed(ctx context.Context, envs []message.Envelope) (confirmed []message.Envelope, err error)
}

// Lease makes sure only one relay pass runs at a time across processes.
type Lease interface {
	// Acquire takes the lease for ttl. ok is false if somebody else holds
	// it. release gives it back early; it is safe to call after expiry.
	Acquire(ctx context.Context, name string, ttl time.Duration) (release func(context.Context), ok bool, err error)
}

// Inbox is the part of the processor's inbox the stale sweep needs: the
// claim, which it holds while it recovers a message so that no processor
// delivers it meanwhile, or which tells it that a delivery is in progress or
// done. See processor.Inbox.
type Inbox interface {
	Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (claimed bool, state InboxState, webhookMessageID string, err error)
	Release(ctx context.Context, id, token string) error
	// Taken reports whether a processor was about to call the webhook for
	// dispatch seq of message id (or a later one) lately: within longer
	// than the stale duration.
	Taken(ctx context.Context, id string, seq int) (bool, error)
}

// InboxState is what the inbox knows about a message.
type InboxState int

// The inbox states.
const (
	InboxNone InboxState = iota
	InboxInProgress
	InboxDone
)
