package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/prom"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/receiver"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
)

// system is one local process running one role or all of them.
type system struct {
	role   string
	getenv func(string) string
	stdout io.Writer
	logger *slog.Logger
}

// listen opens the servers' listeners; a variable so that a test can
// hand out one that breaks.
var listen = net.Listen

func newSystem(role string, getenv func(string) string, stdout io.Writer) *system {
	return &system{role: role, getenv: getenv, stdout: stdout}
}

func (s *system) has(role string) bool { return s.role == "all" || s.role == role }

func (s *system) run(ctx context.Context) error {
	cfg, err := config.Load(s.getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	s.logger = app.NewLogger(cfg, s.stdout).With("role", s.role)
	s.logger.Info("starting", "config", cfg)

	// The demo receiver runs on a context of its own, ended only once
	// every other part has stopped: deliveries in flight at a stop still
	// call it, and one that found it gone would count a failed attempt.
	lastCtx, cancelLast := context.WithCancel(context.WithoutCancel(ctx))
	ctx, cancel := context.WithCancel(ctx)
	var last group
	g := group{after: &last}
	// On every return, stop the parts already running, then wait for
	// them: they run until ctx ends, so waiting first would hang. Deferred
	// again once the parts using the app start, so that they stop before
	// the app and the embedded MongoDB close under them.
	stopParts := func() {
		cancel()
		g.wait()
		cancelLast()
		last.wait()
	}
	defer stopParts()

	// The demo receiver stands in for WEBHOOK_URL when none is set.
	if s.role == "receiver" || (cfg.WebhookURL == "" && s.has("processor")) {
		// During a rotation the demo receiver takes a signature made
		// with either secret.
		keys, _ := config.DecodeWebhookSecrets(cfg.WebhookSecret) // validated by Load
		ln, err := listen("tcp", cfg.ReceiverAddr)
		if err != nil {
			return fmt.Errorf("demo receiver on RECEIVER_ADDR %s: %w", cfg.ReceiverAddr, err)
		}
		cfg.WebhookURL = "http://" + ln.Addr().String() + "/webhook"
		s.logger.Info("demo webhook receiver listening", "url", cfg.WebhookURL)
		h := receiver.NewHandler(s.logger.With("component", "receiver"), keys...)
		if s.role == "receiver" {
			g.serve(ctx, cancel, ln, h, serverWriteTimeout)
		} else {
			last.serve(lastCtx, cancel, ln, h, serverWriteTimeout)
		}
	}
	if s.role == "receiver" {
		return g.waitErr(ctx)
	}

	if cfg.PprofAddr != "" {
		ln, err := listen("tcp", cfg.PprofAddr)
		if err != nil {
			return fmt.Errorf("profiler on PPROF_ADDR %s: %w", cfg.PprofAddr, err)
		}
		s.logger.Info("profiler listening", "addr", ln.Addr().String())
		g.serve(ctx, cancel, ln, pprofHandler(), 0)
	}

	if s.role == "mongodb" && cfg.MongoURI != "" {
		return errors.New("the mongodb role runs the embedded MongoDB, and MONGODB_URI is set: unset it, or run no mongodb role")
	}
	if cfg.MongoURI == "" {
		uri, srv, err := s.embeddedMongo(ctx, cfg)
		if err != nil {
			if ctx.Err() != nil {
				return g.firstErr() // stopped while it waited, or a part failed
			}
			return err
		}
		if srv != nil {
			defer func() {
				closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if err := srv.Close(closeCtx); err != nil {
					s.logger.Error("embedded mongodb shutdown", "error", err)
				}
			}()
		}
		cfg.MongoURI = uri
	}
	if s.role == "mongodb" {
		<-ctx.Done()
		return nil
	}

	a, err := s.open(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return g.firstErr() // stopped while it waited, or a part failed
		}
		return err
	}
	defer a.Close(context.WithoutCancel(ctx))
	defer stopParts()
	if s.role == "setup" {
		s.logger.Info("setup done: exchange, queues and indexes declared")
		return nil
	}

	// One Prometheus registry per process, served on GET /metrics next to
	// the API and the processor's status.
	src := prom.Sources{
		Backlog:      func(ctx context.Context) (int64, time.Time, error) { return a.Store.OutboxStats(ctx, a.Now()) },
		Failed:       a.FailedMessages,
		Dependencies: a.Checks(),
		Queues:       a.Rabbit.QueueDepths,
	}
	if s.has("processor") {
		src.Breaker = a.BreakerState
	}
	var ps passes
	if s.has("publisher") {
		src.Relay = ps.read
	}
	metrics := prom.New(src)
	a.Observe, a.Timing = metrics.Observe, metrics.Time
	// serveWithMetrics serves h, and GET /metrics beside it, on addr,
	// which the setting variable names.
	serveWithMetrics := func(what, variable, addr string, h http.Handler) error {
		ln, err := listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s on %s %s: %w", what, variable, addr, err)
		}
		s.logger.Info(what+" listening", "addr", ln.Addr().String())
		// Not a ServeMux: one would redirect a path not in its clean form
		// (//messages) itself, as HTML, before h answers it as a problem.
		mh := metrics.Handler()
		both := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/metrics" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
				mh.ServeHTTP(w, r)
				return
			}
			h.ServeHTTP(w, r)
		})
		g.serve(ctx, cancel, ln, both, serverWriteTimeout)
		return nil
	}

	sched := a.LocalScheduler()
	if s.has("api") {
		if cfg.APIKey == "" && !httpapi.LoopbackAddr(cfg.APIAddr) {
			s.logger.Warn("API_KEY is empty and API_ADDR is not a loopback address: whoever reaches it may use the API; set API_KEY", "addr", cfg.APIAddr)
		}
		if err := serveWithMetrics("api", "API_ADDR", cfg.APIAddr, httpapi.ServedDirectly(a.APIHandler(sched, sched.Gate()))); err != nil {
			return err
		}
	}
	if s.has("publisher") {
		relay := a.Relay(sched.Gate())
		if s.role == "publisher" {
			// Run alone (as in compose), the publisher serves its own
			// status and metrics: its counts (published, recovered,
			// dead-lettered by the sweep) are in no other process.
			health := httpapi.Health{Service: "publisher", Checks: a.Checks(), Info: func(context.Context) map[string]any {
				return map[string]any{"lastPassAt": ps.last.Load()}
			}}
			if err := serveWithMetrics("publisher status", "PUBLISHER_ADDR", cfg.PublisherAddr, httpapi.NewStatusHandler(health, s.logger)); err != nil {
				return err
			}
		}
		g.go_(cancel, func() error { return s.publish(ctx, relay, cfg.PublishInterval, &ps) })
	}
	if s.has("processor") {
		p, err := a.Processor()
		if err != nil {
			return err
		}
		health := httpapi.Health{Service: "processor", Checks: append(a.Checks(), a.WebhookCheck()), Info: func(context.Context) map[string]any {
			return map[string]any{"circuitBreaker": a.BreakerState(), "consumer": a.Rabbit.ConsumerState()}
		}}
		if err := serveWithMetrics("processor status", "PROCESSOR_ADDR", cfg.ProcessorAddr, httpapi.NewStatusHandler(health, s.logger)); err != nil {
			return err
		}
		g.go_(cancel, func() error { return s.consume(ctx, a, p) })
	}
	return g.waitErr(ctx)
}

// open connects to the dependencies, waiting for them (up to two minutes)
// when they are not up yet: a process started before its broker or
// database comes up on its own, as containers and process managers expect.
// A setting that waiting will not fix (wrong credentials, a URI the driver
// refuses) ends it after the third try in a row, naming the variable: not at
// the first, since a connection dropped during the broker's login reads as
// refused credentials too.
func (s *system) open(ctx context.Context, cfg config.Config) (*app.App, error) {
	deadline := time.Now().Add(2 * time.Minute)
	misconfigured := 0
	for {
		a, err := app.Open(ctx, cfg, s.logger)
		if errors.Is(err, app.ErrMisconfigured) {
			misconfigured++
		} else {
			misconfigured = 0
		}
		if err == nil || misconfigured >= 3 || ctx.Err() != nil || time.Now().After(deadline) {
			return a, err
		}
		s.logger.Warn("dependencies not ready; trying again in 2s", "error", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(2 * time.Second):
		}
	}
}

// embeddedMongo returns the URI of the embedded MongoDB: one already
// answering at EMBEDDED_MONGODB_ADDR (another local process, such as the
// mongodb role), or a new one started in this process.
func (s *system) embeddedMongo(ctx context.Context, cfg config.Config) (string, *embedded.Server, error) {
	uri := "mongodb://" + cfg.EmbeddedMongoDBAddr + "/"
	if s.role != "mongodb" && mongoAnswers(ctx, uri) {
		return uri, nil, s.useRunning(ctx, cfg, uri)
	}
	// The server outlives ctx, which ends at SIGINT or SIGTERM: the other
	// parts still need it to finish their work, and run closes it last.
	start := func() (*embedded.Server, error) {
		return embedded.Start(context.WithoutCancel(ctx), embedded.Config{
			Addr:   cfg.EmbeddedMongoDBAddr,
			Dir:    filepath.Join(cfg.DataDir, "mongodb"),
			Sync:   cfg.EmbeddedMongoDBSync,
			Logger: s.logger.With("component", "embedded-mongodb"),
		})
	}
	srv, err := start()
	// A loser of the race may find the address free still (with
	// EMBEDDED_MONGODB_SYNC=normal the winner binds it last) and the
	// directory taken.
	taken := func(err error) bool {
		return errors.Is(err, embedded.ErrAddrInUse) || errors.Is(err, embedded.ErrDirInUse)
	}
	if taken(err) && s.role != "mongodb" {
		// Roles started together all find no server and race to start
		// one; the losers use the winner's once it answers, or start
		// their own if the winner died and freed the address.
		s.logger.Info("another process is starting the embedded mongodb; waiting for it", "addr", cfg.EmbeddedMongoDBAddr)
		for deadline := time.Now().Add(startWait); taken(err) && time.Now().Before(deadline); {
			select {
			case <-ctx.Done():
				return "", nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
			if mongoAnswers(ctx, uri) {
				return uri, nil, s.useRunning(ctx, cfg, uri)
			}
			srv, err = start()
		}
		if errors.Is(err, embedded.ErrAddrInUse) {
			err = fmt.Errorf("%w, and nothing there answered as MongoDB within %s", err, startWait)
		}
	}
	if err != nil {
		return "", nil, err
	}
	return srv.URI(), srv, nil
}

// useRunning checks that the embedded MongoDB answering at uri, which this
// process is about to use, keeps its data in DATA_DIR: one started from
// another checkout, or with another DATA_DIR, would otherwise serve this
// process another directory's messages without a word.
func (s *system) useRunning(ctx context.Context, cfg config.Config, uri string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	want := filepath.Join(cfg.DataDir, "mongodb")
	// A server answers a moment before it has recorded its directory, and
	// a directory copied or moved names its old place until then: an
	// answer other than this DATA_DIR is asked again for markerWait.
	var served embedded.Served
	var err error
	same := false
	for deadline := time.Now().Add(markerWait); ; {
		served, err = embedded.Describe(ctx, uri)
		same = err == nil && embedded.SameDir(want, served.DataDir)
		if same || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	switch {
	case same && served.Sync == "normal" && cfg.EmbeddedMongoDBSync != "normal":
		// The role would answer 202 for writes that a power cut can
		// take back, though its own setting says they are on disk.
		return fmt.Errorf("the embedded mongodb at EMBEDDED_MONGODB_ADDR %s runs with EMBEDDED_MONGODB_SYNC=normal (no fsync), "+
			"and this process's is %s: restart that one with full, or set normal here too", cfg.EmbeddedMongoDBAddr, cfg.EmbeddedMongoDBSync)
	case same:
	case errors.Is(err, embedded.ErrNoMarker):
		s.logger.Warn("the mongodb answering at EMBEDDED_MONGODB_ADDR does not say where it keeps its data; using it, and not DATA_DIR",
			"addr", cfg.EmbeddedMongoDBAddr, "data_dir", want)
		return nil
	case err != nil:
		return fmt.Errorf("embedded mongodb at EMBEDDED_MONGODB_ADDR %s: %w", cfg.EmbeddedMongoDBAddr, err)
	default:
		return fmt.Errorf("the embedded mongodb at EMBEDDED_MONGODB_ADDR %s keeps its data in %s, not in DATA_DIR's %s: "+
			"stop the process running it, or give this one the same DATA_DIR, or another EMBEDDED_MONGODB_ADDR", cfg.EmbeddedMongoDBAddr, served.DataDir, want)
	}
	s.logger.Info("using the embedded mongodb already running", "addr", cfg.EmbeddedMongoDBAddr, "dir", served.DataDir, "sync", served.Sync)
	return nil
}

// markerWait is how long a role asks a running embedded MongoDB where it
// keeps its data before it takes the answer as final.
const markerWait = 2 * time.Second

// startWait is how long a role waits for an embedded MongoDB that another
// process is starting at its address.
const startWait = 30 * time.Second

func mongoAnswers(ctx context.Context, uri string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := net.DialTimeout("tcp", uri[len("mongodb://"):len(uri)-1], 300*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(time.Second))
	if err != nil {
		return false
	}
	defer func() { _ = client.Disconnect(context.WithoutCancel(ctx)) }()
	return client.Ping(ctx, nil) == nil
}

// pprofHandler serves Go's profiler: go tool pprof http://PPROF_ADDR/debug/pprof/profile
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
