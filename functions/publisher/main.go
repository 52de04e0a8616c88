// Command publisher is the outbox publisher as an AWS Lambda function,
// invoked by an EventBridge schedule: one bounded relay pass and the
// stale-message sweep per invocation.
package main

import (
	"context"
	"encoding/json"
	"os"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func main() {
	a := app.MustOpenLambda(context.Background(), os.Getenv, os.Stdout)
	// The schedule itself is the on/off switch in Lambda: an invocation
	// means it is started.
	relay := a.Relay(nil)
	lambda.Start(func(ctx context.Context, _ json.RawMessage) (outbox.Summary, error) {
		sum, err := relay.Pass(ctx)
		a.Logger.Info("relay pass", "summary", sum, "error", err)
		return sum, err
	})
}
