package processor

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/events"
)

// BatchSummary is what one Amazon MQ event did, for the logs.
type BatchSummary struct {
	Records  int            `json:"records"`
	Outcomes map[string]int `json:"outcomes"`
	// NotRecorded counts records whose outcome could not be recorded (a
	// store failed), and NotStarted those left for lack of time before the
	// invocation's deadline. Either way the whole batch is returned as
	// failed and redelivered.
	NotRecorded int `json:"notRecorded"`
	NotStarted  int `json:"notStarted"`
}

// ErrBatchIncomplete is returned when some outcome could not be recorded.
var ErrBatchIncomplete = errors.New("some outcomes could not be recorded; the batch will be redelivered")

// HandleRabbitMQEvent processes every record of an Amazon MQ for RabbitMQ
// event, at most concurrency at a time. Lambda has no partial-batch
// response for MQ and redelivers the whole batch on error, so each record's
// outcome is decided and recorded here, and an error is returned only when
// an outcome could not be recorded. The redelivered batch then finds the
// finished records done (inbox and status) and delivers nothing twice.
//
// A record is not started when the invocation has less than reserve left
// before its deadline (NotStarted), so that no delivery is cut off between
// the webhook's answer and its record.
func (p *Processor) HandleRabbitMQEvent(ctx context.Context, ev events.RabbitMQEvent, concurrency int, reserve time.Duration) (BatchSummary, error) {
	sum := BatchSummary{Outcomes: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(concurrency, 1))
	add := func(r Result) {
		mu.Lock()
		defer mu.Unlock()
		if r.Action == Requeue && errors.Is(r.Err, errDeadlineRunningOut) {
			sum.NotStarted++ // not a store's failure: no pause
			return
		}
		if r.Action == Requeue {
			if r.Err != nil {
				p.Logger.Warn("delivery not recorded; the batch will be redelivered", "message_id", r.MessageID, "error", r.Err)
			}
			sum.NotRecorded++
			return
		}
		sum.Outcomes[r.Outcome]++
	}
	for _, msgs := range ev.MessagesByQueue {
		for _, rec := range msgs {
			sum.Records++
			// The time left is read once a slot is free: the wait for
			// one can take a whole delivery.
			sem <- struct{}{}
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < reserve {
				<-sem
				mu.Lock()
				sum.NotStarted++
				mu.Unlock()
				continue
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				body, err := base64.StdEncoding.DecodeString(rec.Data)
				if err != nil {
					add(p.deadLetterMalformed(ctx, []byte(rec.Data), fmt.Errorf("data is not base64: %w", err)))
					return
				}
				add(p.Handle(ctx, body, rec.Redelivered))
			}()
		}
	}
	wg.Wait()
	if sum.NotRecorded > 0 || sum.NotStarted > 0 {
		return sum, ErrBatchIncomplete
	}
	return sum, nil
}

// Batches handles the batches of one Amazon MQ event source mapping, which
// invokes a function for RabbitMQ one batch at a time and hands a failed
// batch straight back. When records of a batch could not be recorded
// because a store is failing, Handle waits (Pause) before it returns the
// batch, so that an outage of MongoDB, Redis or the broker does not turn
// into redeliveries as fast as Lambda can invoke: each one costs an
// invocation and, on RabbitMQ 4, counts toward the quorum queue's delivery
// limit. The wait ends a second before the invocation's deadline. A batch
// cut short only by that deadline (NotStarted) is handed back at once.
type Batches struct {
	Processor   *Processor
	Concurrency int
	// Reserve is the time a record needs before the deadline to be started.
	Reserve time.Duration
	// Pause grows from one failed batch to the next, in this warm
	// instance, and starts over after a batch whose stores all answered.
	Pause Backoff
}

// Handle runs HandleRabbitMQEvent on ev, then waits when a store failed.
func (b *Batches) Handle(ctx context.Context, ev events.RabbitMQEvent) (BatchSummary, error) {
	sum, err := b.Processor.HandleRabbitMQEvent(ctx, ev, b.Concurrency, b.Reserve)
	if sum.NotRecorded == 0 {
		b.Pause.Reset()
		return sum, err
	}
	wctx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Second))
		defer cancel()
	}
	b.Pause.Wait(wctx)
	return sum, err
}
