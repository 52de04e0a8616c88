package rabbitmq

import (
	"context"
	"fmt"
)

// QueueDepth is what the broker reports of one queue.
type QueueDepth struct {
	Queue string
	// Ready counts the messages waiting for a consumer; those delivered
	// and not yet acknowledged are not among them.
	Ready     int
	Consumers int
}

// QueueDepths reads the depth of the queue and of the dead-letter queue,
// with a passive declare of each on a channel of its own: one that neither
// creates a queue nor changes one. It gives up when ctx ends; a broker
// that does not answer leaves its channel to close with the connection.
// While the broker blocks the publishing connection (a memory or disk
// alarm) it returns an error at once: the broker reads nothing from that
// connection until the alarm clears, and each call would leave a channel
// open waiting until then.
func (c *Client) QueueDepths(ctx context.Context) ([]QueueDepth, error) {
	conn, _, err := c.pub.get(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.pub.blockedErr(); err != nil {
		return nil, fmt.Errorf("inspect queues: %w", err)
	}
	type result struct {
		depths []QueueDepth
		err    error
	}
	done := make(chan result, 1)
	// Close waits for the goroutine, which returns once the connection
	// is closed at the latest.
	if !c.discards.start(func() {
		ch, err := conn.Channel()
		if err != nil {
			done <- result{err: fmt.Errorf("open channel: %w", err)}
			return
		}
		defer ch.Close()
		var r result
		for _, name := range []string{c.topo.Queue, c.topo.DeadLetterQueue} {
			q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
			if err != nil {
				r.err = fmt.Errorf("inspect queue %q: %w", name, err)
				break
			}
			r.depths = append(r.depths, QueueDepth{Queue: name, Ready: q.Messages, Consumers: q.Consumers})
		}
		done <- r
	}) {
		return nil, ErrClosed
	}
	select {
	case r := <-done:
		return r.depths, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("inspect queues: %w", ctx.Err())
	}
}
