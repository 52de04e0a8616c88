// Command echo is a Lambda function for the tests of package lambdarie. Its
// event says what to do: {"do":"echo"|"env"|"error"|"panic"|"sleep"}.
package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
)

type event struct {
	Do    string `json:"do"`
	Value string `json:"value"`
}

type response struct {
	Value string   `json:"value,omitempty"`
	Env   []string `json:"env,omitempty"`
	PID   int      `json:"pid"`
}

func main() {
	if os.Getenv("ECHO_FAIL_INIT") != "" {
		os.Stderr.WriteString("cold start failed on purpose\n")
		os.Exit(1)
	}
	lambda.Start(func(ctx context.Context, ev event) (response, error) {
		switch ev.Do {
		case "env":
			var names []string
			for _, kv := range os.Environ() {
				names = append(names, strings.SplitN(kv, "=", 2)[0])
			}
			return response{Env: names, PID: os.Getpid()}, nil
		case "error":
			return response{}, errors.New(ev.Value)
		case "panic":
			panic(ev.Value)
		case "sleep":
			select {
			case <-time.After(time.Minute):
			case <-ctx.Done():
				time.Sleep(time.Minute) // outlive the deadline, like a stuck handler
			}
		}
		return response{Value: ev.Value, PID: os.Getpid()}, nil
	})
}
