// Command processor is the RabbitMQ consumer as an AWS Lambda function,
// invoked by the Amazon MQ event source with batches of queued messages.
package main

import (
	"context"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

func main() {
	a, emf := app.MustOpenLambda(context.Background(), "processor", os.Getenv, os.Stdout)
	p, err := a.Processor()
	if err != nil {
		app.Fatal(a.Logger, "processor setup", err)
	}
	reserve := processor.StartReserve(p.MaxInlineWait, a.Config.WebhookTimeout)
	// A batch that a store failed waits before it goes back, up to 30 s:
	// the event source mapping invokes one batch at a time, so the wait
	// holds off the whole consumer during an outage.
	batches := &processor.Batches{Processor: p, Concurrency: a.Config.ProcessorConcurrency, Reserve: reserve,
		Pause: processor.Backoff{Max: 30 * time.Second}}
	lambda.Start(func(ctx context.Context, ev events.RabbitMQEvent) (processor.BatchSummary, error) {
		defer emf.Flush()
		defer emf.FlushBefore(ctx, 500*time.Millisecond)()
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < reserve {
			a.Logger.Error("invocation too short to start a delivery: the function's timeout must exceed WEBHOOK_TIMEOUT plus 15 s by a batch's time at least",
				"time_left", time.Until(dl).Round(time.Millisecond), "needed", reserve)
		}
		sum, err := batches.Handle(ctx, ev)
		// The webhook's health as this instance's breaker sees it: in
		// AWS there is no processor status endpoint to ask.
		circuitOpen := 0.0
		if a.BreakerState() == "open" {
			circuitOpen = 1
		}
		emf.Set("circuit_open", circuitOpen, "None")
		if err != nil {
			a.Logger.Error("batch incomplete; Lambda will redeliver it", "summary", sum, "error", err)
			return sum, err
		}
		a.Logger.Info("batch processed", "summary", sum)
		return sum, nil
	})
}
