// Package rabbitmq is the RabbitMQ adapter: it declares the topology, publishes
// envelopes and dead letters with publisher confirms, and consumes the main
// queue with manual acknowledgements. amqp091-go does not reconnect by
// itself, so a Client watches its connections and re-dials them with capped,
// jittered exponential backoff.
package rabbitmq

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Topology names the exchange and queues the system uses.
type Topology struct {
	// Exchange is a durable direct exchange; the main queue is bound to it
	// with its own name as the routing key.
	Exchange string
	// Queue is the durable quorum queue the processor consumes.
	Queue string
	// DeadLetterQueue is the durable quorum queue that receives dead-letter
	// notifications, published through the default exchange.
	DeadLetterQueue string
}

func (t Topology) validate() error {
	switch {
	case t.Exchange == "":
		return errors.New("rabbitmq topology: exchange name is empty")
	case t.Queue == "":
		return errors.New("rabbitmq topology: queue name is empty")
	case t.DeadLetterQueue == "":
		return errors.New("rabbitmq topology: dead-letter queue name is empty")
	case t.Queue == t.DeadLetterQueue:
		return fmt.Errorf("rabbitmq topology: queue and dead-letter queue are both %q", t.Queue)
	}
	return nil
}

// quorumArgs makes a queue a quorum queue: replicated and durable, the kind
// RabbitMQ recommends for messages that must not be lost.
func quorumArgs() amqp.Table { return amqp.Table{"x-queue-type": "quorum"} }

// Declare makes sure t exists on the broker: a durable direct exchange, a
// durable quorum queue bound to it with the queue's name as routing key, and
// a durable quorum dead-letter queue. It is idempotent.
//
// RabbitMQ cannot change an existing queue or exchange: if one exists with
// different arguments (a classic queue of the same name, say), Declare
// returns an error that says so and how to fix it. The broker closes ch on
// such an error, so ch must not be used afterwards. If ctx ends first,
// Declare returns ctx's error and ch should be discarded, since a reply may
// still be on its way.
func Declare(ctx context.Context, ch *amqp.Channel, t Topology) error {
	if err := t.validate(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- declare(ch, t) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("declare rabbitmq topology: %w", ctx.Err())
	}
}

func declare(ch *amqp.Channel, t Topology) error {
	if err := ch.ExchangeDeclare(t.Exchange, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
		return explainDeclare("exchange", t.Exchange, "a durable direct exchange", err)
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, quorumArgs()); err != nil {
		return explainDeclare("queue", t.Queue, "a durable quorum queue", err)
	}
	if err := ch.QueueBind(t.Queue, t.Queue, t.Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %q to exchange %q: %w", t.Queue, t.Exchange, err)
	}
	if _, err := ch.QueueDeclare(t.DeadLetterQueue, true, false, false, false, quorumArgs()); err != nil {
		return explainDeclare("queue", t.DeadLetterQueue, "a durable quorum queue", err)
	}
	return nil
}

// explainDeclare turns the broker's PRECONDITION_FAILED into advice: the
// usual cause is a queue created earlier by another version of the system.
func explainDeclare(kind, name, want string, err error) error {
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) && amqpErr.Code == amqp.PreconditionFailed {
		fix := fmt.Sprintf("delete it (rabbitmqctl delete_queue %s; move its messages first if they matter) or configure another queue name; "+
			"set a delivery limit or any other queue setting with a policy, not a queue argument", name)
		if kind == "exchange" {
			fix = fmt.Sprintf("delete it (rabbitmqadmin delete exchange name=%s, or the management UI) or configure another exchange name", name)
		}
		return fmt.Errorf("declare %s %q: PRECONDITION_FAILED: it already exists with different arguments, but must be %s (%s); %s: %w",
			kind, name, want, amqpErr.Reason, fix, err)
	}
	return fmt.Errorf("declare %s %q: %w", kind, name, err)
}
