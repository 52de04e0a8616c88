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
	// NotRecorded counts records whose outcome could not be recorded; the
	// whole batch is then returned as failed and redelivered.
	NotRecorded int `json:"notRecorded"`
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
// before its deadline: it counts as not recorded, so that no delivery is cut
// off between the webhook's answer and its record.
func (p *Processor) HandleRabbitMQEvent(ctx context.Context, ev events.RabbitMQEvent, concurrency int, reserve time.Duration) (BatchSummary, error) {
	sum := BatchSummary{Outcomes: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(concurrency, 1))
	add := func(r Result) {
		mu.Lock()
		defer mu.Unlock()
		if r.Action == Requeue {
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
				add(Result{Action: Requeue, Err: errors.New("too close to the invocation deadline")})
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
	if sum.NotRecorded > 0 {
		return sum, ErrBatchIncomplete
	}
	return sum, nil
}
