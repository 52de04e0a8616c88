// Package outbox is the write side of the system: it accepts messages into
// the durable outbox (Service) and moves them from the outbox to the broker
// (Relay), and it recovers work whose outcome never arrived (Sweep).
package outbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/groupcommit"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Gate says whether the publisher's schedule is started. The API's fast path
// publishes only while it is.
type Gate func(ctx context.Context) (bool, error)

// Service accepts messages: it implements the API's message operations.
type Service struct {
	Store     Store
	Publisher Publisher // nil: no fast path
	Gate      Gate      // nil: the fast path always runs
	NewID     func() string
	Now       func() time.Time
	Logger    *slog.Logger
	// MaxContentLength is the limit on content, in code points.
	MaxContentLength int
	// FastPathGrace is how long the relay leaves a new message to the fast
	// path before it publishes the message itself.
	FastPathGrace time.Duration
	// IdempotencyTTL is how long an Idempotency-Key is remembered.
	IdempotencyTTL time.Duration
	// FastPathTimeout bounds the fast path's publish: the message is stored
	// already, so a broker that does not confirm in time (an outage, a
	// reconnect) leaves it to the relay instead of holding the client.
	FastPathTimeout time.Duration
	// InProgressWindow is how long a key whose message does not exist yet
	// counts as "first request still running"; after that the first request
	// is presumed dead and a repeat completes it.
	InProgressWindow time.Duration
	// Observe, if set, is told about each accepted and fast-published message.
	Observe func(event string, n int)

	createsOnce sync.Once
	createGroup *groupcommit.Group[createCall]
	// pausedUntil (Unix nanoseconds) turns the fast path off for a while
	// after a publish failed, so that a broker outage costs the API one
	// slow batch rather than one per request.
	pausedUntil atomic.Int64
	// gateUnknown is set while the gate cannot be read, so that an outage
	// of its backend is logged once, not once per request.
	gateUnknown atomic.Bool
}

// fastPathPause is how long the fast path stays off after a failed publish.
const fastPathPause = 5 * time.Second

func (s *Service) fastPathPaused(now time.Time) bool {
	return now.UnixNano() < s.pausedUntil.Load()
}

// Create implements httpapi.Messages.
func (s *Service) Create(ctx context.Context, req message.CreateRequest, key string) (message.Message, bool, error) {
	now := s.Now().UTC()
	if err := req.ValidateShape(s.MaxContentLength); err != nil {
		return message.Message{}, false, err
	}
	// A sendAt that has passed since a first request was accepted must not
	// turn its repeat into a 400: the key decides first. Nor must a rule
	// added since (control characters): a repeat of a request accepted
	// before it gets its message back.
	late := req.ValidateSendAt(now)
	if late != nil && key == "" {
		return message.Message{}, false, late
	}
	badChars := req.ValidateControlChars()
	if badChars != nil && key == "" {
		return message.Message{}, false, badChars
	}
	id := s.NewID()
	if key != "" {
		hash := requestHash(req)
		rec, replay, err := s.claimKey(ctx, key, hash, id, now)
		if err != nil || replay != nil {
			if replay != nil {
				return *replay, true, nil
			}
			return message.Message{}, false, err
		}
		// Not accepted: control characters, whether this request claimed
		// the key or a first one died holding it (its client never had a
		// 2xx, and the stale sweep drops an entry it left); a past sendAt
		// in a new request, or in a repeat of one whose sendAt had already
		// passed when it claimed the key (it was refused, and its key was
		// left behind by a failed give-back). The key is given back.
		reject := badChars
		if reject == nil && late != nil && (rec.MessageID == id || req.ValidateSendAt(rec.CreatedAt) != nil) {
			reject = late
		}
		if reject != nil {
			if err := s.Store.DeleteIdempotencyRecord(ctx, key, rec.MessageID); err != nil {
				s.Logger.Warn("could not give back the key of a rejected request; a repeat within in_progress_window gets 409", "in_progress_window", s.InProgressWindow, "error", err)
			}
			return message.Message{}, false, reject
		}
		// A first request that died midway left its key and ID: this
		// repeat creates the message under that same ID. That request
		// passed these checks when it claimed the key (its sendAt was
		// still ahead, see above), so a sendAt that has passed since means
		// "send now".
		id = rec.MessageID
	}

	m := message.New(id, req, now)
	dueAt := now
	if m.NextAttemptAt != nil {
		dueAt = *m.NextAttemptAt
	}
	fast := m.SendAt == nil && s.Publisher != nil && !s.fastPathPaused(now) && s.gateOpen(ctx)
	entry := message.NewOutboxEntry(m.ID, m.Seq, dueAt, now)
	if fast {
		// The fast path publishes right after the insert, in the same
		// batch, so the entry is stored as published from the start: no
		// second write says so. If the broker does not confirm, the batch
		// takes that back (MarkUnpublished) and the relay publishes the
		// message once the entry falls due after the grace period. If the
		// process dies between the insert and the publish, the stale sweep
		// publishes it again after STALE_DURATION.
		m.Status = message.StatusProcessing
		entry.DueAt = now.Add(s.FastPathGrace)
		entry.PublishedAt = &now
		entry.FastPath = true
	}
	if err := s.creates().Do(ctx, createCall{msg: m, entry: entry}); err != nil {
		if key != "" && message.ErrorCode(err) == message.ECONFLICT {
			// A concurrent repeat of a dead first request won the insert.
			got, gerr := s.Store.GetMessage(ctx, id)
			if gerr == nil {
				return got, true, nil
			}
		}
		if key != "" {
			// The client hears 503 and tries again: its repeat takes the
			// key over at once rather than get 409 for the in-progress
			// window. Under the same message id, so that a write that
			// was applied after all still makes one message. Within the
			// request's deadline: in AWS the 503 must get out before
			// Lambda ends the function.
			until := time.Now().Add(2 * time.Second)
			if dl, ok := ctx.Deadline(); ok && dl.Before(until) {
				until = dl
			}
			actx, cancel := context.WithDeadline(context.WithoutCancel(ctx), until)
			if aerr := s.Store.AbandonIdempotencyRecord(actx, key, id); aerr != nil {
				s.Logger.Warn("could not mark the key of a failed request abandoned; a repeat within in_progress_window gets 409", "in_progress_window", s.InProgressWindow, "error", aerr)
			}
			cancel()
		}
		return message.Message{}, false, storeError("store message", err)
	}
	return m, false, nil
}

// createCall is one Create waiting for its batch.
type createCall struct {
	msg   message.Message
	entry message.OutboxEntry // entry.FastPath: publish in the batch
}

// creates returns the group that batches the creates of concurrent
// requests: one insertMany per collection, one confirmed publish per batch.
func (s *Service) creates() *groupcommit.Group[createCall] {
	s.createsOnce.Do(func() {
		s.createGroup = &groupcommit.Group[createCall]{
			Flush: s.flushCreates,
			// Two batches at a time: while one waits for the broker's
			// confirms, the next one is being stored. More would only
			// queue for the embedded MongoDB, which writes one
			// transaction at a time; the requests that arrive meanwhile
			// make the next batch larger. Measured with make bench: API
			// acceptance 1,050 -> 1,300 msgs/s, p50 14 -> 11 ms.
			MaxInFlight: 2,
			// As long as the driver's server selection: a store that
			// cannot take a create in that time answers 503.
			Timeout: 10 * time.Second,
		}
	})
	return s.createGroup
}

// flushCreates stores a batch of new messages, then publishes the fast
// ones in one confirmed publish.
func (s *Service) flushCreates(ctx context.Context, calls []createCall) []error {
	items := make([]NewMessage, len(calls))
	for i, c := range calls {
		items[i] = NewMessage{Message: c.msg, Entry: c.entry}
	}
	errs := s.Store.CreateMessages(ctx, items)
	var fast, unsure []message.OutboxEntry
	accepted := 0
	for i, c := range calls {
		if errs != nil && errs[i] != nil {
			if c.entry.FastPath && message.ErrorCode(errs[i]) != message.ECONFLICT {
				unsure = append(unsure, c.entry)
			}
			continue
		}
		accepted++
		if c.entry.FastPath {
			fast = append(fast, c.entry)
		}
	}
	s.observe("accepted", accepted)
	if len(unsure) > 0 {
		// A write that failed may have been applied all the same (a
		// timeout, a write concern error): the message may exist, behind
		// an entry stored as published that nobody will publish. Hand the
		// entries to the relay, as for an unconfirmed publish, rather
		// than leave the message to the stale sweep. One whose message
		// was not stored is published, found to have none, and dropped. In
		// the background: with MongoDB down, the batch's callers must not
		// wait for this write to fail too before they hear of theirs.
		go s.markUnpublished(ctx, unsure, "the create failed")
	}
	if len(fast) > 0 {
		s.publishNow(ctx, fast)
	}
	return errs
}

// markUnpublished hands fast-path entries to the relay (see
// Store.MarkUnpublished). If that fails too, the sweep publishes them after
// STALE_DURATION.
func (s *Service) markUnpublished(ctx context.Context, entries []message.OutboxEntry, why string) {
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.Store.MarkUnpublished(mctx, entries); err != nil {
		s.Logger.Warn("mark unpublished failed; the stale sweep will publish these messages", "messages", len(entries), "why", why, "error", err)
	}
}

// claimKey records an Idempotency-Key. It returns the record to go on with,
// or the message a repeat should answer with, or an error.
func (s *Service) claimKey(ctx context.Context, key, hash, id string, now time.Time) (message.IdempotencyRecord, *message.Message, error) {
	rec := message.IdempotencyRecord{Key: key, RequestHash: hash, MessageID: id, CreatedAt: now}
	for range 2 {
		existing, inserted, err := s.Store.PutIdempotencyRecord(ctx, rec)
		if err != nil {
			return rec, nil, storeError("store idempotency key", err)
		}
		if inserted {
			return rec, nil, nil
		}
		if now.Sub(existing.CreatedAt) > s.IdempotencyTTL {
			// Expired: expiry is enforced here because the embedded
			// MongoDB has no TTL indexes.
			if err := s.Store.ExpireIdempotencyRecord(ctx, key, existing.MessageID); err != nil {
				return rec, nil, storeError("expire idempotency key", err)
			}
			continue
		}
		if existing.RequestHash != hash {
			return rec, nil, &message.Error{Code: message.EMISMATCH, Field: "Idempotency-Key",
				Message: "was used with a different request"}
		}
		m, err := s.Store.GetMessage(ctx, existing.MessageID)
		if err == nil {
			return rec, &m, nil
		}
		if message.ErrorCode(err) != message.ENOTFOUND {
			return rec, nil, storeError("load message", err)
		}
		if now.Sub(existing.CreatedAt) < s.InProgressWindow && !existing.Abandoned {
			return rec, nil, message.ErrKeyInUse
		}
		return existing, nil, nil
	}
	return rec, nil, message.Errorf(message.EINTERNAL, "idempotency key kept changing")
}

func (s *Service) gateOpen(ctx context.Context) bool {
	if s.Gate == nil {
		return true
	}
	open, err := s.Gate(ctx)
	if err != nil {
		// Unknown state: leave the message to the relay, which checks again.
		if !s.gateUnknown.Swap(true) {
			s.Logger.Warn("scheduler state unknown; no fast path until it can be read", "error", err)
		}
		return false
	}
	if s.gateUnknown.Swap(false) {
		s.Logger.Info("scheduler state known again; fast path back", "started", open)
	}
	return open
}

// publishNow publishes the messages of stored fast-path entries at once.
// An entry the broker does not confirm in time is handed to the relay.
func (s *Service) publishNow(ctx context.Context, entries []message.OutboxEntry) {
	at := s.Now().UTC()
	envs := make([]message.Envelope, len(entries))
	for i, e := range entries {
		envs[i] = message.Envelope{ID: e.MessageID, Seq: e.Seq, PublishedAt: at}
	}
	if s.FastPathTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.FastPathTimeout)
		defer cancel()
	}
	confirmed, err := s.Publisher.PublishConfirmed(ctx, envs)
	s.observe("published", len(confirmed))
	if len(confirmed) == len(envs) {
		return
	}
	done := make(map[string]bool, len(confirmed))
	for _, e := range confirmed {
		done[e.ID] = true
	}
	var left []message.OutboxEntry
	for _, e := range entries {
		if !done[e.MessageID] {
			left = append(left, e)
		}
	}
	s.pausedUntil.Store(s.Now().Add(fastPathPause).UnixNano())
	s.Logger.Warn("fast-path publish failed; the relay will publish these messages, and new ones for a while",
		"messages", len(left), "pause", fastPathPause, "error", err)
	// The outbox entries were stored as published. Published entries are
	// the stale sweep's: clearing the mark lets the relay publish them
	// after the grace period instead.
	s.markUnpublished(ctx, left, "the broker did not confirm")
}

func (s *Service) observe(event string, n int) {
	if s.Observe != nil {
		s.Observe(event, n)
	}
}

// Get implements httpapi.Messages.
func (s *Service) Get(ctx context.Context, id string) (message.Message, error) {
	if !message.ValidID(id) {
		return message.Message{}, message.ErrNotFound
	}
	m, err := s.Store.GetMessage(ctx, id)
	if err != nil && message.ErrorCode(err) != message.ENOTFOUND {
		return m, storeError("load message", err)
	}
	return m, err
}

// List implements httpapi.Messages.
func (s *Service) List(ctx context.Context, f message.Filter) (message.Page, error) {
	p, err := s.Store.ListMessages(ctx, f)
	if err != nil {
		return p, storeError("list messages", err)
	}
	return p, nil
}

// requestHash identifies a create request for Idempotency-Key checks. It
// hashes the decoded request, so a repeat with other whitespace or key order
// is still the same request.
func requestHash(r message.CreateRequest) string {
	if r.SendAt != nil {
		t := r.SendAt.UTC()
		r.SendAt = &t
	}
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// storeError marks an unexpected store failure as EUNAVAILABLE: the client
// may retry (and with an Idempotency-Key, safely).
func storeError(op string, err error) error {
	if message.ErrorCode(err) != message.EINTERNAL {
		return err
	}
	return fmt.Errorf("%s: %w: %w", op, errStoreUnavailable, err)
}

var errStoreUnavailable = &message.Error{Code: message.EUNAVAILABLE, Message: "the message store is unavailable; try again"}
