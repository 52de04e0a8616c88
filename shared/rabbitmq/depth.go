package rabbitmq

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
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
	// Close waits for a call given up on, which returns once the
	// connection is closed at the latest.
	depths, err := within(ctx, &c.discards, func() ([]QueueDepth, error) { return c.depths(conn) }, func([]QueueDepth) {})
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("inspect queues: %w", err)
	}
	return depths, err
}

// depths reads the depths on a channel of its own on conn.
func (c *Client) depths(conn *amqp.Connection) ([]QueueDepth, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	var depths []QueueDepth
	for _, name := range []string{c.topo.Queue, c.topo.DeadLetterQueue} {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			return depths, fmt.Errorf("inspect queue %q: %w", name, err)
		}
		depths = append(depths, QueueDepth{Queue: name, Ready: q.Messages, Consumers: q.Consumers})
	}
	return depths, nil
}
