package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Action is what a Handler asks to do with a delivery.
type Action int

// The actions. NackDiscard drops the message (the queues have no
// broker-side dead-lettering): a handler should dead-letter it itself first.
const (
	Ack Action = iota
	NackRequeue
	NackDiscard
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case NackRequeue:
		return "nack-requeue"
	case NackDiscard:
		return "nack-discard"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Delivery is one message received from a queue. Body is passed on as it
// came: a message someone else published (not JSON, say) reaches the handler
// too, and decoding it is the handler's job.
type Delivery struct {
	Body        []byte
	MessageID   string
	ContentType string
	Timestamp   time.Time
	// Redelivered is set when the broker delivered the message before.
	Redelivered bool
	// DeliveryCount is how many times a quorum queue delivered the message
	// before (its x-delivery-count header; 0 the first time).
	DeliveryCount int64
	DeliveryTag   uint64
	Headers       map[string]any
}

// Handler processes one delivery and says how to settle it. Its context is
// not cancelled when Consume's is, so that a delivery in progress can finish;
// it is cancelled if the drain timeout runs out.
type Handler func(ctx context.Context, d Delivery) Action

// ConsumeOptions configures Consume.
type ConsumeOptions struct {
	// Queue to consume; default: the topology's main queue.
	Queue string
	// Prefetch is the most unacknowledged deliveries the broker sends at
	// once; default: twice Concurrency.
	Prefetch int
	// Concurrency is the number of handlers running at once; default 1.
	Concurrency int
	// DrainTimeout bounds the wait for running handlers when Consume stops;
	// default 30 s. Then their contexts are cancelled.
	DrainTimeout time.Duration
	// SettleTimeout bounds the wait, after that, for the cancelled handlers
	// to return: one that was recording what a webhook answered finishes
	// it rather than leave the answer unknown. Default 15 s.
	SettleTimeout time.Duration
}

func (o ConsumeOptions) withDefaults(t Topology) ConsumeOptions {
	if o.Queue == "" {
		o.Queue = t.Queue
	}
	if o.Concurrency < 1 {
		o.Concurrency = 1
	}
	if o.Prefetch < 1 {
		o.Prefetch = 2 * o.Concurrency
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.SettleTimeout <= 0 {
		o.SettleTimeout = 15 * time.Second
	}
	return o
}

type consumerState int32

const (
	stateStopped consumerState = iota
	stateConsuming
	stateReconnecting
)

// The values ConsumerState returns.
const (
	ConsumerConsuming    = "consuming"
	ConsumerReconnecting = "reconnecting"
	ConsumerStopped      = "stopped"
)

// ConsumerState says what Consume is doing, for the status page:
// "consuming", "reconnecting" (its connection or channel dropped, or it has
// not subscribed yet) or "stopped" (not running, or draining after a stop).
func (c *Client) ConsumerState() string {
	switch consumerState(c.state.Load()) {
	case stateConsuming:
		return ConsumerConsuming
	case stateReconnecting:
		return ConsumerReconnecting
	}
	return ConsumerStopped
}

var consumerSeq atomic.Uint64

// Consume receives deliveries from opts.Queue on its own connection and
// runs handle on them, opts.Concurrency at a time, settling each as handle
// says. It blocks until ctx is cancelled or the Client is closed, and then
// stops gracefully: it cancels the subscription, hands prefetched deliveries
// that no handler started back to the queue, waits up to opts.DrainTimeout
// for running handlers and settles what they return, then cancels the
// handlers' context and waits up to opts.SettleTimeout more, and returns nil.
// Its waits on the broker while stopping (for the cancel's answer, then for
// the channel's close) last stopTimeout each at most: a broker that has not
// answered by then, on a half-open connection say, is left behind, and the
// connection closed without it; the broker requeues what was left
// unacknowledged when it notices.
//
// If the connection or channel drops, Consume re-subscribes with backoff.
// Deliveries received on the dead channel can no longer be settled; the
// broker redelivers them (with Redelivered set), so handlers must be
// idempotent. Consume returns an error only if its first subscription fails
// for a reason retrying cannot fix (the queue does not exist, access is
// refused), or if it is already running on this Client.
func (c *Client) Consume(ctx context.Context, opts ConsumeOptions, handle Handler) error {
	if handle == nil {
		return errors.New("consume: nil handler")
	}
	opts = opts.withDefaults(c.topo)
	if !c.consuming.CompareAndSwap(false, true) {
		return errors.New("consume: already running on this client")
	}
	defer c.consuming.Store(false)

	mc := newManagedConn(c.life, c.uri, "consume", c.topo, c.log)
	if err := c.addConsumerConn(mc); err != nil {
		return err
	}
	defer c.removeConsumerConn(mc)
	c.state.Store(int32(stateReconnecting))
	defer c.state.Store(int32(stateStopped))
	mc.startDown()
	var calls tracker
	defer func() {
		if err := mc.close(); err != nil {
			c.log.Warn("close consume connection", "err", err)
		}
		// Calls to the broker that the stop gave up on return once the
		// connection is closed; none outlives Consume.
		calls.wait()
	}()

	// Consume stops when its ctx ends or the Client closes.
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	stopOnClose := context.AfterFunc(c.consumeStop, cancelRun)
	defer stopOnClose()

	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	jobs := make(chan amqp.Delivery)
	var workers sync.WaitGroup
	for range opts.Concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			c.work(handlerCtx, jobs, handle)
		}()
	}

	ch, silent, err := c.consumeLoop(runCtx, mc, opts, jobs, &calls)
	close(jobs)

	finished := make(chan struct{})
	go func() {
		workers.Wait()
		close(finished)
	}()
	timer := time.NewTimer(opts.DrainTimeout)
	defer timer.Stop()
	select {
	case <-finished:
	case <-timer.C:
		c.log.Warn("consume: drain timeout; cancelling handlers still running",
			"queue", opts.Queue, "drain_timeout", opts.DrainTimeout)
		cancelHandlers()
		settle := time.NewTimer(opts.SettleTimeout)
		select {
		case <-finished:
		case <-settle.C:
			c.log.Warn("consume: handlers still running after the settle timeout; closing their channel",
				"queue", opts.Queue, "settle_timeout", opts.SettleTimeout)
		}
		settle.Stop()
	}
	// Closing the channel returns anything still unacknowledged.
	if ch != nil && !silent {
		silent = !awaitBroker(&calls, func() { _ = ch.Close() })
	}
	if silent {
		c.log.Warn("consume: the broker did not answer the stop in time; closing the connection without waiting for it",
			"queue", opts.Queue, "stop_timeout", stopTimeout)
		mc.abort()
	}
	if err != nil {
		return err
	}
	c.log.Info("consumer stopped", "queue", opts.Queue)
	return nil
}

// consumeLoop subscribes, feeds deliveries to jobs and re-subscribes after a
// drop, until ctx ends. It returns the last channel, subscription cancelled
// and unstarted deliveries requeued, so that the caller can close it once
// the handlers are done acknowledging on it, and whether the broker was
// silent: it did not confirm the cancel within stopTimeout (the call goes on,
// counted in calls, until the connection closes).
func (c *Client) consumeLoop(ctx context.Context, mc *managedConn, opts ConsumeOptions, jobs chan<- amqp.Delivery, calls *tracker) (*amqp.Channel, bool, error) {
	subscribed := false
	for attempt := 0; ; attempt++ {
		c.state.Store(int32(stateReconnecting))
		if !sleep(ctx, backoff(attempt)) {
			return nil, false, nil
		}
		conn, gen, err := mc.get(ctx)
		if err != nil {
			return nil, false, nil // ctx ended or the Client closed
		}
		tag := fmt.Sprintf("rms-%s-%d-%d", opts.Queue, os.Getpid(), consumerSeq.Add(1))
		sub, err := within(ctx, calls, func() (subscription, error) { return subscribe(conn, opts, tag) },
			func(s subscription) { closeChannel(s.ch) })
		if err != nil {
			if ctx.Err() != nil {
				// Stopped while subscribing: a broker that stopped
				// answering keeps the call, in the background, until the
				// connection is closed.
				return nil, false, nil
			}
			if conn.IsClosed() {
				mc.markDown(gen, err)
			}
			if !subscribed && permanent(err) {
				return nil, false, fmt.Errorf("consume queue %q: %w", opts.Queue, err)
			}
			if missingTopology(err) {
				// The queue went away after Consume started.
				mc.redeclare(ctx)
			}
			c.log.Warn("consume: subscribe failed; retrying", "queue", opts.Queue, "attempt", attempt+1, "err", err)
			continue
		}
		ch, deliveries := sub.ch, sub.deliveries
		subscribed = true
		attempt = 0
		c.state.Store(int32(stateConsuming))
		c.log.Info("consuming", "queue", opts.Queue, "prefetch", opts.Prefetch, "concurrency", opts.Concurrency)
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))

		stopped, reason := pump(ctx, deliveries, closes, jobs)
		if stopped {
			c.state.Store(int32(stateStopped))
			answered := awaitBroker(calls, func() {
				if err := ch.Cancel(tag, false); err != nil {
					c.log.Debug("consume: cancel subscription", "err", err)
				}
				// The subscription is cancelled: what is left are
				// deliveries prefetched that no handler took. Requeue them
				// now so that another consumer can have them at once. The
				// range ends when amqp091 has handed them all over, or when
				// the channel closes.
				for d := range deliveries {
					_ = d.Nack(false, true)
				}
			})
			return ch, !answered, nil
		}
		if reason == nil {
			reason = errors.New("subscription cancelled by the broker")
			select {
			case e, ok := <-closes:
				if ok && e != nil {
					reason = e
				}
			default:
			}
		}
		c.log.Warn("consume: subscription lost; re-subscribing", "queue", opts.Queue, "err", reason)
		// A channel the broker cancelled the subscription on is still
		// open, and its close waits for a close-ok: in the background, so
		// that a connection that has stopped answering does not hold the
		// re-subscription, or the stop.
		_ = calls.start(func() { closeChannel(ch) })
	}
}

// stopTimeout bounds each wait on the broker while Consume stops: for the
// cancel-ok of its subscription (and the prefetched deliveries amqp091 hands
// over after it), then for its channel's close-ok. A broker that has not
// answered by then is taken for gone: the connection may be half-open (the
// broker or the network stopped answering, TCP still up), which amqp091
// notices only once it has read nothing for one and a half heartbeat
// intervals (15 s), and a process being stopped, with an orchestrator's kill
// to follow, should not wait that long. It does not bound the handlers: the
// drain and settle timeouts do.
const stopTimeout = 3 * time.Second

// awaitBroker runs call, which waits for the broker, in a goroutine of its
// own and waits up to stopTimeout for it to return; it reports whether it
// did. A call given up on returns once the connection closes: calls counts
// it until then, so that Consume can wait for it rather than leak it.
func awaitBroker(calls *tracker, call func()) bool {
	done := make(chan struct{})
	if !calls.start(func() {
		defer close(done)
		call()
	}) {
		return false
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// subscription is a channel consuming a queue.
type subscription struct {
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
}

// subscribe opens a channel with the prefetch set and starts consuming. It
// waits for the broker three times, with no deadline: consumeLoop runs it
// through within.
func subscribe(conn *amqp.Connection, opts ConsumeOptions, tag string) (subscription, error) {
	ch, err := conn.Channel()
	if err != nil {
		return subscription{}, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Qos(opts.Prefetch, 0, false); err != nil {
		_ = ch.Close()
		return subscription{}, fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(opts.Queue, tag, false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return subscription{}, err
	}
	return subscription{ch: ch, deliveries: deliveries}, nil
}

// permanent reports whether a subscribe error will not go away by retrying.
func permanent(err error) bool {
	var amqpErr *amqp.Error
	if !errors.As(err, &amqpErr) {
		return false
	}
	switch amqpErr.Code {
	case amqp.NotFound, amqp.AccessRefused, amqp.PreconditionFailed, amqp.NotAllowed:
		return true
	}
	return false
}

// pump hands deliveries to the workers until ctx ends (true) or the
// deliveries stop because the channel or subscription ended (false, with
// the channel's error if it closed with one).
//
// A delivery waiting for a free worker when its channel closes is dropped:
// the broker has already put it back, and handed to a worker it would be
// delivered once more than needed (its ack would fail on the dead channel),
// while the consumer put off subscribing again until a worker was free.
func pump(ctx context.Context, deliveries <-chan amqp.Delivery, closes <-chan *amqp.Error, jobs chan<- amqp.Delivery) (stopped bool, reason error) {
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return ctx.Err() != nil, nil
			}
			if ctx.Err() != nil {
				// Both were ready and select chose the delivery: a
				// stopping consumer starts no new work.
				_ = d.Nack(false, true)
				return true, nil
			}
			select {
			case jobs <- d:
			case e, ok := <-closes:
				if ok && e != nil {
					return false, e
				}
				return false, errors.New("channel closed")
			case <-ctx.Done():
				_ = d.Nack(false, true)
				return true, nil
			}
		case <-ctx.Done():
			return true, nil
		}
	}
}

// work runs the handler on each job and settles the delivery.
func (c *Client) work(ctx context.Context, jobs <-chan amqp.Delivery, handle Handler) {
	for d := range jobs {
		action := handle(ctx, toDelivery(d))
		var err error
		switch action {
		case NackRequeue:
			err = d.Nack(false, true)
		case NackDiscard:
			err = d.Nack(false, false)
		default:
			err = d.Ack(false)
		}
		if err != nil {
			// The channel it came on is gone; the broker will redeliver
			// the message, and the handler's idempotency takes care of it.
			c.log.Debug("consume: cannot settle a delivery from a closed channel; the broker will redeliver it",
				"message_id", d.MessageId, "action", action.String(), "err", err)
		}
	}
}

func toDelivery(d amqp.Delivery) Delivery {
	out := Delivery{
		Body:        d.Body,
		MessageID:   d.MessageId,
		ContentType: d.ContentType,
		Timestamp:   d.Timestamp,
		Redelivered: d.Redelivered,
		DeliveryTag: d.DeliveryTag,
	}
	if len(d.Headers) > 0 {
		out.Headers = map[string]any(d.Headers)
		switch n := d.Headers["x-delivery-count"].(type) {
		case int64:
			out.DeliveryCount = n
		case int32:
			out.DeliveryCount = int64(n)
		case int:
			out.DeliveryCount = int64(n)
		}
	}
	return out
}
