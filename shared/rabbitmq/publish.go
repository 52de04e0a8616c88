package rabbitmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// maxInFlight is how many messages a channel publishes before it waits for
// their confirms. It is also the capacity of the channel's return buffer:
// amqp091-go drops a return it cannot hand over within 5 s, and a dropped
// return would let an unroutable message count as confirmed. A chunk of at
// most this many publishes produces at most this many returns, and the
// buffer is emptied after every chunk, so none is ever dropped.
const maxInFlight = 256

// pubChannel is a confirm-mode channel used by one publisher at a time:
// confirms are matched to publishes by their sequence on the channel.
type pubChannel struct {
	ch      *amqp.Channel
	gen     uint64 // the connection generation it was opened on
	returns chan amqp.Return
	closes  chan *amqp.Error
	// closeErr is the broker's reason for closing the channel, once read.
	closeErr error
	// refused holds the indexes the broker nacked or returned in the
	// current chunk.
	refused map[int]struct{}
}

// closeReason returns why the broker closed the channel, if it said.
func (p *pubChannel) closeReason() error {
	if p.closeErr == nil {
		select {
		case e, ok := <-p.closes:
			if ok && e != nil {
				p.closeErr = e
			}
		default:
		}
	}
	if p.closeErr == nil {
		return errors.New("channel closed")
	}
	return p.closeErr
}

func (c *Client) acquire(ctx context.Context) (*pubChannel, error) {
	conn, gen, err := c.pub.get(ctx)
	if err != nil {
		return nil, err
	}
	for {
		select {
		case p := <-c.pool:
			if p.gen == gen && !p.ch.IsClosed() {
				return p, nil
			}
			c.discard(p)
			continue
		default:
		}
		break
	}
	// Opening the channel and putting it in confirm mode wait for the
	// broker, which may have stopped answering: the caller's deadline (a
	// relay's lease, a Lambda's budget) bounds the wait, and a channel
	// opened too late is closed in the background.
	p, err := within(ctx, &c.discards, func() (*pubChannel, error) { return c.open(conn, gen) }, c.discard)
	if err != nil {
		if conn.IsClosed() {
			c.pub.markDown(gen, err)
		}
		return nil, fmt.Errorf("open publish channel: %w", err)
	}
	return p, nil
}

// open opens a confirm-mode channel on conn, connection generation gen.
func (c *Client) open(conn *amqp.Connection, gen uint64) (*pubChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	p := &pubChannel{
		ch:      ch,
		gen:     gen,
		returns: ch.NotifyReturn(make(chan amqp.Return, maxInFlight)),
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		refused: make(map[int]struct{}),
	}
	if err := ch.Confirm(false); err != nil {
		c.discard(p)
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	return p, nil
}

// release returns p to the pool, or closes it if it is not fit for reuse: a
// channel with confirms still outstanding would hand them to the next user.
func (c *Client) release(p *pubChannel, reusable bool) {
	if reusable && !p.ch.IsClosed() && c.life.Err() == nil {
		select {
		case c.pool <- p:
			return
		default:
		}
	}
	c.discard(p)
}

// discard closes p in the background: a close waits for the broker's
// close-ok, which the caller (whose context may have ended) should not.
// Close waits for it, once the connection is closed; if Close is already
// waiting, the channel goes with the connection.
func (c *Client) discard(p *pubChannel) {
	if p.ch.IsClosed() {
		return
	}
	_ = c.discards.start(func() { closeChannel(p.ch) })
}

// outgoing is one message to publish.
type outgoing struct {
	id   string
	body []byte
}

// publishAttempts bounds how many channels one publish call tries: when a
// connection drops mid-batch, the unconfirmed rest is published again on the
// next connection, within the caller's context.
const publishAttempts = 3

// publish sends msgs to exchange with routing key key, mandatory and
// persistent, and waits for the broker's confirms. acked[i] reports whether
// msgs[i] was confirmed and routed to a queue; err explains the others.
//
// A message whose fate is unknown because its channel died is published
// again on a new channel: at least once is the contract, and consumers are
// idempotent. A message the broker refused (returned as unroutable, or
// nacked) is not retried: the caller decides.
func (c *Client) publish(ctx context.Context, exchange, key string, msgs []outgoing) (acked []bool, err error) {
	acked = make([]bool, len(msgs))
	todo := make([]int, len(msgs))
	for i := range todo {
		todo[i] = i
	}
	var refusals []error
	var lastErr error
	for attempt := 0; len(todo) > 0 && attempt < publishAttempts; attempt++ {
		if c.life.Err() != nil {
			return acked, ErrClosed
		}
		if attempt > 0 && !sleep(ctx, backoff(attempt)) {
			break
		}
		if err := c.pub.waitUnblocked(ctx); err != nil {
			lastErr = err
			break
		}
		p, err := c.acquire(ctx)
		if err != nil {
			lastErr = err
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				break
			}
			continue
		}
		res := c.publishOn(ctx, p, exchange, key, msgs, todo, acked)
		c.release(p, res.reusable)
		refusals = append(refusals, res.refused...)
		todo, lastErr = res.lost, res.lostErr
		if !res.retry {
			break
		}
	}
	if lastErr == nil && len(refusals) == 0 {
		return acked, nil
	}
	errs := refusals
	if lastErr != nil {
		errs = append(errs, lastErr)
	}
	if missingTopology(errors.Join(errs...)) {
		// The caller publishes again later (the outbox keeps what was
		// refused): by then the queue or exchange is back.
		c.pub.redeclare(ctx)
	}
	n := 0
	for _, a := range acked {
		if !a {
			n++
		}
	}
	return acked, fmt.Errorf("%d of %d messages to exchange %q, routing key %q not confirmed: %w",
		n, len(msgs), exchange, key, errors.Join(errs...))
}

var errConfirmsOutstanding = errors.New("gave up waiting for confirms")

// unroutableError is the refusal of messages the broker returned because no
// queue was bound for them.
type unroutableError struct{ msg string }

func (e *unroutableError) Error() string { return e.msg }

// attemptResult is what one channel made of a publish.
type attemptResult struct {
	reusable bool
	// refused explains messages the broker refused: definitive.
	refused []error
	// lost are the indexes whose fate is unknown; lostErr says why.
	lost    []int
	lostErr error
	// retry is set if publishing lost again on a new channel may work.
	retry bool
}

// publishOn publishes msgs[todo...] on p, maxInFlight at a time, and waits
// for each chunk's confirms, setting acked.
func (c *Client) publishOn(ctx context.Context, p *pubChannel, exchange, key string, msgs []outgoing, todo []int, acked []bool) attemptResult {
	res := attemptResult{reusable: true}
	for start := 0; start < len(todo); start += maxInFlight {
		chunk := todo[start:min(start+maxInFlight, len(todo))]
		sent, refused, err := publishChunk(ctx, p, exchange, key, msgs, chunk, acked)
		if refused != nil {
			res.refused = append(res.refused, refused)
		}
		if err == nil {
			continue
		}
		// Everything unsettled from here on is lost. The channel can be
		// reused only if it is open and owes no confirms.
		res.reusable = !p.ch.IsClosed() && !errors.Is(err, errConfirmsOutstanding)
		res.lostErr = err
		for _, i := range chunk[sent:] {
			res.lost = append(res.lost, i)
		}
		for _, i := range chunk[:sent] {
			if !acked[i] && !refusedIndex(p, i) {
				res.lost = append(res.lost, i)
			}
		}
		res.lost = append(res.lost, todo[start+len(chunk):]...)
		// A closed channel can be replaced; a context that ended cannot,
		// and neither can a refusal such as a missing exchange.
		res.retry = ctx.Err() == nil && !channelRefusal(p.closeReason())
		return res
	}
	return res
}

// refusedIndex reports whether message i got a definite answer from the
// broker (a nack or a return) during the last chunk on p.
func refusedIndex(p *pubChannel, i int) bool {
	_, ok := p.refused[i]
	return ok
}

// channelRefusal reports whether err is a channel error the broker raised
// because of what was asked (a missing exchange, no access), as opposed to
// the connection going away.
func channelRefusal(err error) bool {
	var amqpErr *amqp.Error
	if !errors.As(err, &amqpErr) {
		return false
	}
	switch amqpErr.Code {
	case amqp.NotFound, amqp.AccessRefused, amqp.PreconditionFailed, amqp.ResourceLocked, amqp.NotAllowed, amqp.NotImplemented:
		return true
	}
	return false
}

// publishChunk publishes msgs[i] for i in chunk (at most maxInFlight) and
// waits for their confirms, setting acked. sent is how many were handed to
// the channel. refused explains nacks and returns; err is non-nil if the
// channel is no longer usable (it closed, or ctx ended with confirms
// outstanding).
func publishChunk(ctx context.Context, p *pubChannel, exchange, key string, msgs []outgoing, chunk []int, acked []bool) (sent int, refused, err error) {
	clear(p.refused)
	now := time.Now().UTC()
	dcs := make([]*amqp.DeferredConfirmation, 0, len(chunk))
	var pubErr error
	for _, i := range chunk {
		m := msgs[i]
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    m.id,
			Timestamp:    now,
			Body:         m.body,
		})
		if err != nil {
			pubErr = err
			break
		}
		dcs = append(dcs, dc)
	}
	sent = len(dcs)
	var waitErr error
	nacked := 0
	for k, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			// Confirms are still outstanding: the channel cannot be
			// reused, and the rest of the chunk is unconfirmed.
			waitErr = err
			break
		}
		switch {
		case ok:
			acked[chunk[k]] = true
		case !p.ch.IsClosed():
			// A real nack; on a closed channel amqp091-go nacks
			// whatever was outstanding, and that is not the broker's
			// answer.
			nacked++
			p.refused[chunk[k]] = struct{}{}
		}
	}

	// The broker sends a message's basic.return before its basic.ack, and
	// amqp091-go hands both over in order, so every return for this chunk
	// is buffered by now.
	returned := map[string]amqp.Return{}
drain:
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				break drain
			}
			returned[r.MessageId] = r
		default:
			break drain
		}
	}
	var unroutable int
	var sample amqp.Return
	if len(returned) > 0 {
		for _, i := range chunk {
			if r, ok := returned[msgs[i].id]; ok && acked[i] {
				acked[i] = false
				p.refused[i] = struct{}{}
				unroutable++
				sample = r
			}
		}
	}

	var refusals []error
	if unroutable > 0 {
		refusals = append(refusals, &unroutableError{fmt.Sprintf("%d returned by the broker as unroutable (%d %s): is the queue for routing key %q declared and bound to exchange %q?",
			unroutable, sample.ReplyCode, sample.ReplyText, key, exchange)})
	}
	if nacked > 0 {
		refusals = append(refusals, fmt.Errorf("%d nacked by the broker", nacked))
	}
	refused = errors.Join(refusals...)

	switch {
	case p.ch.IsClosed():
		err = fmt.Errorf("publish channel closed: %w", p.closeReason())
	case pubErr != nil:
		err = fmt.Errorf("publish: %w", pubErr)
	case waitErr != nil:
		err = fmt.Errorf("%w: %w", errConfirmsOutstanding, waitErr)
	}
	return sent, refused, err
}

// PublishConfirmed publishes each envelope as persistent JSON (MessageId is
// the envelope's ID) to the topology's exchange with the main queue as
// routing key, and waits within ctx for the broker's confirms. confirmed
// holds the envelopes the broker confirmed and routed to a queue; an
// envelope that was nacked, returned as unroutable (the queue is missing) or
// not confirmed in time is left out, and err says why. Batches of any size
// are fine: they are published maxInFlight at a time on one channel.
func (c *Client) PublishConfirmed(ctx context.Context, envs []message.Envelope) (confirmed []message.Envelope, err error) {
	if len(envs) == 0 {
		return nil, nil
	}
	msgs := make([]outgoing, len(envs))
	for i, e := range envs {
		body, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode envelope %s: %w", e.ID, err)
		}
		msgs[i] = outgoing{id: e.ID, body: body}
	}
	acked, err := c.publish(ctx, c.topo.Exchange, c.topo.Queue, msgs)
	confirmed = make([]message.Envelope, 0, len(envs))
	for i, ok := range acked {
		if ok {
			confirmed = append(confirmed, envs[i])
		}
	}
	if err != nil {
		return confirmed, fmt.Errorf("publish envelopes: %w", err)
	}
	return confirmed, nil
}

// NotifyDeadLetter publishes n as persistent JSON to the dead-letter queue
// (through the default exchange) and waits within ctx for the confirm.
func (c *Client) NotifyDeadLetter(ctx context.Context, n message.DeadLetter) error {
	body, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("encode dead letter: %w", err)
	}
	if _, err := c.publish(ctx, "", c.topo.DeadLetterQueue, []outgoing{{id: n.MessageID, body: body}}); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	return nil
}
