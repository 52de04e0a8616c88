// Command api is the REST API as an AWS Lambda function behind API Gateway
// (REST API, payload v1). It serves the same http.Handler as local mode.
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/awslabs/aws-lambda-go-api-proxy/httpadapter"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
)

func main() {
	// Clients are built once per execution environment, outside the
	// handler, and reused by every invocation.
	a := app.MustOpenLambda(context.Background(), os.Getenv, os.Stdout)
	sched := a.LocalScheduler()
	adapter := httpadapter.New(a.APIHandler(sched, sched.Gate()))
	lambda.Start(adapter.ProxyWithContext)
}
