// Command publisher is the outbox publisher as an AWS Lambda function,
// invoked by an EventBridge schedule: relay passes, with the stale-message
// sweep, every PUBLISH_INTERVAL for PUBLISH_WINDOW (one pass if 0).
package main

import (
	"context"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/ebscheduler"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/metrics"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func main() {
	a, emf := app.MustOpenLambda(context.Background(), "publisher", os.Getenv, os.Stdout)
	// The schedule is the on/off switch in Lambda: being invoked means it
	// is enabled, so the first pass needs no gate. The schedule runs at
	// most once a minute, so passes go on every PUBLISH_INTERVAL for
	// PUBLISH_WINDOW: retries and sendAt messages wait seconds rather than
	// for the next run. The function's timeout bounds that, and
	// ReservedConcurrentExecutions 1 keeps a second invocation from
	// starting. The later passes stop once the schedule is disabled (POST
	// /scheduler/stop), read at most every few seconds: from EventBridge
	// Scheduler with SCHEDULE_NAME set, else (under the Lambda emulator)
	// from MongoDB, as in local mode.
	a.RelayLeaseTTL = time.Minute
	relay := a.Relay(nil)
	// Each invocation gets a gate that has read nothing yet: a "stopped"
	// cached by the previous run, seconds old, would end this one after
	// its first pass although the schedule was started since.
	newGate := func() outbox.Gate { return a.LocalScheduler().Gate() }
	if a.Config.ScheduleName != "" {
		s, err := ebscheduler.NewFromEnvironment(os.Getenv, a.Config.ScheduleName, a.Config.ScheduleGroup)
		if err != nil {
			app.Fatal(a.Logger, "scheduler client", err)
		}
		newGate = func() outbox.Gate {
			s.ForgetGate()
			return s.Gate()
		}
	}
	// The handler takes no payload: what the schedule sends (its Input,
	// or the default notification it sends without one) says nothing the
	// run needs, and a payload the runtime could not decode (an empty
	// one, say) must not fail every run.
	lambda.Start(func(ctx context.Context) (outbox.Summary, error) {
		defer emf.Flush()
		defer emf.FlushBefore(ctx, 500*time.Millisecond)()
		// A failed pass is logged where it fails; the invocation fails
		// only if its last pass did.
		sum, err := relay.RunFor(ctx, a.Config.PublishWindow, a.Config.PublishInterval, 5*time.Second, newGate())
		a.Logger.Info("relay passes", "summary", sum, "failed", err != nil)
		// Written at 0 too, so that an alarm on it has data to judge.
		emf.Add("relay_pass_failures", sum.FailedPasses)
		reportBacklog(ctx, a, emf)
		return sum, err
	})
}

// reportBacklog sets the gauges an operator alarms on in CloudWatch, read
// once per invocation: the outbox's due backlog and the age of its oldest
// entry (is the relay behind?), the FAILED messages (dead letters), and the
// messages ready in the queue and in the dead-letter queue (are the
// processors behind?). A read that fails leaves its gauges out; the relay's
// own errors are logged.
func reportBacklog(ctx context.Context, a *app.App, emf *metrics.EMF) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if n, oldest, err := a.Store.OutboxStats(ctx, a.Now()); err == nil {
		age := 0.0
		if !oldest.IsZero() {
			age = max(a.Now().Sub(oldest).Seconds(), 0)
		}
		emf.Set("outbox_backlog", float64(n), "Count")
		emf.Set("outbox_oldest_age", age, "Seconds")
	}
	if n, err := a.FailedMessages(ctx); err == nil {
		emf.Set("failed_messages", float64(n), "Count")
	}
	if qs, err := a.Rabbit.QueueDepths(ctx); err == nil {
		for _, q := range qs {
			name := "queue_ready"
			if q.Queue == a.Config.DeadLetterQueue {
				name = "dead_letter_queue_ready"
			}
			emf.Set(name, float64(q.Ready), "Count")
		}
	}
}
