// Command api is the REST API as an AWS Lambda function behind API Gateway
// (REST API, payload v1). It serves the same http.Handler as local mode.
package main

import (
	"context"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/ebscheduler"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func main() {
	// Clients are built once per execution environment, outside the
	// handler, and reused by every invocation.
	ctx := context.Background()
	a, emf := app.MustOpenLambda(ctx, "api", os.Getenv, os.Stdout)

	// With SCHEDULE_NAME set, the scheduler routes toggle the EventBridge
	// schedule that invokes the publisher; without it (a test under the
	// Lambda emulator), the state lives in MongoDB as in local mode.
	var sched interface {
		httpapi.Scheduler
		Gate() outbox.Gate
	} = a.LocalScheduler()
	if a.Config.ScheduleName != "" {
		s, err := ebscheduler.NewFromEnvironment(os.Getenv, a.Config.ScheduleName, a.Config.ScheduleGroup)
		if err != nil {
			app.Fatal(a.Logger, "scheduler client", err)
		}
		sched = s
	}
	// Not wrapped in httpapi.ServedDirectly, unlike local mode's: API
	// Gateway checks the API key (API_KEY is not set here) and every
	// request carries its domain as Host, which that wrapper's keyless
	// checks would refuse.
	handle := proxy(withPathPrefix(a.APIHandler(sched, sched.Gate()), a.Config.APIBasePath), a.Logger)
	lambda.Start(func(ctx context.Context, req events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
		defer emf.Flush()
		defer emf.FlushBefore(ctx, 500*time.Millisecond)()
		return handle(ctx, req)
	})
}
