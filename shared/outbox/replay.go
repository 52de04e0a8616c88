package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// maxReplay bounds one bulk replay; a client repeats the call for more.
const maxReplay = 1000

// replayReserve is the time a bulk replay keeps before its request's
// deadline to answer with what it did.
const replayReserve = 3 * time.Second

// Retry puts one FAILED message back in the outbox with a fresh attempt
// budget. It is ECONFLICT for a message in any other status.
func (s *Service) Retry(ctx context.Context, id string) (message.Message, error) {
	m, err := s.Get(ctx, id)
	if err != nil {
		return m, err
	}
	if m.Status != message.StatusFailed {
		return m, &message.Error{Code: message.ECONFLICT, Message: fmt.Sprintf("only a FAILED message can be retried; this one is %s", m.Status)}
	}
	if err := s.replay(ctx, m); err != nil {
		return m, err
	}
	return s.Get(ctx, id)
}

// Replay retries FAILED messages in bulk: those listed, or those failed at
// or after a time. A dry run only counts them.
func (s *Service) Replay(ctx context.Context, req message.ReplayRequest) (message.ReplayResult, error) {
	res := message.ReplayResult{DryRun: req.DryRun, IDs: []string{}}
	ids := req.IDs
	if len(ids) == 0 {
		recs, err := s.Store.ListFailed(ctx, req.Since, maxReplay)
		if err != nil {
			return res, storeError("list failed messages", err)
		}
		for _, r := range recs {
			ids = append(ids, r.MessageID)
		}
		// A full page may have more behind it.
		res.More = len(recs) == maxReplay
	}
	if len(ids) > maxReplay {
		return res, message.FieldError("ids", "must hold at most %d ids per call", maxReplay)
	}
	for i, id := range ids {
		// Each replay is a few writes; a thousand of them on a slow store
		// can outlast the request. Stop while there is time to answer, and
		// say so: a repeat skips what is no longer FAILED.
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < replayReserve {
			res.More = true
			s.Logger.Info("replay stopped before the request's deadline", "done", i, "left", len(ids)-i)
			break
		}
		m, err := s.Get(ctx, id)
		if message.ErrorCode(err) == message.ENOTFOUND {
			continue
		}
		if err != nil {
			return res, err
		}
		if m.Status != message.StatusFailed {
			if len(req.IDs) == 0 && !req.DryRun {
				// Listed by the failed index but no longer FAILED (a
				// late repair of the index): drop the stale entry.
				if err := s.Store.RemoveFailed(ctx, id); err != nil {
					s.Logger.Warn("stale entry stays in the failed index", "message_id", id, "error", err)
				}
			}
			continue
		}
		// MongoDB keeps times to the millisecond, and so compares since
		// in the index's listing: the check by id does too, or a message
		// failed in since's millisecond would be in one and not the other.
		if req.Since != nil && len(req.IDs) > 0 && m.UpdatedAt.Before(req.Since.Truncate(time.Millisecond)) {
			continue
		}
		res.Matched++
		res.IDs = append(res.IDs, id)
		if req.DryRun {
			continue
		}
		err = s.replay(ctx, m)
		if message.ErrorCode(err) == message.ECONFLICT {
			// Another request replays it, or has moved it on: not this
			// call's to count, and no reason to stop the others.
			continue
		}
		if err != nil {
			return res, err
		}
		res.Replayed++
	}
	return res, nil
}

// replay moves m from FAILED to UNSENT, due now, with its attempt count
// reset; the delivery log keeps the history. The next dispatch's outbox
// entry is written first: a FAILED message has no entry left for the stale
// sweep, so one moved to UNSENT without its entry (a failure or a crash
// between the two writes) would never be published. An entry whose message
// stays FAILED is dropped: the relay waits for it a while (see
// Relay.Pass), then the processor acknowledges its copy without a delivery
// and the stale sweep removes it. A replay tried again replaces such an
// entry, which the relay may have published meanwhile, with a due one, in
// one write: a replay that read the message FAILED before another one moved
// it on must not take away the entry the message now waits on.
//
// One replay of m's failure, across processes (ClaimReplay): of several at
// once, the others are ECONFLICT. One that failed gives way, so that the
// client can try again at once.
func (s *Service) replay(ctx context.Context, m message.Message) (err error) {
	settle, err := s.Store.ClaimReplay(ctx, m.ID, m.Seq)
	if err != nil {
		return storeError("replay message", err) // message.ErrReplayed as it is
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if serr := settle(sctx, err == nil); serr != nil {
			if err == nil {
				// A replay made whose marker says nothing: a request
				// that read the message FAILED before it could replay
				// it again once the marker is stale.
				s.Logger.Warn("replay made, but its marker not marked done; a request that read the failure earlier could replay it again after the marker's stale time", "message_id", m.ID, "error", serr)
			} else {
				s.Logger.Warn("replay failed, and its marker was not dropped; a retry of it gets 409 until the marker is stale", "message_id", m.ID, "error", serr)
			}
		}
	}()
	now := s.Now().UTC()
	next := message.NewOutboxEntry(m.ID, m.Seq+1, now, now)
	if err := s.Store.ReplaceOutbox(ctx, next); err != nil {
		return storeError("replay message", err)
	}
	o := message.Outcome{
		MessageID: m.ID, Seq: m.Seq, Status: message.StatusUnsent, Attempts: 0, At: now, NextAttemptAt: &now,
		LastError: m.LastError, Replay: true,
		Delivery: &message.Delivery{At: now, Attempt: m.Attempts, Outcome: message.OutcomeReplayed, Error: "replayed from the dead-letter queue: " + m.FailureReason},
	}
	err = s.Store.RecordOutcome(ctx, o)
	if errors.Is(err, message.ErrStaleOutcome) {
		return &message.Error{Code: message.ECONFLICT, Message: "the message changed while it was being retried; read it again"}
	}
	if err != nil {
		return storeError("replay message", err)
	}
	if err := s.Store.RemoveFailed(ctx, m.ID); err != nil {
		s.Logger.Warn("replayed message stays in the failed index", "message_id", m.ID, "error", err)
	}
	s.Logger.Info("message replayed from the dead-letter queue", "message_id", m.ID)
	return nil
}

// CountFailed returns the number of FAILED messages.
func (s *Service) CountFailed(ctx context.Context) (int64, error) { return s.Store.CountFailed(ctx) }
