// Command publisher is the outbox publisher as an AWS Lambda function,
// invoked by an EventBridge schedule: one bounded relay pass, with the
// stale-message sweep, per invocation.
package main

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func main() {
	a, emf := app.MustOpenLambda(context.Background(), "publisher", os.Getenv, os.Stdout)
	// The schedule is the on/off switch in Lambda: being invoked means it
	// is enabled, so the relay needs no gate.
	// One invocation is one pass; the function's timeout bounds it, and
	// ReservedConcurrentExecutions 1 keeps a second from starting.
	a.RelayLeaseTTL = time.Minute
	relay := a.Relay(nil)
	lambda.Start(func(ctx context.Context, _ json.RawMessage) (outbox.Summary, error) {
		defer emf.Flush()
		sum, err := relay.Pass(ctx)
		if err != nil {
			a.Logger.Error("relay pass failed", "summary", sum, "error", err)
			return sum, err
		}
		a.Logger.Info("relay pass", "summary", sum)
		return sum, nil
	})
}
