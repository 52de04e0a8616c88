package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// lambdaFunctions are the bootstraps `make build` writes.
var lambdaFunctions = []string{"api", "publisher", "processor"}

// eventSize is the number of records in one Amazon MQ event.
const eventSize = 100

// lambda reports the bootstraps' sizes and times the processor function's
// handler on a warm 100-message event.
func (b *bench) lambda(ctx context.Context) {
	r := b.rep
	r.section("Lambda")
	for _, fn := range lambdaFunctions {
		path := filepath.Join(b.opts.LambdaDir, fn, "bootstrap")
		fi, err := os.Stat(path)
		if err != nil {
			r.line(fn+" bootstrap", "not built (make build)")
			r.set("bootstrap_mb_"+fn, nil)
			continue
		}
		mb := float64(fi.Size()) / 1e6
		r.set("bootstrap_mb_"+fn, mb)
		r.check(path, fmt.Sprintf("%.1f MB", mb), "<= 15 MB", mb <= targetBootstrap)
	}
	if err := b.lambdaProcessor(ctx); err != nil {
		for _, k := range []string{"ms_per_event", "ms_per_msg", "delivered_pct"} {
			r.set("lambda_processor_"+k, nil)
		}
		r.fail("Lambda processor event", err)
	}
}

// lambdaProcessor opens an App as the processor function does at cold start
// (its own database, exchange and queues, the same services and webhook
// sink), seeds eventSize new messages before each invocation, so that every
// record is a real delivery, and times HandleRabbitMQEvent in-process.
func (b *bench) lambdaProcessor(ctx context.Context) error {
	o := b.opts
	b.logf("lambda: processor on a %d-record event, 1 warm-up + %d timed invocations", eventSize, o.Invocations)
	over := map[string]string{
		"MONGODB_URI":       b.stack.mongoURI,
		"MONGODB_DATABASE":  b.names.lambda(),
		"RABBITMQ_URI":      b.rabbitURI(),
		"RABBITMQ_EXCHANGE": b.names.lambda(),
		"RABBITMQ_QUEUE":    b.names.lambda(),
		"RABBITMQ_DLQ":      b.names.lambdaDLQ(),
		"REDIS_URI":         b.redisAddr(),
		"REDIS_KEY_PREFIX":  b.names.lambdaRedisPrefix(),
		"WEBHOOK_URL":       b.sink.url,
		"SCHEDULE_NAME":     "",
		"API_KEY":           "",
	}
	cfg, err := config.Load(func(k string) string {
		if v, ok := over[k]; ok {
			return v
		}
		return b.getenv(k)
	})
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	b.onCleanup(func(ctx context.Context) {
		deleteQueues(ctx, b.rabbitURI(), b.names.lambda(), b.names.lambda(), b.names.lambdaDLQ())
		dropDatabase(ctx, b.stack.mongoURI, b.names.lambda())
	})
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.Open(octx, cfg, logger)
	if err != nil {
		return err
	}
	defer a.Close(context.WithoutCancel(ctx))
	p, err := a.Processor()
	if err != nil {
		return err
	}
	// The gate is closed: seeding must not publish, the event is the only
	// copy of each message.
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	reserve := cfg.WebhookTimeout + 3*time.Second

	var total time.Duration
	delivered, seq := 0, 0
	for inv := 0; inv <= o.Invocations; inv++ {
		ev := events.RabbitMQEvent{EventSource: "aws:rmq", MessagesByQueue: map[string][]events.RabbitMQMessage{}}
		key := cfg.Queue + "::/"
		for range eventSize {
			m, _, err := svc.Create(ctx, message.CreateRequest{To: fmt.Sprintf("+90556%07d", seq), Content: fmt.Sprintf("Lambda benchmark message %d", seq)}, "")
			seq++
			if err != nil {
				return fmt.Errorf("seed a message: %w", err)
			}
			body, _ := json.Marshal(message.Envelope{ID: m.ID, Seq: m.Seq, PublishedAt: time.Now().UTC()})
			ev.MessagesByQueue[key] = append(ev.MessagesByQueue[key], events.RabbitMQMessage{
				BasicProperties: events.RabbitMQBasicProperties{ContentType: "application/json", DeliveryMode: 2, BodySize: uint64(len(body))},
				Data:            base64.StdEncoding.EncodeToString(body),
			})
		}
		// A Lambda invocation's deadline, as the function's timeout sets it.
		ictx, icancel := context.WithTimeout(ctx, 60*time.Second)
		t0 := time.Now()
		sum, err := p.HandleRabbitMQEvent(ictx, ev, cfg.ProcessorConcurrency, reserve)
		took := time.Since(t0)
		icancel()
		if err != nil {
			return fmt.Errorf("invocation %d: %w (%+v)", inv, err, sum)
		}
		if inv == 0 {
			b.logf("lambda: warm-up invocation %s, outcomes %v", took.Round(time.Millisecond), sum.Outcomes)
			continue
		}
		total += took
		delivered += sum.Outcomes[message.OutcomeDelivered]
	}
	mean := total / time.Duration(o.Invocations)
	r := b.rep
	r.set("lambda_processor_ms_per_event", ms(mean))
	r.set("lambda_processor_ms_per_msg", ms(mean)/eventSize)
	r.set("lambda_processor_delivered_pct", 100*float64(delivered)/float64(eventSize*o.Invocations))
	r.line(fmt.Sprintf("processor, warm, %d-message event (mean of %d)", eventSize, o.Invocations),
		fmt.Sprintf("%.1f ms (%.2f ms/msg, %d of %d delivered)", ms(mean), ms(mean)/eventSize, delivered, eventSize*o.Invocations))
	return nil
}

func dropDatabase(ctx context.Context, uri, db string) {
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(2 * time.Second))
	if err != nil {
		return
	}
	defer func() { _ = c.Disconnect(context.WithoutCancel(ctx)) }()
	_ = c.Database(db).Drop(ctx)
}
