// Package app wires the adapters and roles together from a Config. Both
// faces call it: the local binary (local/) and the three Lambda functions
// (functions/). It connects to MongoDB, RabbitMQ and Redis once, and hands
// out the API handler, the relay and the processor built on those clients.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/metrics"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/mongostore"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/webhook"
)

// App holds the connected clients of one process.
type App struct {
	Config config.Config
	Logger *slog.Logger
	Store  *mongostore.Store
	Rabbit *rabbitmq.Client
	Redis  *redisstore.Store
	Now    func() time.Time
	// Observe, if set, receives the counts of what the roles do (accepted,
	// published, delivered, retried, dead_lettered, ...): EMF lines in
	// Lambda, Prometheus counters in local mode.
	Observe func(event string, n int)
	// RelayLeaseTTL is how long one relay pass may hold the lease; a pass
	// ends its work in time to record its last batch before the lease
	// expires (see outbox.Relay.LeaseTTL). A publisher killed while
	// holding it delays the next pass by at most this long.
	RelayLeaseTTL time.Duration
	// Timing, if set, receives the processor's latencies.
	Timing func(kind string, d time.Duration)

	// breaker is made by the first Processor call, which the status and
	// metrics routes may race (they serve before the processor starts).
	breaker atomic.Pointer[sharedBreaker]
	guards  *guards
	// lastAlert is when the dead-letter count was last checked, lastWarn
	// when it was last logged above its threshold (UnixNano).
	lastAlert atomic.Int64
	lastWarn  atomic.Int64
}

// Open connects to MongoDB (cfg.MongoURI must be set), RabbitMQ and Redis,
// declares the broker topology and the database indexes (both idempotent),
// and returns the App. Redis being down is not an error: the system runs
// degraded without it.
func Open(ctx context.Context, cfg config.Config, logger *slog.Logger) (*App, error) {
	if cfg.MongoURI == "" {
		return nil, errors.New("MONGODB_URI: not set (local mode starts the embedded MongoDB first)")
	}
	a := &App{Config: cfg, Logger: logger, Now: now, RelayLeaseTTL: 20 * time.Second}
	// Start-up never waits forever on a dependency that accepts
	// connections but does not answer.
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	var err error
	if a.Store, err = mongostore.Open(ctx, cfg.MongoURI, cfg.MongoDatabase); err != nil {
		if errors.Is(err, mongostore.ErrBadURI) || errors.Is(err, mongostore.ErrRefused) {
			return nil, fmt.Errorf("MONGODB_URI: connect to mongodb: %w (%w)", err, ErrMisconfigured)
		}
		return nil, fmt.Errorf("connect to mongodb: %w", err)
	}
	if err := a.Store.EnsureIndexes(ctx); err != nil {
		a.Close(ctx)
		return nil, fmt.Errorf("ensure mongodb indexes: %w", err)
	}
	topo := rabbitmq.Topology{Exchange: cfg.Exchange, Queue: cfg.Queue, DeadLetterQueue: cfg.DeadLetterQueue}
	if a.Rabbit, err = rabbitmq.Dial(ctx, cfg.RabbitURI, topo, logger); err != nil {
		a.Close(ctx)
		if rabbitmq.Permanent(err) {
			return nil, fmt.Errorf("RABBITMQ_URI: connect to rabbitmq: %w (%w)", err, ErrMisconfigured)
		}
		return nil, fmt.Errorf("connect to rabbitmq: %w", err)
	}
	redisstore.SetClientLogger(logger)
	if a.Redis, err = redisstore.Open(ctx, cfg.Redis(), cfg.RedisKeyPrefix); err != nil {
		a.Close(ctx)
		return nil, fmt.Errorf("set up redis client: %w", err)
	}
	a.guards = &guards{redis: a.Redis, mongo: a.Store, logger: logger,
		standInKeep: a.Config.TakenTTL()}
	if err := a.Redis.Ping(ctx); err != nil {
		logger.Warn("redis is unreachable; running degraded until it answers", "error", err)
	}
	return a, nil
}

// ErrMisconfigured marks an Open error that waiting for the dependency
// will not fix: a URI its driver refuses, credentials or a virtual host the
// broker refuses, a queue that exists with other arguments. The error names
// the variable to change.
var ErrMisconfigured = errors.New("retrying will not help: fix the setting")

// openTimeout bounds Open.
const openTimeout = 30 * time.Second

// lambdaInitTimeout bounds Open at a Lambda cold start, inside the 10 s
// Lambda gives a function's init. Past those, Lambda stops the init
// without a word of why and runs it again inside the first invocation,
// whose caller waits for the function's whole timeout (API Gateway then
// answers its own 504). Failing first, the cold start logs which
// dependency did not answer.
const lambdaInitTimeout = 8 * time.Second

// Close closes every client that was opened.
func (a *App) Close(ctx context.Context) {
	if a.Rabbit != nil {
		_ = a.Rabbit.Close()
	}
	if a.Redis != nil {
		_ = a.Redis.Close()
	}
	if a.Store != nil {
		_ = a.Store.Close(ctx)
	}
}

// Retry returns the retry policy of the configuration.
func (a *App) Retry() message.RetryPolicy {
	return message.RetryPolicy{MaxRetries: a.Config.MaxRetries, BaseDelay: a.Config.RetryBaseDelay, MaxDelay: a.Config.RetryMaxDelay, Jitter: 0.2}
}

// Service returns the message service behind the API. gate says whether the
// publisher's schedule is started (the fast path publishes only then, and
// never with FAST_PATH=false).
func (a *App) Service(gate outbox.Gate) *outbox.Service {
	if !a.Config.FastPath {
		gate = func(context.Context) (bool, error) { return false, nil }
	}
	return &outbox.Service{
		Store:            a.Store,
		Publisher:        a.Rabbit,
		Gate:             gate,
		NewID:            newID,
		Now:              a.Now,
		Logger:           a.Logger,
		MaxContentLength: a.Config.MaxContentLength,
		FastPathGrace:    fastPathGrace,
		IdempotencyTTL:   mongostore.IdempotencyTTL,
		InProgressWindow: 30 * time.Second,
		FastPathTimeout:  time.Second,
		Observe:          a.Observe,
	}
}

// fastPathGrace is how long the relay leaves a new message to the API's
// fast path. It is far longer than a publish takes, and short enough that
// a message whose fast path failed is soon published by the relay.
const fastPathGrace = 10 * time.Second

// Relay returns the outbox relay.
func (a *App) Relay(gate outbox.Gate) *outbox.Relay {
	return &outbox.Relay{
		Store:         a.Store,
		Publisher:     a.Rabbit,
		Lease:         a.guards,
		Inbox:         a.guards,
		DeadLetters:   a.Rabbit,
		Gate:          gate,
		Retry:         a.Retry(),
		BatchSize:     a.Config.BatchSize,
		LeaseTTL:      a.RelayLeaseTTL,
		StaleDuration: a.Config.StaleDuration,
		SweepEvery:    a.Config.StaleDuration / 8,
		Now:           a.Now,
		Logger:        a.Logger,
		Observe:       a.observe,
	}
}

// observe passes a count on to Observe, and checks the dead-letter count
// against DLQ_ALERT_THRESHOLD when a message failed: in the processor, or
// in the stale sweep.
func (a *App) observe(event string, n int) {
	if a.Observe != nil {
		a.Observe(event, n)
	}
	if event == "dead_lettered" {
		a.alertDeadLetters()
	}
}

// Processor returns the per-message processor with its webhook client,
// circuit breaker and outbound rate limit.
func (a *App) Processor() (*processor.Processor, error) {
	sender, err := webhook.New(webhook.Options{URL: a.Config.WebhookURL, Timeout: a.Config.WebhookTimeout, Secret: a.Config.WebhookSecret, Now: a.Now})
	if err != nil {
		return nil, fmt.Errorf("webhook client: %w", err)
	}
	br := a.breaker.Load()
	if br == nil {
		b := &sharedBreaker{redis: a.Redis, cooldown: a.Config.BreakerCooldown, now: time.Now}
		b.local = processor.NewLocalBreaker(processor.BreakerSettings{
			Name:         "webhook",
			FailureRatio: a.Config.BreakerFailureRatio,
			MinRequests:  a.Config.BreakerMinRequests,
			Window:       a.Config.BreakerWindow,
			Cooldown:     a.Config.BreakerCooldown,
			OnStateChange: func(from, to string) {
				a.Logger.Warn("webhook circuit breaker changed state", "from", from, "to", to)
				if to == "open" {
					b.opened()
				}
			},
		})
		br = b
		if !a.breaker.CompareAndSwap(nil, b) {
			br = a.breaker.Load() // another call made it first
		}
	}
	p := &processor.Processor{
		Store:           a.Store,
		Inbox:           a.guards,
		Sender:          sender,
		DeadLetters:     a.Rabbit,
		Breaker:         br,
		Retry:           a.Retry(),
		ClaimTTL:        a.Config.ClaimTTL(),
		CallReserve:     a.Config.WebhookTimeout + processor.RecordTimeout/2,
		InboxTTL:        a.Config.InboxTTL,
		TakenTTL:        a.Config.TakenTTL(),
		BreakerCooldown: a.Config.BreakerCooldown,
		MaxInlineWait:   MaxInlineWait,
		Now:             a.Now,
		Logger:          a.Logger,
		Timing:          a.Timing,
		Observe:         a.observe,
	}
	if a.Config.WebhookRateLimit > 0 {
		local := rate.NewLimiter(rate.Limit(a.Config.WebhookRateLimit), a.Config.WebhookRateBurst)
		p.Limiter = redisstore.NewLimiter(a.Redis, "webhook", a.Config.WebhookRateLimit, a.Config.WebhookRateBurst, local, a.Logger)
	}
	return p, nil
}

// BreakerState returns the webhook circuit breaker's state in this process.
func (a *App) BreakerState() string {
	b := a.breaker.Load()
	if b == nil {
		return "closed"
	}
	return b.State()
}

// WebhookCheck reports the webhook as this process's circuit breaker sees
// it, for the processor's status report: failing while the circuit is open
// (deliveries wait for the cool-down), or once webhookFailingAfter calls in
// a row have failed within BREAKER_WINDOW. The breaker trips only after
// BREAKER_MIN_REQUESTS calls, so at low traffic a webhook that fails every
// call would otherwise be reported ok. It makes no call to the webhook.
func (a *App) WebhookCheck() httpapi.Check {
	return httpapi.Check{Name: "webhook", Check: func(context.Context) error {
		if st := a.BreakerState(); st == "open" {
			return errors.New("circuit breaker open: the webhook failed too often; deliveries wait for the cool-down")
		}
		if b := a.breaker.Load(); b != nil {
			if n := b.local.ConsecutiveFailures(); n >= webhookFailingAfter {
				return fmt.Errorf("the last %d calls to the webhook failed; the circuit stays closed until BREAKER_MIN_REQUESTS calls within BREAKER_WINDOW have failed often enough", n)
			}
		}
		return nil
	}}
}

// webhookFailingAfter is how many failed calls in a row make the webhook
// check fail while the circuit is still closed: one or two can be a blip.
const webhookFailingAfter = 3

// MaxInlineWait is the longest a delivery waits for the outbound rate
// limiter in place; a longer wait puts the message back in the outbox.
const MaxInlineWait = 2 * time.Second

// SharedWebhookCheck reports the webhook as every processor sees it: failing
// while the circuit breaker they share through Redis is open, which any of
// them opens when the webhook fails too often. It is for the API's status
// report, the only one in AWS, where the processor has no status route. It
// reads Redis and makes no call to the webhook. When Redis does not answer
// it passes: the redis check reports that, and the processors then each
// fall back to a breaker of their own, which no other process can read.
func (a *App) SharedWebhookCheck() httpapi.Check {
	return httpapi.Check{Name: "webhook", Check: func(ctx context.Context) error {
		d, err := a.Redis.CircuitOpenFor(ctx, "webhook")
		if err != nil || d <= 0 {
			return nil
		}
		return fmt.Errorf("circuit breaker open for another %s: the webhook failed too often; deliveries wait for the cool-down", max(d.Round(time.Second), time.Second))
	}}
}

// Checks returns the dependency checks of a status report.
func (a *App) Checks() []httpapi.Check {
	return []httpapi.Check{
		{Name: "mongodb", Critical: true, Check: a.Store.Ping},
		{Name: "rabbitmq", Critical: true, Check: a.Rabbit.Ping},
		{Name: "redis", Critical: false, Check: a.Redis.Ping},
	}
}

// FailedMessages counts the FAILED messages and logs a warning when there
// are more than DLQ_ALERT_THRESHOLD, at most once a minute: GET /status
// calls it on every probe.
func (a *App) FailedMessages(ctx context.Context) (int64, error) {
	n, err := a.Store.CountFailed(ctx)
	if err != nil || n <= int64(a.Config.DLQAlertThreshold) {
		return n, err
	}
	now := time.Now().UnixNano()
	if last := a.lastWarn.Load(); now-last >= int64(time.Minute) && a.lastWarn.CompareAndSwap(last, now) {
		a.Logger.Warn("dead-letter queue above its alert threshold", "failed_messages", n, "threshold", a.Config.DLQAlertThreshold)
	}
	return n, err
}

// alertDeadLetters checks the dead-letter count after a message failed, at
// most once every ten seconds, off the delivery path.
func (a *App) alertDeadLetters() {
	now := time.Now().UnixNano()
	last := a.lastAlert.Load()
	if now-last < int64(10*time.Second) || !a.lastAlert.CompareAndSwap(last, now) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = a.FailedMessages(ctx)
	}()
}

// APIHandler returns the REST API, as local mode serves it and the API
// Lambda function adapts it.
func (a *App) APIHandler(sched httpapi.Scheduler, gate outbox.Gate) http.Handler {
	var mw []func(http.Handler) http.Handler
	checks := append(a.Checks(), a.SharedWebhookCheck())
	if r := a.Config.APIRateLimit; r > 0 {
		allow := func(ctx context.Context, client string) (bool, time.Duration, error) {
			return a.Redis.Allow(ctx, client, r, a.Config.APIRateBurst)
		}
		mw = append(mw, httpapi.RateLimit(allow, a.Config.APIKey, a.Logger, a.observe))
		// Redis can answer PING and still fail the limit's script (an
		// ACL without EVAL, a key of the wrong type): the report runs
		// the script on a key of its own.
		checks = append(checks, httpapi.Check{Name: "api_rate_limit", Check: func(ctx context.Context) error {
			if _, _, err := allow(ctx, "status-probe"); err != nil {
				return fmt.Errorf("the API rate limit fails, so it lets every request through: %w", err)
			}
			return nil
		}})
	}
	return httpapi.NewServer(httpapi.Options{
		Middleware: mw,
		Messages:   a.Service(gate),
		Scheduler:  sched,
		Health: httpapi.Health{Service: "api", Checks: checks, Info: func(ctx context.Context) map[string]any {
			n, err := a.FailedMessages(ctx)
			if err != nil {
				return map[string]any{"failedMessages": nil}
			}
			return map[string]any{"failedMessages": n}
		}},
		APIKey: a.Config.APIKey,
		Logger: a.Logger,
	})
}

// now is the clock of every role: UTC, to the millisecond, the precision
// MongoDB keeps, so that what an API answer shows is what a later read shows.
func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

func newID() string { return uuid.Must(uuid.NewV7()).String() }

// NewLogger returns the structured logger the configuration asks for.
func NewLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// MustOpenLambda loads the configuration and opens the App for the Lambda
// function named function, at cold start, with its counts going to EMF
// metric lines on w (flush them after each invocation). A failure ends the
// process: Lambda reports the init error and tries a new execution
// environment.
func MustOpenLambda(ctx context.Context, function string, getenv func(string) string, w io.Writer) (*App, *metrics.EMF) {
	cfg, err := config.Load(getenv)
	if err != nil {
		fmt.Fprintln(w, "configuration:", err)
		os.Exit(1)
	}
	logger := NewLogger(cfg, w).With("function", function)
	openCtx, cancel := context.WithTimeout(ctx, lambdaInitTimeout)
	a, err := Open(openCtx, cfg, logger)
	cancel()
	if err != nil {
		Fatal(logger, "cold start", err)
	}
	emf := &metrics.EMF{Namespace: "ReliableMessaging", Function: function, Stack: cfg.StackName, W: w, Now: time.Now}
	a.Observe, a.Timing = emf.Add, emf.Time
	return a, emf
}

// Fatal logs err and ends the process.
func Fatal(logger *slog.Logger, what string, err error) {
	logger.Error(what+" failed", "error", err)
	os.Exit(1)
}
