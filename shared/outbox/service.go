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
	"time"

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
}

// Create implements httpapi.Messages.
func (s *Service) Create(ctx context.Context, req message.CreateRequest, key string) (message.Message, bool, error) {
	now := s.Now().UTC()
	if err := req.Validate(now, s.MaxContentLength); err != nil {
		return message.Message{}, false, err
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
		// A first request that died midway left its key and ID: this
		// repeat creates the message under that same ID.
		id = rec.MessageID
	}

	m := message.New(id, req, now)
	dueAt := now
	if m.NextAttemptAt != nil {
		dueAt = *m.NextAttemptAt
	}
	fast := m.SendAt == nil && s.Publisher != nil && s.gateOpen(ctx)
	if fast {
		// The fast path publishes right after the insert. The entry falls
		// due only after a grace period, so the scheduled relay does not
		// publish the same message at the same moment; if the fast path
		// fails or we crash, the relay picks the entry up after the grace.
		m.Status = message.StatusProcessing
		dueAt = now.Add(s.FastPathGrace)
	}
	entry := message.NewOutboxEntry(m.ID, m.Seq, dueAt, now)
	if err := s.Store.CreateMessage(ctx, m, entry); err != nil {
		if key != "" && message.ErrorCode(err) == message.ECONFLICT {
			// A concurrent repeat of a dead first request won the insert.
			got, gerr := s.Store.GetMessage(ctx, id)
			if gerr == nil {
				return got, true, nil
			}
		}
		return message.Message{}, false, storeError("store message", err)
	}
	s.observe("accepted", 1)
	if fast {
		s.publishNow(ctx, m, entry)
	}
	return m, false, nil
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
			if err := s.Store.DeleteIdempotencyRecord(ctx, key); err != nil {
				return rec, nil, storeError("expire idempotency key", err)
			}
			continue
		}
		if existing.RequestHash != hash {
			return rec, nil, &message.Error{Code: message.EMISMATCH, Field: "Idempotency-Key",
				Message: "this Idempotency-Key was used with a different request"}
		}
		m, err := s.Store.GetMessage(ctx, existing.MessageID)
		if err == nil {
			return rec, &m, nil
		}
		if message.ErrorCode(err) != message.ENOTFOUND {
			return rec, nil, storeError("load message", err)
		}
		if now.Sub(existing.CreatedAt) < s.InProgressWindow {
			return rec, nil, &message.Error{Code: message.EINPROGRESS, Field: "Idempotency-Key",
				Message: "a request with this Idempotency-Key is still being processed"}
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
		s.Logger.Warn("scheduler state unknown; no fast path", "error", err)
		return false
	}
	return open
}

func (s *Service) publishNow(ctx context.Context, m message.Message, e message.OutboxEntry) {
	env := message.Envelope{ID: m.ID, Seq: m.Seq, PublishedAt: s.Now().UTC()}
	if s.FastPathTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.FastPathTimeout)
		defer cancel()
	}
	confirmed, err := s.Publisher.PublishConfirmed(ctx, []message.Envelope{env})
	if err != nil || len(confirmed) == 0 {
		s.Logger.Warn("fast-path publish failed; the relay will publish it", "message_id", m.ID, "error", err)
		return
	}
	if err := s.Store.MarkPublished(ctx, []string{e.Key}, s.Now().UTC()); err != nil {
		// Published but not recorded: the relay publishes it again after
		// the grace period, and the inbox keeps the webhook from seeing it
		// twice.
		s.Logger.Warn("mark published failed", "message_id", m.ID, "error", err)
		return
	}
	s.observe("published", 1)
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
