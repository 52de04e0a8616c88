// Package processor delivers one queued message to the webhook and records
// its outcome. The same Handle serves the local AMQP consumer and the Lambda
// function behind the Amazon MQ event source: a call is complete in itself
// and correct when it is the whole life of its process. Breaker counts,
// limiter tokens and pooled connections only make it faster.
package processor

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/groupcommit"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// Action tells the transport what to do with the queued copy.
type Action int

const (
	// Ack: the outcome is recorded (or there was nothing to do).
	Ack Action = iota
	// Requeue: the outcome could not be recorded (MongoDB or the broker is
	// unreachable); the copy must be delivered again later. The inbox and
	// the durable status keep that from delivering twice.
	Requeue
)

// Result is what Handle did, for the transport, logs and metrics.
type Result struct {
	Action    Action
	MessageID string
	// Outcome is one of message.Outcome* or "delivered_from_inbox",
	// "duplicate", "stale_copy", "dead_lettered_malformed",
	// "unfinished_create", "left_to_sweep".
	Outcome string
	Err     error
}

// RecordTimeout bounds each write that records a webhook call's answer
// (the done marker, the outcome, a dead-letter notification). They run on
// after the delivery's own context ends, so a consumer that stops waits for
// them a little longer (rabbitmq.ConsumeOptions.SettleTimeout). In Lambda
// the invocation's deadline still ends the process; there the reserve
// before a record starts (HandleRabbitMQEvent) leaves them their time.
const RecordTimeout = 10 * time.Second

// StartReserve is how much of a Lambda invocation a record needs left to be
// started: the longest wait for a claim another consumer holds (ClaimWait),
// the longest wait for the rate limiter, one webhook call and the record of
// its outcome (up to RecordTimeout on a slow MongoDB), with a second to
// spare. Lambda ending the invocation between a 2xx and its record would
// have the redelivered batch call the webhook again, should the done marker
// in Redis be missing too.
func StartReserve(maxInlineWait, webhookTimeout time.Duration) time.Duration {
	return ClaimWait + maxInlineWait + webhookTimeout + RecordTimeout + time.Second
}

// releaseTimeout bounds the release of a claim.
const releaseTimeout = 5 * time.Second

// ErrNotCalled is what a delivery reports to its Breaker's done when it
// stopped before calling the webhook, or was stopped during the call (a
// drain timeout, a Lambda deadline): the breaker counts it neither as a
// success nor as a failure, as it says nothing about the webhook.
var ErrNotCalled = errors.New("the webhook was not called, or the call was cut short by its caller")

// Breaker guards the webhook. Allow returns an error while the circuit is
// open; otherwise the caller reports the call's failure (nil for success)
// to done, or ErrNotCalled if it made no call after all or cut it short.
type Breaker interface {
	Allow() (done func(err error), err error)
	State() string
}

// Processor is the per-message delivery logic. Limiter, Breaker, Observe
// and Timing may be nil; the other fields are required.
type Processor struct {
	Store       Store
	Inbox       Inbox
	Sender      Sender
	DeadLetters DeadLetters
	Limiter     Limiter // nil: no outbound limit
	Breaker     Breaker // nil: no circuit breaker
	Retry       message.RetryPolicy
	// ClaimTTL bounds one delivery; InboxTTL is how long a done marker lives.
	ClaimTTL time.Duration
	InboxTTL time.Duration
	// CallReserve is how much of its claim a delivery must have left to
	// start the webhook call: the call's own timeout and the time to
	// record its answer. A delivery held up before the call (a slow read,
	// the rate limit's wait) makes no call that could outlive its claim,
	// after which another consumer could take the message for a dead one's
	// and call again. Of a context with a deadline (a Lambda
	// invocation's), it must have CallReserve + RecordTimeout/2 + 1s left:
	// the whole of the record's time, and a second for the taken mark.
	// Zero: no check.
	CallReserve time.Duration
	// TakenTTL is how long a dispatch's taken marker lives: longer than
	// the stale sweep needs to find a dispatch that was never answered.
	TakenTTL time.Duration
	// BreakerCooldown is how long a message waits while the circuit is open.
	BreakerCooldown time.Duration
	// MaxInlineWait is the longest a delivery waits for the rate limiter in
	// place; a longer wait puts the message back in the outbox instead, so
	// a retry or a wait never blocks the consumer from other messages.
	MaxInlineWait time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
	// Observe, if set, counts outcomes: "delivered" (a delivery recovered
	// from the inbox's done marker included), "retried", "dead_lettered",
	// "deferred", and "requeued" for a copy handed back to the queue; and
	// the outbound rate limit's doings: "webhook_rate_limit_waited" (a
	// delivery waited in place) and "webhook_rate_limit_deferred" (a
	// message put back in the outbox, also counted "deferred").
	Observe func(event string, n int)
	// Timing, if set, records latencies: "webhook" for each call made,
	// answered or failed; "delivery" to the 2xx answer from acceptance, or
	// from the later sendAt or replay (see deliveryStart); "rate_limit_wait"
	// for each wait in place for the outbound rate limit.
	Timing func(kind string, d time.Duration)

	outcomesOnce sync.Once
	outcomeGroup *groupcommit.Group[message.Outcome]

	// handling holds the dispatches (OutboxKey) this process is
	// delivering, each a *delivering. Two copies of one dispatch (the fast
	// path's and the relay's) can both come back marked redelivered, after
	// a reconnect or in a Lambda batch handed back; the second, finding the
	// first's claim, would take it for a dead consumer's and charge an
	// attempt. A copy of a dispatch in flight here waits for the first and
	// ends as it did: a duplicate, or handed back too (the first one's own
	// hand-back may fail, on a channel that closed under it).
	handling sync.Map
}

// delivering is a dispatch in flight in this process: done closes when it
// ends, with its action set.
type delivering struct {
	done   chan struct{}
	action Action
	err    error // why it was handed back, if it was
}

// outcomes returns the group that records the outcomes of concurrent
// deliveries together (Store.RecordOutcomes).
func (p *Processor) outcomes() *groupcommit.Group[message.Outcome] {
	p.outcomesOnce.Do(func() {
		p.outcomeGroup = &groupcommit.Group[message.Outcome]{
			Flush:    p.Store.RecordOutcomes,
			MaxBatch: 100,
			// One batch at a time: the embedded MongoDB writes one
			// transaction at a time, and the outcomes that arrive
			// meanwhile make the next batch larger.
			MaxInFlight: 1,
			// A caller waits for a flush that took its outcome: this
			// bounds that wait as RecordTimeout bounds the rest.
			Timeout: RecordTimeout,
		}
	})
	return p.outcomeGroup
}

// outcomeFromInbox is the outcome of a copy that records SENT from the
// inbox's done marker: the webhook answered 2xx to an earlier delivery whose
// outcome never reached MongoDB.
const outcomeFromInbox = "delivered_from_inbox"

// outcomeEvents names the metric each recorded outcome counts under. A
// delivery recovered from the inbox counts as delivered: the delivery that
// made the call counts only when it records SENT, which it did not (it
// died, or its write failed), and without this count accepted messages
// would not add up to delivered, dead-lettered and in flight.
var outcomeEvents = map[string]string{
	message.OutcomeDelivered: "delivered",
	outcomeFromInbox:         "delivered",
	message.OutcomeRetry:     "retried",
	message.OutcomeFailed:    "dead_lettered",
	message.OutcomeDeferred:  "deferred",
}

// outcomeLevel is the level of the log line that reports a recorded
// outcome. A deferral is logged at Debug: while the circuit is open or the
// rate limit refuses, every message of a backlog is deferred again each
// cool-down, and a line for each would bury the log (its count is in the
// "deferred" metric). The outcomes that end a delivery or count an attempt
// stay at Info.
func outcomeLevel(outcome string) slog.Level {
	switch outcome {
	case message.OutcomeDeferred:
		return slog.LevelDebug
	case message.OutcomeFailed:
		// A dead letter needs someone's attention: found among warnings,
		// with its reason.
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

func (p *Processor) observe(event string) {
	if p.Observe != nil && event != "" {
		p.Observe(event, 1)
	}
}

// Handle processes one queued copy: body is the envelope as published,
// redelivered says whether the broker delivered this copy before.
func (p *Processor) Handle(ctx context.Context, body []byte, redelivered bool) (res Result) {
	defer func() {
		if res.Action == Requeue {
			// Counted so that failing processing shows in the metrics:
			// a requeue is MongoDB, Redis or the broker failing, or a
			// stop cutting a delivery short.
			p.observe("requeued")
		}
	}()
	env, err := DecodeEnvelope(body)
	if err != nil {
		return p.deadLetterMalformed(ctx, body, err)
	}
	log := p.Logger.With("message_id", env.ID, "seq", env.Seq)
	key := message.OutboxKey(env.ID, env.Seq)
	mine := &delivering{done: make(chan struct{})}
	if v, busy := p.handling.LoadOrStore(key, mine); busy {
		first := v.(*delivering)
		select {
		case <-first.done:
		case <-ctx.Done():
			return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("waiting for the copy in flight here: %w", ctx.Err())}
		}
		if first.action == Requeue {
			// With its cause: a copy handed back for lack of time before
			// the deadline is not a store's failure (see Batches).
			return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("the copy in flight here was handed back: %w", first.err)}
		}
		return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
	}
	defer func() {
		mine.action, mine.err = res.Action, res.Err
		p.handling.Delete(key)
		close(mine.done)
	}()

	// A redelivered copy reads whether its dispatch was taken before it
	// claims the message: with Redis down its own claim goes to the
	// MongoDB stand-in, where a claim is the taken mark, and would answer
	// for a call nobody made.
	var prior *takenMark
	if redelivered {
		prior = &takenMark{}
		prior.taken, prior.err = p.Inbox.Taken(ctx, env.ID, env.Seq)
	}
	ctx, claimed, state, wid, err := p.takeClaim(ctx, env, rand.Text())
	if err != nil {
		// No guard answered (Redis is down and its MongoDB stand-in
		// failed too). Hand the copy back: a delivery without a claim
		// could call the webhook beside another copy's, should Redis
		// answer again before the call. What a retried command may have
		// taken is given back.
		p.release(ctx, log, env.ID)
		return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("inbox claim: %w", err)}
	}
	if !claimed {
		return p.handleClaimed(ctx, log, env, body, state, wid, redelivered)
	}
	return p.handleOwn(ctx, log, env, body, prior)
}

// takenMark is what the inbox said, before the claim, of whether a copy's
// dispatch was taken to its webhook call.
type takenMark struct {
	taken bool
	err   error
}

// handleOwn delivers a copy whose message's claim it holds, if the message
// still waits for this dispatch. prior is set for a redelivered copy.
func (p *Processor) handleOwn(ctx context.Context, log *slog.Logger, env message.Envelope, body []byte, prior *takenMark) Result {
	m, err := p.Store.GetMessage(ctx, env.ID)
	switch {
	case message.ErrorCode(err) == message.ENOTFOUND:
		p.release(ctx, log, env.ID)
		// The API writes the outbox entry before the message. An entry
		// whose message is missing belongs to a create that has not
		// finished, or died between the two writes: not a bad queue
		// message. The stale sweep settles it (publishing it again if the
		// message appears, dropping the entry if it never does).
		ok, herr := p.Store.HasOutboxEntry(ctx, message.OutboxKey(env.ID, env.Seq))
		switch {
		case herr != nil:
			// Not known to be unknown: the store failed. Dead-lettered,
			// a create still under way would be reported as a bad queue
			// message (it is delivered all the same, by the sweep).
			return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("look up the outbox entry of a missing message: %w", herr)}
		case ok:
			log.Info("queued message whose create has not finished; left to the stale sweep")
			return Result{Action: Ack, MessageID: env.ID, Outcome: "unfinished_create"}
		}
		return p.deadLetterUnknown(ctx, body, env)
	case err != nil:
		p.release(ctx, log, env.ID)
		return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("load message: %w", err)}
	case m.Status.Final():
		// Already done: acknowledge without a second delivery.
		if m.Status == message.StatusSent {
			_ = p.Inbox.Complete(ctx, m.ID, m.WebhookMessageID, p.InboxTTL)
		} else {
			p.release(ctx, log, env.ID)
			// The failed index is written after the status; a copy
			// requeued because that write failed puts it right here.
			if err := p.Store.IndexFailed(ctx, m.FailedRecord()); err != nil {
				return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("index failed message: %w", err)}
			}
		}
		return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
	case m.Seq != env.Seq:
		// A copy of an older dispatch: the message has moved on (a retry is
		// scheduled, or the stale sweep republished it).
		p.release(ctx, log, env.ID)
		return Result{Action: Ack, MessageID: env.ID, Outcome: "stale_copy"}
	}
	if prior != nil {
		// The claim was free, yet the previous consumer of this copy may
		// have died in its webhook call: its claim was taken in the
		// MongoDB stand-in while Redis was down, and Redis, back (empty),
		// does not hold it. The dispatch's taken mark (Redis's, or that
		// stand-in claim), read before the claim, says so: the copy is
		// one of a dispatch whose consumer did not finish, handled as when
		// its claim is found. Called again here, that lost call would
		// count no attempt. (m.Seq is env.Seq here, the dispatch asked
		// about.)
		if prior.err == nil && prior.taken {
			res := p.deferUnfinished(ctx, log, m, true)
			p.release(ctx, log, env.ID)
			return res
		}
		if prior.err != nil {
			// Redis did not answer and the MongoDB stand-in holds no
			// claim of this dispatch (the usual answer during a Redis
			// outage), or the inbox blinked: nobody can tell whether a
			// consumer died in the call. Delivering loses nothing.
			log.Info("inbox cannot tell whether a consumer died in this dispatch's webhook call; delivering", "error", prior.err)
		}
	}
	return p.deliver(ctx, log, m)
}

// handleClaimed deals with a copy whose message somebody else has claimed
// or finished.
func (p *Processor) handleClaimed(ctx context.Context, log *slog.Logger, env message.Envelope, body []byte, state outbox.InboxState, wid string, redelivered bool) Result {
	m, err := p.Store.GetMessage(ctx, env.ID)
	if err != nil {
		if message.ErrorCode(err) == message.ENOTFOUND {
			return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
		}
		return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("load message: %w", err)}
	}
	if m.Status.Final() {
		return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
	}
	now := p.Now()
	if state == outbox.InboxDone {
		// The webhook answered 2xx but the outcome never reached MongoDB
		// (a crash in the window the README names, or a write that
		// failed). Record it now, without a second delivery, and count it
		// delivered: the delivery that made the call counts only when it
		// records SENT, and the read above found none. (A holder still
		// recording at this very moment counts it too: the store does not
		// say whether SENT was there before.)
		o := message.Outcome{
			MessageID: m.ID, Seq: m.Seq, Status: message.StatusSent, Attempts: m.Attempts + 1, At: now,
			WebhookMessageID: wid,
			Delivery:         &message.Delivery{At: now, Attempt: m.Attempts + 1, Outcome: message.OutcomeDelivered, Error: "recovered from the inbox after an unrecorded delivery"},
		}
		return p.record(ctx, log, o, outcomeFromInbox)
	}
	if m.Seq != env.Seq {
		// A copy of an older dispatch: the message has moved on.
		return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
	}
	if !redelivered {
		// Another consumer holds the claim. Either it delivers this
		// dispatch (two copies of it were published) and will record the
		// outcome, or it took the claim for a copy of an older dispatch,
		// which it lets go as soon as it has read the message: this copy,
		// perhaps the dispatch's only one, must not be dropped for it.
		ctx, claimed, err := p.awaitClaim(ctx, log, env)
		switch {
		case err != nil:
			return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("waiting for the claim: %w", err)}
		case claimed:
			return p.handleOwn(ctx, log, env, body, nil)
		}
		return Result{Action: Ack, MessageID: env.ID, Outcome: "duplicate"}
	}
	// The broker gave us a copy its previous consumer never acknowledged:
	// that consumer probably died holding the claim, perhaps in the middle
	// of a webhook call. Put the message back in the outbox for when the
	// claim has expired. A lost dispatch that got as far as its webhook
	// call (the taken marker) counts as an attempt, as in the stale sweep:
	// it may have reached the webhook, and the next retry's backoff must
	// not be shorter than that. One that did not (its consumer died
	// waiting for the rate limiter, say) counts nothing. When the inbox
	// cannot tell, the dispatch counts, so that a message that brings its
	// processor down still runs out of attempts. If the holder is alive
	// after all, its own outcome wins (see message.Outcome.Read), or its
	// done marker lets the next dispatch record SENT without delivering
	// again.
	taken, err := p.Inbox.Taken(ctx, m.ID, m.Seq)
	if err != nil {
		log.Warn("inbox unavailable; counting the unfinished dispatch as an attempt", "error", err)
	}
	return p.deferUnfinished(ctx, log, m, taken || err != nil)
}

// deferUnfinished puts m back in the outbox for when the claim of a
// consumer that did not finish its dispatch has expired, counting the
// dispatch as an attempt if counted (it was taken, or the inbox could not
// tell).
func (p *Processor) deferUnfinished(ctx context.Context, log *slog.Logger, m message.Message, counted bool) Result {
	now := p.Now()
	attempts := m.Attempts
	if counted {
		attempts++
	}
	if counted && p.Retry.Exhausted(attempts) {
		// The lost dispatch was the last attempt allowed, so there is no
		// retry to schedule; and with the holder perhaps alive after all,
		// FAILED must not be written yet (only a replay undoes it, so its
		// SENT would be refused). The stale sweep decides once the holder
		// is surely done.
		log.Info("copy of a dispatch whose consumer did not finish, with no attempts left; left to the stale sweep")
		return Result{Action: Ack, MessageID: m.ID, Outcome: "left_to_sweep"}
	}
	// Said at Info here, as the sweep's case above is: record logs a
	// deferral at Debug, and this one is for a consumer that probably
	// died.
	why := "claimed by a consumer that did not finish (counted as an attempt); waiting for the claim to expire"
	if !counted {
		why = "claimed by a consumer that did not finish before its webhook call (not counted as an attempt); waiting for the claim to expire"
	}
	log.Info("copy of a dispatch whose consumer did not finish; deferred until its claim expires", "counted", counted)
	next := now.Add(p.ClaimTTL)
	o := message.Outcome{
		MessageID: m.ID, Seq: m.Seq, Status: message.StatusUnsent, Attempts: attempts, At: now, NextAttemptAt: &next,
		LastError: m.LastError,
		Delivery:  &message.Delivery{At: now, Attempt: attempts, Outcome: message.OutcomeDeferred, Error: why},
	}
	return p.record(ctx, log, o, message.OutcomeDeferred)
}

func (p *Processor) deliver(ctx context.Context, log *slog.Logger, m message.Message) Result {
	// An open circuit defers the message before the rate limit is asked:
	// a token taken, or a worker held in the limiter's wait, for a call
	// the breaker then refuses would be taken from the calls that are
	// made (the half-open trials among them), and a message the limiter
	// put back would come again before the cool-down ends.
	if p.Breaker != nil && p.Breaker.State() == "open" {
		return p.deferMessage(ctx, log, m, p.BreakerCooldown, "circuit breaker open")
	}
	// The outbound rate limit: a short wait happens in place, a long one
	// puts the message back in the outbox. Neither counts as an attempt.
	if p.Limiter != nil {
		wait, reserved, err := p.Limiter.Reserve(ctx, p.MaxInlineWait)
		if err != nil {
			log.Warn("rate limiter failed; delivering without it", "error", err)
			wait, reserved = 0, true
		}
		if !reserved {
			// wait is when the next token frees, the same for every
			// message refused now; spread them over as long again, so
			// that a backlog does not come back all at once to be
			// refused again.
			res := p.deferMessage(ctx, log, m, wait+mrand.N(max(wait, 1)), "rate limited")
			if res.Action == Ack && res.Outcome == message.OutcomeDeferred {
				p.observe("webhook_rate_limit_deferred") // counted once recorded, as "deferred" is
			}
			return res
		}
		if wait > 0 {
			p.observe("webhook_rate_limit_waited")
			if p.Timing != nil {
				p.Timing("rate_limit_wait", wait)
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				p.release(ctx, log, m.ID)
				return Result{Action: Requeue, MessageID: m.ID, Err: ctx.Err()}
			case <-t.C:
			}
		}
	}
	// The breaker first: a message it holds back is never taken.
	var done func(error)
	if p.Breaker != nil {
		d, err := p.Breaker.Allow()
		if err != nil {
			return p.deferMessage(ctx, log, m, p.BreakerCooldown, "circuit breaker open")
		}
		done = d
	}
	// From here on the webhook may be called. Without the mark a crash in
	// the call would not count as an attempt, and a message that brings
	// its processor down would never run out of them: no call without it.
	//
	// A delivery stopped by now (a drain timeout) makes no call either:
	// the call would fail at once, and be counted as an attempt and as a
	// failure of the webhook.
	err := ctx.Err()
	c, _ := ctx.Value(claimKey{}).(claim)
	if err == nil && p.CallReserve > 0 && c.until.Sub(p.Now()) < p.CallReserve {
		err = errClaimRunningOut
	}
	if dl, ok := ctx.Deadline(); err == nil && ok && p.CallReserve > 0 && time.Until(dl) < p.CallReserve+RecordTimeout/2+time.Second {
		// A Lambda invocation's deadline ends the process: the call and
		// the whole of its record (RecordTimeout) must fit before it,
		// with a second for the taken mark written in between. The
		// reserve a record is started with (StartReserve) does not bound
		// the steps before the call on a slow inbox or store.
		err = errDeadlineRunningOut
	}
	if err == nil {
		err = p.Inbox.MarkTaken(ctx, m.ID, c.token, m.Seq, p.TakenTTL)
	}
	if err != nil {
		if done != nil {
			done(ErrNotCalled)
		}
		p.release(ctx, log, m.ID)
		return Result{Action: Requeue, MessageID: m.ID, Err: fmt.Errorf("before the webhook call: %w", err)}
	}

	resp, sendErr := p.Sender.Send(ctx, m)
	cutShort := sendErr != nil && ctx.Err() != nil
	// The webhook has answered (or the call failed, perhaps after it
	// reached the webhook): what it did must be recorded even if ctx ends
	// now, at a consumer's drain timeout. Abandoned, a 2xx would leave
	// neither the done marker nor SENT behind, and the redelivered copy
	// would call the webhook again.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordTimeout)
	defer cancel()
	class, reason := Classify(resp, sendErr)
	if p.Timing != nil {
		// A call that failed (a timeout, a refused connection) is timed
		// too: left out, an outage would show as a faster webhook. A call
		// this side cut short says nothing about the webhook (as for the
		// breaker below), and one never made has no duration.
		if sendErr == nil || (!cutShort && resp.Duration > 0) {
			p.Timing("webhook", resp.Duration)
		}
		if class == ClassDelivered {
			p.Timing("delivery", p.Now().Sub(deliveryStart(m)))
		}
	}
	if done != nil {
		// Only failures that say something about the webhook's health trip
		// the breaker: most permanent 4xx are about the message, a call this
		// side cut short is about this side. A permanent answer about the
		// endpoint (endpointFault) is about its health.
		switch {
		case cutShort:
			done(ErrNotCalled)
		case class == ClassRetryable, class == ClassPermanent && endpointFault(resp.StatusCode):
			done(errors.New(reason))
		default:
			done(nil)
		}
	}

	now := p.Now()
	attempt := m.Attempts + 1
	d := &message.Delivery{At: now, Attempt: attempt, StatusCode: resp.StatusCode, DurationMS: resp.Duration.Milliseconds(), Response: resp.Body}
	if sendErr != nil {
		d.Error = reason
	}
	o := message.Outcome{MessageID: m.ID, Seq: m.Seq, Attempts: attempt, At: now, Delivery: d, Read: &m}

	switch class {
	case ClassDelivered:
		// The done marker goes to Redis before MongoDB: if we crash between
		// the two, a redelivered copy finds it and records SENT without a
		// second webhook call.
		if err := p.Inbox.Complete(ctx, m.ID, resp.MessageID, p.InboxTTL); err != nil {
			log.Warn("inbox complete failed", "error", err)
		}
		d.Outcome = message.OutcomeDelivered
		o.Status = message.StatusSent
		o.WebhookMessageID = resp.MessageID
		return p.record(ctx, log, o, message.OutcomeDelivered)
	case ClassRetryable:
		if !p.Retry.Exhausted(attempt) {
			// A Retry-After longer than the backoff wins, up to the
			// longest wait between attempts the operator allows: a
			// server's "come back in a year" must not park a message.
			wait := p.Retry.Delay(attempt)
			if ra := min(resp.RetryAfter, p.Retry.MaxDelay); ra > wait {
				wait = ra
			}
			next := now.Add(wait)
			d.Outcome = message.OutcomeRetry
			o.Status = message.StatusUnsent
			o.NextAttemptAt = &next
			o.LastError = reason
			return p.releaseIfRecorded(ctx, log, o, p.record(ctx, log, o, message.OutcomeRetry))
		}
		o.FailureReason = fmt.Sprintf("retries exhausted after %d attempts", attempt)
	default:
		o.FailureReason = "permanent failure: " + reason
	}
	d.Outcome = message.OutcomeFailed
	o.Status = message.StatusFailed
	o.LastError = reason
	return p.deadLetter(ctx, log, o)
}

// deliveryStart is when m's delivery latency runs from: its acceptance, or
// the later time its client asked for (sendAt) or an operator replayed it
// from the dead-letter queue. The wait before either is the schedule's or
// the operator's, not the system's: a sendAt a day ahead must not read as a
// day's latency. The replay is found in the delivery log, which keeps the
// last message.MaxDeliveries entries; a replay pushed out of it by as many
// later entries is missed, and the latency then runs from sendAt or
// acceptance, longer than it was.
func deliveryStart(m message.Message) time.Time {
	start := m.CreatedAt
	if m.SendAt != nil && m.SendAt.After(start) {
		start = *m.SendAt
	}
	for _, d := range m.Deliveries {
		if d.Outcome == message.OutcomeReplayed && d.At.After(start) {
			start = d.At
		}
	}
	return start
}

// deadLetter notifies the dead-letter queue, then records FAILED. In that
// order: a record without its notification could never be noticed, while a
// notification whose record failed is at worst sent twice. The claim stays
// then, and the redelivered copy, which cannot tell what the webhook
// answered, counts the attempt and puts the message back (deferUnfinished):
// the next dispatch calls the webhook again and, answered the same, sends
// the notification again (the README's duplicate paths).
func (p *Processor) deadLetter(ctx context.Context, log *slog.Logger, o message.Outcome) Result {
	n := message.DeadLetter{MessageID: o.MessageID, Reason: o.FailureReason, LastError: o.LastError, Attempts: o.Attempts, FailedAt: o.At}
	if err := p.DeadLetters.NotifyDeadLetter(ctx, n); err != nil {
		// Nothing written: the claim stays (see releaseIfRecorded).
		return Result{Action: Requeue, MessageID: o.MessageID, Err: fmt.Errorf("notify dead-letter queue: %w", err)}
	}
	return p.releaseIfRecorded(ctx, log, o, p.record(ctx, log, o, message.OutcomeFailed))
}

// releaseIfRecorded releases the claim of a call whose answer o res
// recorded. A call whose answer could not be recorded keeps its claim until
// it expires: released, the requeued copy would call the webhook again at
// once, with no backoff and no attempt counted, for as long as the writes
// fail. Kept, a redelivered copy finds it and counts the call (see
// handleClaimed). An answer recorded on the message but not in full (its
// outbox entries or the failed index failed) is recorded for this purpose:
// the message moved on, and the requeued copy, or the next dispatch's, must
// find no claim in the way.
func (p *Processor) releaseIfRecorded(ctx context.Context, log *slog.Logger, o message.Outcome, res Result) Result {
	if res.Action != Ack {
		m, err := p.Store.GetMessage(ctx, o.MessageID)
		if err != nil || (m.Seq == o.Seq && !m.Status.Final()) {
			return res
		}
	}
	p.release(ctx, log, o.MessageID)
	return res
}

// deferMessage puts m back in the outbox for after wait without counting an
// attempt, then releases the claim Handle took. In that order: the outcome
// is written against m as read (Outcome.Read), which only the claim's
// holder may do. Released first, another copy could claim, deliver and
// record SENT or FAILED before the deferral landed, and on the embedded
// MongoDB, whose writes are not conditional, the deferral would then put
// the finished message back in the outbox, to be delivered again. The
// claim is released whatever the write did: nothing was sent, so a
// requeued copy must find the way clear.
func (p *Processor) deferMessage(ctx context.Context, log *slog.Logger, m message.Message, wait time.Duration, why string) Result {
	now := p.Now()
	next := now.Add(wait)
	o := message.Outcome{
		MessageID: m.ID, Seq: m.Seq, Status: message.StatusUnsent, Attempts: m.Attempts, At: now, NextAttemptAt: &next,
		LastError: m.LastError, Read: &m,
		Delivery: &message.Delivery{At: now, Attempt: m.Attempts, Outcome: message.OutcomeDeferred, Error: why},
		// One entry for a run of the same deferral, counted: an outage's
		// cool-downs must not push the real attempts out of the log.
		MergeRepeat: true,
	}
	res := p.record(ctx, log, o, message.OutcomeDeferred)
	p.release(ctx, log, m.ID)
	return res
}

// record writes o. A stale outcome (somebody moved the message on) is not
// an error: the newer dispatch owns the message now.
func (p *Processor) record(ctx context.Context, log *slog.Logger, o message.Outcome, outcome string) Result {
	err := p.outcomes().Do(ctx, o)
	if errors.Is(err, message.ErrStaleOutcome) {
		log.Log(ctx, outcomeLevel(outcome), "outcome not recorded: the message moved on", "outcome", outcome)
		return Result{Action: Ack, MessageID: o.MessageID, Outcome: "stale_copy"}
	}
	if err != nil {
		log.Error("record outcome failed", "outcome", outcome, "error", err)
		return Result{Action: Requeue, MessageID: o.MessageID, Outcome: outcome, Err: fmt.Errorf("record outcome: %w", err)}
	}
	attrs := []any{"outcome", outcome, "status", o.Status, "attempts", o.Attempts}
	switch {
	case o.Status == message.StatusFailed:
		attrs = append(attrs, "reason", o.FailureReason, "last_error", o.LastError)
	case outcome == message.OutcomeRetry && o.NextAttemptAt != nil:
		attrs = append(attrs, "last_error", o.LastError, "next_attempt_at", *o.NextAttemptAt)
	}
	log.Log(ctx, outcomeLevel(outcome), "message processed", attrs...)
	p.observe(outcomeEvents[outcome])
	return Result{Action: Ack, MessageID: o.MessageID, Outcome: outcome}
}

// claimKey is the context key of the claim Handle took: its token, and
// when it expires at the latest.
type claimKey struct{}

type claim struct {
	token string
	until time.Time
}

// ClaimWait bounds how long a copy of a message's current dispatch waits
// for the claim of another consumer that has not reached its webhook call
// (see awaitClaim). A consumer that took the claim for a copy of an older
// dispatch gives it back after one read of the message.
const ClaimWait = 2 * time.Second

// awaitClaim waits, up to ClaimWait, for the claim on env's message, held
// by another consumer, to be given back, and takes it as token. It stops
// early once the holder has marked env's dispatch taken (it delivers this
// very dispatch, and will record the outcome), when the inbox fails or
// says the message is done. It asks with the token Handle's first claim
// was asked with (in ctx). ctx carries the claim when it is taken; err is
// set only when ctx ended first.
func (p *Processor) awaitClaim(ctx context.Context, log *slog.Logger, env message.Envelope) (context.Context, bool, error) {
	first, _ := ctx.Value(claimKey{}).(claim)
	deadline := time.Now().Add(ClaimWait)
	for delay := 10 * time.Millisecond; ; delay *= 2 {
		if taken, err := p.Inbox.Taken(ctx, env.ID, env.Seq); err != nil || taken {
			return ctx, false, nil
		}
		wait := min(delay, time.Until(deadline))
		if wait <= 0 {
			return ctx, false, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx, false, ctx.Err()
		case <-t.C:
		}
		cctx, claimed, state, _, err := p.takeClaim(ctx, env, first.token)
		switch {
		case err != nil:
			// A retried command may have taken the claim on its first
			// try: left, it would hold off the next copy until it
			// expires.
			p.release(cctx, log, env.ID)
			return ctx, false, nil
		case state == outbox.InboxDone:
			return ctx, false, nil
		case claimed:
			return cctx, true, nil
		}
	}
}

// takeClaim asks the inbox for the claim on env's message as token. The
// returned context carries the claim from before it is asked for: a
// retried command may have taken it on its first try.
func (p *Processor) takeClaim(ctx context.Context, env message.Envelope, token string) (context.Context, bool, outbox.InboxState, string, error) {
	ctx = context.WithValue(ctx, claimKey{}, claim{token: token, until: p.Now().Add(p.ClaimTTL)})
	claimed, state, wid, err := p.Inbox.Claim(ctx, env.ID, token, env.Seq, p.ClaimTTL)
	return ctx, claimed, state, wid, err
}

// errClaimRunningOut stops a delivery whose claim could expire during its
// webhook call (see Processor.CallReserve).
var errClaimRunningOut = errors.New("too little of the inbox claim is left for the webhook call")

// errDeadlineRunningOut stops a delivery whose context (a Lambda
// invocation's) could end during its webhook call or the record of its
// answer. The copy goes back as one not started (BatchSummary.NotStarted).
var errDeadlineRunningOut = errors.New("too little time is left before the deadline for the webhook call and its record")

// release drops the claim Handle took on id, if it is still Handle's. It
// does so even when ctx has ended (a cancelled rate-limit wait, a drain
// timeout): a claim left behind makes the requeued copy count an attempt
// for a call that was never made.
func (p *Processor) release(ctx context.Context, log *slog.Logger, id string) {
	c, _ := ctx.Value(claimKey{}).(claim)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := p.Inbox.Release(ctx, id, c.token); err != nil {
		log.Warn("inbox release failed; the claim will expire", "error", err)
	}
}

// notify sends a dead-letter notification within RecordTimeout: the local
// consumer's context has no deadline, and a broker that blocks publishers
// (a memory alarm) must not hold the worker for as long as it lasts.
func (p *Processor) notify(ctx context.Context, n message.DeadLetter) error {
	ctx, cancel := context.WithTimeout(ctx, RecordTimeout)
	defer cancel()
	return p.DeadLetters.NotifyDeadLetter(ctx, n)
}

func (p *Processor) deadLetterMalformed(ctx context.Context, body []byte, cause error) Result {
	n := message.DeadLetter{Reason: "malformed queue message: " + cause.Error(), FailedAt: p.Now(), Body: printable(body)}
	if err := p.notify(ctx, n); err != nil {
		return Result{Action: Requeue, Err: fmt.Errorf("notify dead-letter queue: %w", err)}
	}
	p.Logger.Warn("malformed queue message dead-lettered", "error", cause)
	p.observe("dead_lettered")
	return Result{Action: Ack, Outcome: "dead_lettered_malformed"}
}

func (p *Processor) deadLetterUnknown(ctx context.Context, body []byte, env message.Envelope) Result {
	n := message.DeadLetter{MessageID: env.ID, Reason: "unknown message id", FailedAt: p.Now(), Body: printable(body)}
	if err := p.notify(ctx, n); err != nil {
		return Result{Action: Requeue, MessageID: env.ID, Err: fmt.Errorf("notify dead-letter queue: %w", err)}
	}
	p.Logger.Warn("queue message for an unknown id dead-lettered", "message_id", env.ID)
	p.observe("dead_lettered")
	return Result{Action: Ack, MessageID: env.ID, Outcome: "dead_lettered_malformed"}
}

// DecodeEnvelope parses and checks a queued envelope.
func DecodeEnvelope(body []byte) (message.Envelope, error) {
	var env message.Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return env, fmt.Errorf("not an envelope: %w", err)
	}
	if !message.ValidID(env.ID) {
		return env, errors.New("envelope has no valid message id")
	}
	if env.Seq < 0 {
		return env, errors.New("envelope has a negative seq")
	}
	return env, nil
}

// printable returns at most 1 KiB of body for a dead-letter record, valid
// UTF-8 or quoted.
func printable(body []byte) string {
	if len(body) > 1024 {
		body = body[:1024]
	}
	if utf8.Valid(body) {
		return string(body)
	}
	return fmt.Sprintf("%q", body)
}

// Class is what a webhook answer means for the message.
type Class int

// The classes of an answer.
const (
	ClassDelivered Class = iota
	ClassRetryable
	ClassPermanent
)

// endpointFault reports whether a permanent answer is about the endpoint
// rather than the message: a redirect (it moved); 401, 403 or 407 (its
// credentials or our signature: a wrong WEBHOOK_SECRET, a clock minutes
// off); 404, 405 or 410 (no webhook there). Every message gets the same
// answer then, so the breaker counts it a failure: once it opens, the
// backlog waits in the outbox, no attempt counted, instead of draining into
// the dead-letter queue, and the status reports say the webhook is failing.
// The message that got the answer is dead-lettered all the same, as every
// permanent failure is, and so is each half-open probe's.
func endpointFault(code int) bool {
	switch code {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusProxyAuthRequired,
		http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusGone:
		return true
	}
	return code >= 300 && code < 400
}

// Classify sorts an answer: 2xx delivered; transport errors, 408, 429 and
// 5xx retryable; every other status (3xx, 4xx) permanent. reason is a short
// text for the log and lastError.
func Classify(resp message.WebhookResponse, err error) (Class, string) {
	if err != nil {
		return ClassRetryable, err.Error()
	}
	code := resp.StatusCode
	reason := fmt.Sprintf("HTTP %d %s", code, http.StatusText(code))
	switch {
	case code >= 200 && code < 300:
		return ClassDelivered, reason
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500:
		return ClassRetryable, reason
	default:
		return ClassPermanent, reason
	}
}
