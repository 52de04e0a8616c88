package outbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// DeadLetters receives a notification for each message the sweep fails.
type DeadLetters interface {
	NotifyDeadLetter(ctx context.Context, n message.DeadLetter) error
}

// Relay moves due outbox entries to the broker and recovers stale ones. One
// Pass is complete in itself: the local publisher calls it on a ticker, the
// publisher Lambda through RunFor, every second of its window.
type Relay struct {
	Store       Store
	Publisher   Publisher
	Lease       Lease
	Inbox       Inbox
	DeadLetters DeadLetters
	Gate        Gate // nil: always started
	Retry       message.RetryPolicy
	BatchSize   int
	// LeaseTTL bounds one pass, which must end while it holds the lease:
	// its batches are published within LeaseTTL - MarkTimeout (less a
	// margin) of taking it, so that the record of the last one ends in
	// time too, and it takes no new batch after half of that.
	LeaseTTL time.Duration
	// MarkTimeout bounds the write that records a batch the broker
	// confirmed (0: 10 s; at most half of LeaseTTL).
	MarkTimeout   time.Duration
	StaleDuration time.Duration
	// SweepEvery spaces the stale sweeps (0: every pass). The sweep scans
	// the in-flight entries, which on the embedded MongoDB means decoding
	// each of them, while a stale entry only appears StaleDuration after
	// its publish.
	SweepEvery time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
	// Observe, if set, counts what the relay does: "published",
	// "recovered" (a stale dispatch published again), "dead_lettered", and
	// "delivered" for a delivery it recovers from the inbox's done marker.
	Observe func(event string, n int)

	mu        sync.Mutex
	lastSweep time.Time
}

// Summary is what one pass did, or RunFor's passes together (counted once
// per pass: an entry a later pass takes again counts again; Skipped is why
// the last skipped pass skipped), for logs and the publisher Lambda's answer.
type Summary struct {
	Skipped   string `json:"skipped,omitempty"`
	Claimed   int    `json:"claimed"`
	Published int    `json:"published"`
	Failed    int    `json:"failed"`
	Recovered int    `json:"recovered"`
	// DeadLettered counts stale messages that had no attempts left.
	DeadLettered int `json:"deadLettered"`
	// Waiting counts due entries left for a later pass because their
	// message was still being stored.
	Waiting int `json:"waiting,omitempty"`
	// FailedPasses counts the passes of a run (RunFor) that failed.
	FailedPasses int `json:"failedPasses,omitempty"`
}

// createGrace is how long an outbox entry whose message does not exist is
// taken for a create still in progress (the entry is stored first, the
// message right after; a create gives up after 10 s). After that the create
// died, and the entry is published: the processor acknowledges the copy
// and the stale sweep removes the entry.
const createGrace = 30 * time.Second

// sweepClaimTTL bounds the claim the stale sweep holds on a message while it
// recovers it: a few writes, or until a sweep that died lets go.
const sweepClaimTTL = 30 * time.Second

// defaultMarkTimeout is Relay.MarkTimeout's default.
const defaultMarkTimeout = 10 * time.Second

// markTimeout is MarkTimeout, or its default, and at most half of
// LeaseTTL, so that a pass has time left to publish whatever the settings.
func (r *Relay) markTimeout() time.Duration {
	d := r.MarkTimeout
	if d <= 0 {
		d = defaultMarkTimeout
	}
	return min(d, r.LeaseTTL/2)
}

const leaseName = "outbox-relay"

// Pass sweeps stale entries, then publishes due entries in batches until
// none is due, the lease's budget is spent or ctx ends.
func (r *Relay) Pass(ctx context.Context) (Summary, error) {
	var sum Summary
	if r.Gate != nil {
		open, err := r.Gate(ctx)
		if err != nil {
			return sum, fmt.Errorf("read scheduler state: %w", err)
		}
		if !open {
			sum.Skipped = "scheduler stopped"
			return sum, nil
		}
	}
	// The margin kept before the lease expires, and before the deadline of
	// a caller that has one (a Lambda invocation, for the lease's release
	// and its own end): the pass's writes end by then, the record of its
	// last batch included, instead of running on into a timeout.
	margin := min(time.Second, r.LeaseTTL/10)
	callerDeadline, callerHasDeadline := ctx.Deadline()
	var markBy time.Time
	if callerHasDeadline {
		markBy = callerDeadline.Add(-margin)
	}
	leased := time.Now()
	release, ok, err := r.Lease.Acquire(ctx, leaseName, r.LeaseTTL)
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopped (a shutdown, the pass's own deadline): no outage of
		// Redis to report, and nothing this pass could do.
		return sum, fmt.Errorf("take the relay lease: %w", err)
	case err != nil:
		// Redis is down. Carry on without the lease rather than stall the
		// outbox: a second relay running at the same time can publish a
		// message twice, and the processor's durable check keeps the
		// webhook from seeing it twice.
		r.Logger.Warn("relay lease unavailable; publishing without it", "error", err)
	case !ok:
		sum.Skipped = "another relay holds the lease"
		return sum, nil
	default:
		defer func() {
			// Released even when ctx is done, but never waited on forever
			// (nor past the caller's deadline): an unreleased lease only
			// expires.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if callerHasDeadline {
				rctx, cancel = context.WithDeadline(rctx, callerDeadline)
				defer cancel()
			}
			release(rctx)
		}()
	}

	// The lease must not expire under a running pass: another relay would
	// take it and publish the same entries again. The pass's work ends in
	// time for the record of its last batch, which gets MarkTimeout of its
	// own, to end before the lease does, with a margin: a write its
	// timeout gave up on may still be applied. It takes no new batch after
	// half of that time (the sweep included), so that the last one has as
	// long again to be published.
	work := r.LeaseTTL - r.markTimeout() - margin
	ctx, cancel := context.WithDeadline(ctx, leased.Add(work))
	defer cancel()
	budget := r.Now().Add(work / 2)
	// Sweep first, so that what it puts back in the outbox is published in
	// this same pass.
	var sweepErr error
	if r.sweepDue() {
		// Within the caller's deadline minus the margin, as the batches'
		// records are: a sweep stalled on a hanging inbox or store would
		// otherwise run into the deadline, and the lease's release after
		// it would fail, holding off the next invocation's passes until
		// the lease expires.
		sctx := ctx
		if callerHasDeadline {
			var cancel context.CancelFunc
			sctx, cancel = context.WithDeadline(ctx, markBy)
			defer cancel()
		}
		sweepErr = r.Sweep(sctx, &sum)
	}
	if callerHasDeadline {
		// Stop well before the caller's deadline too (a Lambda
		// invocation's): the batch in flight must still be confirmed
		// and recorded.
		left := time.Until(callerDeadline)
		if end := r.Now().Add(left - max(left/5, 2*time.Second)); end.Before(budget) {
			budget = end
		}
	}
	waiting := map[string]bool{}
	for r.Now().Before(budget) && ctx.Err() == nil {
		n, err := r.publishBatch(ctx, &sum, waiting, markBy)
		if err != nil {
			return sum, errors.Join(sweepErr, err)
		}
		if n < r.BatchSize {
			break
		}
	}
	return sum, sweepErr
}

// RunFor makes a pass, then another every interval, until window has
// passed since it started, ctx ends, less than reserve is left before ctx's
// deadline, or on (if not nil) says the publisher was turned off; window 0
// makes one pass. It returns the passes' summaries added up, and the last
// pass's error: a failed pass is logged and the next one tries again. In
// Lambda, where the schedule runs at most once a minute, it keeps retries
// and sendAt messages from waiting for the next run; on reads the
// schedule's state, so that a stop also ends the run under way. A state
// that cannot be read (the schedule's API throttling, say) keeps the run
// going: the schedule invoked it, so it was started a moment ago, and
// ending the run would leave what falls due to the next one.
func (r *Relay) RunFor(ctx context.Context, window, interval, reserve time.Duration, on Gate) (Summary, error) {
	start := time.Now()
	var total Summary
	var err error // the last pass's
	unknown := false
	for first := true; ; first = false {
		if !first && on != nil {
			open, gerr := on(ctx)
			if gerr != nil && ctx.Err() == nil && !unknown {
				r.Logger.Warn("publisher state unknown; this run goes on as started", "error", gerr)
			}
			unknown = gerr != nil
			if gerr == nil && !open {
				total.Skipped = "scheduler stopped"
				return total, err
			}
		}
		var sum Summary
		sum, err = r.Pass(ctx)
		total.add(sum)
		if err != nil && ctx.Err() == nil {
			total.FailedPasses++
			r.Logger.Error("relay pass failed", "summary", sum, "error", err)
		}
		next := time.Now().Add(interval)
		if next.Sub(start) > window {
			return total, err
		}
		if dl, ok := ctx.Deadline(); ok && dl.Sub(next) < reserve {
			return total, err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return total, err
		case <-t.C:
		}
	}
}

// add counts o's figures into s; o's Skipped, if any, replaces s's.
func (s *Summary) add(o Summary) {
	s.Claimed += o.Claimed
	s.Published += o.Published
	s.Failed += o.Failed
	s.Recovered += o.Recovered
	s.DeadLettered += o.DeadLettered
	s.Waiting += o.Waiting
	s.FailedPasses += o.FailedPasses
	if o.Skipped != "" {
		s.Skipped = o.Skipped
	}
}

// sweepDue says whether this pass sweeps, and if so starts the next wait.
func (r *Relay) sweepDue() bool {
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.lastSweep.IsZero() && now.Sub(r.lastSweep) < r.SweepEvery && now.After(r.lastSweep) {
		return false
	}
	r.lastSweep = now
	return true
}

// publishBatch publishes one batch of due entries and returns its size.
// Entries in waiting (keys this pass left for their message to be stored)
// are passed over, and entries it leaves are added. The record of the
// batch ends by markBy, if set.
func (r *Relay) publishBatch(ctx context.Context, sum *Summary, waiting map[string]bool, markBy time.Time) (int, error) {
	now := r.Now().UTC()
	due, err := r.Store.DueOutbox(ctx, now, r.BatchSize+len(waiting))
	if err != nil {
		return 0, fmt.Errorf("claim outbox batch: %w", err)
	}
	entries := slices.DeleteFunc(due, func(e message.OutboxEntry) bool { return waiting[e.Key] })
	entries = entries[:min(len(entries), r.BatchSize)]
	if len(entries) == 0 {
		return 0, nil
	}
	sum.Claimed += len(entries)
	// PROCESSING is written before publishing, while no copy of this
	// dispatch is in the queue yet: after the publish the processor may
	// write the message at any moment, and the embedded MongoDB cannot make
	// "set PROCESSING unless already SENT" atomic.
	notReady, err := r.Store.MarkProcessing(ctx, entries, now)
	if err != nil {
		return 0, fmt.Errorf("mark processing: %w", err)
	}
	envs := make([]message.Envelope, 0, len(entries))
	for _, e := range entries {
		if slices.Contains(notReady, e.MessageID) && now.Sub(e.CreatedAt) < createGrace {
			// Its message is being stored or replayed right now (the
			// entry goes first): publishing it would only make the
			// processor drop the copy. It stays due for the next pass;
			// this one goes on past it.
			waiting[e.Key] = true
			continue
		}
		envs = append(envs, message.Envelope{ID: e.MessageID, Seq: e.Seq, PublishedAt: now})
	}
	sum.Waiting += len(entries) - len(envs)
	confirmed, pubErr := r.Publisher.PublishConfirmed(ctx, envs)
	byKey := make(map[string]message.OutboxEntry, len(entries))
	for _, e := range entries {
		byKey[e.Key] = e
	}
	published := make([]message.OutboxEntry, 0, len(confirmed))
	for _, env := range confirmed {
		published = append(published, byKey[message.OutboxKey(env.ID, env.Seq)])
	}
	sum.Published += len(published)
	sum.Failed += len(envs) - len(published)
	if len(published) > 0 {
		// Only now is the entry recorded as published. A crash before this
		// line leaves it due, and the next pass publishes it again. A pass
		// stopped meanwhile (SIGTERM, a Lambda deadline) still records what
		// the broker confirmed, rather than have it all published twice.
		// A write cut short by markBy leaves the entries due, as a
		// crash would; the invocation's timeout would cut it off anyway.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.markTimeout())
		defer cancel()
		if !markBy.IsZero() {
			mctx, cancel = context.WithDeadline(mctx, markBy)
			defer cancel()
		}
		if err := r.Store.MarkPublished(mctx, published, r.Now().UTC()); err != nil {
			return len(entries), fmt.Errorf("mark published: %w", err)
		}
		r.observe("published", len(published))
	}
	if pubErr != nil {
		return len(entries), fmt.Errorf("publish outbox batch: %w", pubErr)
	}
	return len(entries), nil
}

// Sweep recovers entries published longer than StaleDuration ago whose
// outcome never arrived (the processor died, or the copy was lost). A
// message with attempts left is published again (the inbox prevents a double
// delivery); one without is dead-lettered. The outbox holds only pending and
// in-flight work, so the sweep's scan stays small as history grows.
func (r *Relay) Sweep(ctx context.Context, sum *Summary) error {
	now := r.Now().UTC()
	stale, err := r.Store.StaleOutbox(ctx, now.Add(-r.StaleDuration), r.BatchSize)
	if err != nil {
		return fmt.Errorf("find stale outbox entries: %w", err)
	}
	var errs []error
	for _, e := range stale {
		if ctx.Err() != nil {
			break
		}
		if err := r.recover(ctx, e, now, sum); err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", e.Key, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Relay) recover(ctx context.Context, e message.OutboxEntry, now time.Time, sum *Summary) error {
	log := r.Logger.With("message_id", e.MessageID, "seq", e.Seq)
	m, err := r.Store.GetMessage(ctx, e.MessageID)
	if message.ErrorCode(err) == message.ENOTFOUND {
		// An entry whose message was never stored: its create request
		// failed between the two inserts and was never acknowledged. A
		// repeat with its Idempotency-Key may be storing it right now: it
		// writes the entry again first, and that one stays.
		log.Warn("dropping outbox entry of a message that was never stored")
		return r.Store.DropOutbox(ctx, e)
	}
	if err != nil {
		return err
	}
	if m.Status.Final() || m.Seq != e.Seq {
		// The outcome was recorded but the entry not removed (a crash
		// between the two writes, or a failed write after it). If the
		// message went back to the outbox, make sure its next entry exists
		// before dropping this one; if it failed, that it is in the failed
		// index, written after the status.
		if m.Status == message.StatusFailed {
			if err := r.Store.IndexFailed(ctx, m.FailedRecord()); err != nil {
				return err
			}
		}
		if m.Status == message.StatusUnsent && m.Seq > e.Seq {
			due := now
			if m.NextAttemptAt != nil {
				due = *m.NextAttemptAt
			}
			if err := r.Store.EnsureOutbox(ctx, message.NewOutboxEntry(m.ID, m.Seq, due, now)); err != nil {
				return err
			}
		}
		// Only the entry as read: the message was read without its claim,
		// and a replay since may have written its key again (a replay that
		// died after its entry left one of the next seq, which the same
		// replay, tried again, writes anew and then moves the message to).
		// Deleted, that live entry would leave the message UNSENT with
		// nothing to publish it ever.
		return r.Store.DropOutbox(ctx, e)
	}

	// The sweep takes the message's claim while it decides, as a
	// processor does before a delivery: a processor that took the claim
	// first is delivering (or its done marker tells the outcome), and one
	// that comes after finds it held and leaves the copy alone, so the two
	// never decide at once (a dead-letter written while the webhook
	// answers 2xx).
	// Whether a processor took the dispatch to its webhook call is read
	// before the sweep's own claim: with Redis down, that claim goes to
	// the MongoDB stand-in, where a claim is the taken mark, and would
	// answer for a dispatch nobody took.
	taken, takenErr := r.Inbox.Taken(ctx, m.ID, m.Seq)
	token := rand.Text()
	claimed, state, wid, err := r.Inbox.Claim(ctx, m.ID, token, m.Seq, sweepClaimTTL)
	if err != nil {
		log.Warn("inbox unavailable; recovering without it", "error", err)
		state = InboxNone
	}
	if claimed {
		defer func() {
			if err := r.Inbox.Release(context.WithoutCancel(ctx), m.ID, token); err != nil {
				log.Warn("inbox release failed; the sweep's claim will expire", "error", err)
			}
		}()
	}
	if state == InboxInProgress {
		return nil // a processor is on it right now
	}
	// A processor may have recorded an outcome between the read above and
	// the claim: decide on the message as it is under the claim. The next
	// pass tidies up after an outcome found here.
	if m, err = r.Store.GetMessage(ctx, e.MessageID); err != nil {
		return err
	}
	if m.Status.Final() || m.Seq != e.Seq {
		return nil
	}
	switch state {
	case InboxDone:
		// Delivered, but the outcome was never written.
		o := message.Outcome{MessageID: m.ID, Seq: m.Seq, Status: message.StatusSent, Attempts: m.Attempts + 1, At: now,
			WebhookMessageID: wid,
			Delivery:         &message.Delivery{At: now, Attempt: m.Attempts + 1, Outcome: message.OutcomeDelivered, Error: "recovered from the inbox after an unrecorded delivery"}}
		// Counted as delivered here: the processor that made the call
		// counts a delivery only when it records SENT, and the read under
		// the claim found none. (A processor still recording at this very
		// moment counts it too: the store does not say whether SENT was
		// there before.)
		return r.recordSwept(ctx, o, &sum.Recovered, "delivered")
	}

	// A dispatch whose webhook call a processor started and never
	// answered counts as an attempt: it may have reached the webhook. One
	// that no processor got that far with (none running, or the copy
	// still waits behind a backlog, or it was lost before it reached one)
	// does not: a long outage of the processors must not use up, and
	// fail, messages nobody tried to deliver. When the inbox cannot tell,
	// the dispatch counts, so that a message that brings its processor
	// down still runs out of attempts; except a fast-path entry of a
	// message never attempted, since the API may have died between
	// storing it as published and publishing it.
	counted := true
	why := fmt.Sprintf("no outcome recorded within %s; published again", r.StaleDuration)
	if takenErr != nil {
		if e.FastPath && m.Attempts == 0 {
			counted = false
			why = fmt.Sprintf("no outcome recorded within %s of the fast path; published again without counting an attempt", r.StaleDuration)
		} else {
			log.Warn("inbox unavailable; counting the stale dispatch as an attempt", "error", takenErr)
		}
	} else if !taken {
		counted = false
		why = fmt.Sprintf("no outcome recorded within %s and no processor took the message; published again without counting an attempt", r.StaleDuration)
	}
	attempts := m.Attempts
	if counted {
		attempts++
	}
	o := message.Outcome{MessageID: m.ID, Seq: m.Seq, Attempts: attempts, At: now, LastError: m.LastError}
	if counted && r.Retry.Exhausted(attempts) {
		o.Status = message.StatusFailed
		o.FailureReason = fmt.Sprintf("no outcome recorded within %s after %d attempts", r.StaleDuration, attempts)
		o.Delivery = &message.Delivery{At: now, Attempt: attempts, Outcome: message.OutcomeFailed, Error: o.FailureReason}
		n := message.DeadLetter{MessageID: m.ID, Reason: o.FailureReason, LastError: m.LastError, Attempts: attempts, FailedAt: now}
		if err := r.DeadLetters.NotifyDeadLetter(ctx, n); err != nil {
			return fmt.Errorf("notify dead-letter queue: %w", err)
		}
		if err := r.recordSwept(ctx, o, &sum.DeadLettered, "dead_lettered"); err != nil {
			return err
		}
		log.Warn("stale message dead-lettered", "attempts", attempts)
		return nil
	}
	o.Status = message.StatusUnsent
	o.NextAttemptAt = &now
	o.Delivery = &message.Delivery{At: now, Attempt: attempts, Outcome: message.OutcomeStaleRecover, Error: why}
	if err := r.recordSwept(ctx, o, &sum.Recovered, "recovered"); err != nil {
		return err
	}
	log.Warn("stale message recovered", "attempts", attempts)
	return nil
}

// recordSwept records the sweep's outcome o and, once it is recorded,
// counts it in *n and as event. A write that failed leaves the entry
// stale, for the next pass to decide and count; a stale outcome (a
// processor recorded first) is somebody else's, counted there, and not an
// error.
func (r *Relay) recordSwept(ctx context.Context, o message.Outcome, n *int, event string) error {
	err := r.Store.RecordOutcome(ctx, o)
	if err == nil {
		*n++
		r.observe(event, 1)
	}
	return ignoreStale(err)
}

func ignoreStale(err error) error {
	if errors.Is(err, message.ErrStaleOutcome) {
		return nil
	}
	return err
}

func (r *Relay) observe(event string, n int) {
	if r.Observe != nil {
		r.Observe(event, n)
	}
}
