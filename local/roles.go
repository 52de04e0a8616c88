package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
)

// passes is what the publisher's status and metrics report of its relay
// passes.
type passes struct {
	last   atomic.Pointer[time.Time] // the end of the last pass that did not fail
	failed atomic.Int64
}

// read fits prom.Sources.Relay.
func (p *passes) read() (time.Time, int64) {
	var last time.Time
	if t := p.last.Load(); t != nil {
		last = *t
	}
	return last, p.failed.Load()
}

// publish runs a relay pass every interval until ctx ends. A failed pass is
// logged and counted, and the next tick tries again: the outbox keeps every
// message.
func (s *system) publish(ctx context.Context, relay *outbox.Relay, interval time.Duration, ps *passes) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		passCtx, cancel := context.WithTimeout(ctx, relay.LeaseTTL)
		sum, err := relay.Pass(passCtx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			ps.failed.Add(1)
			s.logger.Error("relay pass failed", "error", err, "summary", sum)
		case sum.Claimed > 0 || sum.Recovered > 0 || sum.DeadLettered > 0:
			s.logger.Info("relay pass", "summary", sum)
		}
		if err == nil {
			at := time.Now().UTC()
			ps.last.Store(&at)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// consume feeds queued messages to the processor until ctx ends; then the
// deliveries in flight finish and the rest go back to the queue.
func (s *system) consume(ctx context.Context, a *app.App, p *processor.Processor) error {
	opts := rabbitmq.ConsumeOptions{
		Queue:        a.Config.Queue,
		Prefetch:     a.Config.Prefetch,
		Concurrency:  a.Config.ProcessorConcurrency,
		DrainTimeout: a.Config.WebhookTimeout + 5*time.Second,
		// A delivery cancelled by the drain still records its answer.
		SettleTimeout: processor.RecordTimeout + 5*time.Second,
	}
	var pause processor.Backoff
	return a.Rabbit.Consume(ctx, opts, func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
		res := p.Handle(ctx, d.Body, d.Redelivered)
		if res.Action == processor.Requeue {
			// MongoDB or the broker is failing: hold this worker for a
			// while before handing the copy back, so that the consumer
			// stops taking new work instead of spinning through the queue.
			s.logger.Warn("processing deferred; message returned to the queue", "message_id", res.MessageID, "error", res.Err)
			pause.Wait(ctx)
			return rabbitmq.NackRequeue
		}
		pause.Reset()
		return rabbitmq.Ack
	})
}

// group runs the parts of a process; the first to fail stops the others.
type group struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	err error
	// after, if set, is a group of parts stopped after this one's (the
	// demo receiver, which deliveries in flight still call); its first
	// error counts as this group's.
	after *group
}

func (g *group) go_(cancel context.CancelFunc, f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			if g.err == nil {
				g.err = err
			}
			g.mu.Unlock()
			cancel()
		}
	}()
}

// The local servers' connection timeouts. A request body is at most 64 KiB
// (httpapi.DefaultMaxReplayBodyBytes), so a client that takes longer than
// serverReadTimeout to send one is holding a connection, not sending; the
// write timeout leaves the API's answer 5 s past its own deadline
// (httpapi.DefaultRequestTimeout), so that its 503 still gets out. Variables
// so that a test can shorten them.
var (
	serverReadTimeout  = 15 * time.Second
	serverWriteTimeout = httpapi.DefaultRequestTimeout + 5*time.Second
)

// shutdownGrace is how long a stop waits for the requests of a server
// without a write timeout.
const shutdownGrace = 15 * time.Second

// serve serves h on ln until ctx ends, then shuts the server down
// gracefully, letting requests in flight finish: for as long as one may
// take, writeTimeout, which bounds the time from a request's headers to the
// end of its answer (0: none, for the profiler, whose CPU profiles take as
// long as asked; it gets shutdownGrace).
func (g *group) serve(ctx context.Context, cancel context.CancelFunc, ln net.Listener, h http.Handler, writeTimeout time.Duration) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: serverReadTimeout, WriteTimeout: writeTimeout, IdleTimeout: 2 * time.Minute}
	g.go_(cancel, func() error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		grace := writeTimeout
		if grace <= 0 {
			grace = shutdownGrace
		}
		shutCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), grace)
		defer stop()
		if err := srv.Shutdown(shutCtx); err != nil {
			return err
		}
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

func (g *group) wait() { g.wg.Wait() }

// firstErr returns the first part's error so far, if any.
func (g *group) firstErr() error {
	g.mu.Lock()
	err := g.err
	g.mu.Unlock()
	if err == nil && g.after != nil {
		return g.after.firstErr()
	}
	return err
}

// waitErr blocks until ctx ends and every part has stopped, and returns the
// first part's error.
func (g *group) waitErr(ctx context.Context) error {
	<-ctx.Done()
	g.wg.Wait()
	return g.firstErr()
}
