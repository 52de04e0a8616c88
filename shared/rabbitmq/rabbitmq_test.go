package rabbitmq_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
)

// testURI is the local broker every other test uses, whatever
// RABBITMQ_URI says: the tests create and delete queues, and closeFromServer
// drives the local rabbitmqctl, so they must never reach a broker elsewhere.
func testURI() string { return testenv.RabbitURI }

// adminConn is the tests' own connection, for setup, inspection and
// cleanup. A missing broker fails the test: it never skips.
func adminConn(t *testing.T) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(testURI())
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable at 127.0.0.1:5672 (%v); start it with `rabbitmq-server -detached`", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func adminChannel(t *testing.T, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open admin channel: %v", err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// newTopology returns names unique to this test and deletes them at the end.
func newTopology(t *testing.T, conn *amqp.Connection) rabbitmq.Topology {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	base := fmt.Sprintf("test.%s.%s", name, hex.EncodeToString(b))
	topo := rabbitmq.Topology{Exchange: base, Queue: base + ".q", DeadLetterQueue: base + ".dlq"}
	t.Cleanup(func() {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		_, _ = ch.QueueDelete(topo.Queue, false, false, false)
		_, _ = ch.QueueDelete(topo.DeadLetterQueue, false, false, false)
		_ = ch.ExchangeDelete(topo.Exchange, false, false)
	})
	return topo
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func dial(t *testing.T, topo rabbitmq.Topology) *rabbitmq.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rabbitmq.Dial(ctx, testURI(), topo, testLogger(t))
	if err != nil {
		t.Fatalf("Dial: %v (is RabbitMQ running? start it with `rabbitmq-server -detached`)", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// depth returns the number of ready messages in queue.
func depth(t *testing.T, conn *amqp.Connection, queue string) int {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open channel: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func envelopes(prefix string, n int) []message.Envelope {
	out := make([]message.Envelope, n)
	now := time.Now().UTC()
	for i := range out {
		out[i] = message.Envelope{ID: fmt.Sprintf("%s-%04d", prefix, i), Seq: 1, PublishedAt: now}
	}
	return out
}

// publishAll publishes envs and fails the test unless all are confirmed.
func publishAll(t *testing.T, c *rabbitmq.Client, envs []message.Envelope) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	confirmed, err := c.PublishConfirmed(ctx, envs)
	if err != nil || len(confirmed) != len(envs) {
		t.Fatalf("PublishConfirmed: %d of %d confirmed, err %v", len(confirmed), len(envs), err)
	}
}

// consumer runs Consume in the background and records what it sees.
type consumer struct {
	mu    sync.Mutex
	seen  map[string]int
	total atomic.Int64
	done  chan error
	stop  context.CancelFunc
}

func startConsumer(t *testing.T, c *rabbitmq.Client, opts rabbitmq.ConsumeOptions, h rabbitmq.Handler) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	k := &consumer{seen: map[string]int{}, done: make(chan error, 1), stop: cancel}
	go func() {
		k.done <- c.Consume(ctx, opts, func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
			a := rabbitmq.Ack
			if h != nil {
				a = h(ctx, d)
			}
			if a == rabbitmq.Ack {
				k.mu.Lock()
				k.seen[d.MessageID]++
				k.mu.Unlock()
				k.total.Add(1)
			}
			return a
		})
	}()
	t.Cleanup(func() { k.shutdown(t) })
	return k
}

// shutdown cancels Consume and waits for it to return nil.
func (k *consumer) shutdown(t *testing.T) {
	t.Helper()
	k.stop()
	select {
	case err, ok := <-k.done:
		if ok && err != nil {
			t.Errorf("Consume returned %v", err)
		}
		if ok {
			close(k.done)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Consume did not return after its context was cancelled")
	}
}

func (k *consumer) count(id string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.seen[id]
}

func TestDeclareIsIdempotentAndExplainsConflicts(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 2 {
		if err := rabbitmq.Declare(ctx, adminChannel(t, conn), topo); err != nil {
			t.Fatalf("Declare #%d: %v", i+1, err)
		}
	}

	// A classic queue under the name the topology wants for its quorum queue.
	conflict := newTopology(t, conn)
	ch := adminChannel(t, conn)
	if _, err := ch.QueueDeclare(conflict.Queue, true, false, false, false, nil); err != nil {
		t.Fatalf("declare classic queue: %v", err)
	}
	err := rabbitmq.Declare(ctx, adminChannel(t, conn), conflict)
	if err == nil {
		t.Fatal("Declare over a classic queue of the same name succeeded")
	}
	for _, want := range []string{"PRECONDITION_FAILED", "delete", "policy", conflict.Queue} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Declare error %q does not mention %q", err, want)
		}
	}
	if _, err := rabbitmq.Dial(ctx, testURI(), conflict, nil); err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
		t.Errorf("Dial with a conflicting topology: err %v, want PRECONDITION_FAILED", err)
	}
}

func TestDialErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	topo := rabbitmq.Topology{Exchange: "x", Queue: "q", DeadLetterQueue: "d"}
	for _, uri := range []string{
		"amqp://guest:s3cr3t-pw@127.0.0.1:1/",          // nothing listens
		"amqp://guest:s3cr3t-pw@127.0.0.1:5672/",       // wrong password
		"amqp://guest:s3cr3t-pw@127.0.0.1:5672/%zz",    // unparsable
		"http://guest:s3cr3t-pw@127.0.0.1:5672/",       // wrong scheme
		"amqp://guest:s3cr3t-pw@127.0.0.1:5672/nohost", // unknown vhost
	} {
		c, err := rabbitmq.Dial(ctx, uri, topo, nil)
		if err == nil {
			_ = c.Close()
			t.Errorf("Dial(%s) succeeded", uri)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t-pw") {
			t.Errorf("Dial error reveals the password: %v", err)
		}
	}
	if _, err := rabbitmq.Dial(ctx, testURI(), rabbitmq.Topology{Exchange: "x", Queue: "q"}, nil); err == nil {
		t.Error("Dial accepted a topology without a dead-letter queue")
	}
}

func TestPublishAndConsumeThousand(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)

	const n, batch = 1000, 100
	envs := envelopes("m", n)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n/batch)
	for i := 0; i < n; i += batch {
		wg.Add(1)
		go func(part []message.Envelope) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			confirmed, err := c.PublishConfirmed(ctx, part)
			if err != nil || len(confirmed) != len(part) {
				errs <- fmt.Errorf("%d of %d confirmed: %v", len(confirmed), len(part), err)
			}
		}(envs[i : i+batch])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("PublishConfirmed: %v", err)
	}
	pubTime := time.Since(start)
	if got := depth(t, conn, topo.Queue); got != n {
		t.Fatalf("queue holds %d messages after publishing %d", got, n)
	}

	var redelivered atomic.Int64
	start = time.Now()
	k := startConsumer(t, c, rabbitmq.ConsumeOptions{Prefetch: 32, Concurrency: 8},
		func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
			var env message.Envelope
			if err := json.Unmarshal(d.Body, &env); err != nil || env.ID != d.MessageID || d.ContentType != "application/json" {
				t.Errorf("delivery %q: body %s, content type %q, err %v", d.MessageID, d.Body, d.ContentType, err)
			}
			if d.Redelivered {
				redelivered.Add(1)
			}
			return rabbitmq.Ack
		})
	waitFor(t, 20*time.Second, "1000 deliveries", func() bool { return k.total.Load() >= n })
	conTime := time.Since(start)
	waitFor(t, 2*time.Second, "consumer state consuming", func() bool { return c.ConsumerState() == rabbitmq.ConsumerConsuming })
	k.shutdown(t)
	if s := c.ConsumerState(); s != rabbitmq.ConsumerStopped {
		t.Errorf("ConsumerState after stop = %q, want stopped", s)
	}

	for _, e := range envs {
		if got := k.count(e.ID); got != 1 {
			t.Errorf("%s handled %d times, want 1", e.ID, got)
		}
	}
	if got := k.total.Load(); got != n {
		t.Errorf("handled %d deliveries, want %d", got, n)
	}
	if r := redelivered.Load(); r != 0 {
		t.Errorf("%d deliveries were redeliveries", r)
	}
	if got := depth(t, conn, topo.Queue); got != 0 {
		t.Errorf("queue holds %d messages after consuming all", got)
	}
	t.Logf("published %d in %s (%.0f/s, %d concurrent batches of %d); consumed in %s (%.0f/s, concurrency 8, prefetch 32; race detector on: %v)",
		n, pubTime.Round(time.Millisecond), n/pubTime.Seconds(), n/batch, batch, conTime.Round(time.Millisecond), n/conTime.Seconds(), raceEnabled)
}

func TestNackRequeueRedeliversAndRawBodiesArrive(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	publishAll(t, c, envelopes("nack", 1))
	// Someone else's message: not JSON, no message ID.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw := []byte("\x00not json at all")
	if err := adminChannel(t, conn).PublishWithContext(ctx, topo.Exchange, topo.Queue, false, false,
		amqp.Publishing{Body: raw, ContentType: "application/octet-stream"}); err != nil {
		t.Fatalf("publish raw: %v", err)
	}

	type seen struct {
		redelivered bool
		count       int64
	}
	var mu sync.Mutex
	got := map[string][]seen{}
	var rawBody []byte
	k := startConsumer(t, c, rabbitmq.ConsumeOptions{Concurrency: 2},
		func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
			mu.Lock()
			defer mu.Unlock()
			if d.MessageID == "" {
				rawBody = d.Body
			}
			got[d.MessageID] = append(got[d.MessageID], seen{d.Redelivered, d.DeliveryCount})
			if len(got[d.MessageID]) == 1 {
				return rabbitmq.NackRequeue
			}
			return rabbitmq.Ack
		})
	waitFor(t, 10*time.Second, "both messages acked", func() bool { return k.total.Load() == 2 })
	k.shutdown(t)

	mu.Lock()
	defer mu.Unlock()
	for _, id := range []string{"nack-0000", ""} {
		s := got[id]
		if len(s) != 2 {
			t.Errorf("message %q delivered %d times, want 2", id, len(s))
			continue
		}
		if s[0].redelivered || !s[1].redelivered {
			t.Errorf("message %q: Redelivered %v then %v, want false then true", id, s[0].redelivered, s[1].redelivered)
		}
		if s[0].count != 0 || s[1].count != 1 {
			t.Errorf("message %q: DeliveryCount %d then %d, want 0 then 1", id, s[0].count, s[1].count)
		}
	}
	if !bytes.Equal(rawBody, raw) {
		t.Errorf("raw body arrived as %q, want %q", rawBody, raw)
	}
	if d := depth(t, conn, topo.Queue); d != 0 {
		t.Errorf("queue holds %d messages", d)
	}
}

func TestGracefulStop(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	const n, concurrency = 40, 4
	envs := envelopes("stop", n)
	publishAll(t, c, envs)

	var started, finished atomic.Int64
	release := make(chan struct{})
	k := startConsumer(t, c, rabbitmq.ConsumeOptions{Prefetch: 20, Concurrency: concurrency, DrainTimeout: 10 * time.Second},
		func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
			started.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				t.Errorf("handler context cancelled during the drain: %v", ctx.Err())
			}
			time.Sleep(50 * time.Millisecond) // still working when Consume's ctx is gone
			finished.Add(1)
			return rabbitmq.Ack
		})
	waitFor(t, 5*time.Second, "handlers mid-work", func() bool { return started.Load() == concurrency })
	// Let the broker fill the prefetch window before stopping.
	waitFor(t, 5*time.Second, "prefetched deliveries", func() bool { return depth(t, conn, topo.Queue) <= n-20 })

	k.stop()
	// The prefetched deliveries no handler started are back in the queue
	// only once Consume has taken the stop; releasing the handlers before
	// that would let them finish before the drain they are meant to test.
	waitFor(t, 5*time.Second, "the stop to requeue the unstarted deliveries", func() bool {
		return depth(t, conn, topo.Queue) == n-concurrency
	})
	close(release)
	k.shutdown(t)

	if s, f := started.Load(), finished.Load(); s != concurrency || f != concurrency {
		t.Errorf("%d handlers started and %d finished, want %d each", s, f, concurrency)
	}
	if got := k.total.Load(); got != concurrency {
		t.Errorf("%d acked, want %d", got, concurrency)
	}
	// Everything not acked is back in the queue, ready.
	waitFor(t, 5*time.Second, "unstarted deliveries back in the queue", func() bool {
		return depth(t, conn, topo.Queue) == n-concurrency
	})

	// A second consumer gets the rest: nothing was lost.
	k2 := startConsumer(t, c, rabbitmq.ConsumeOptions{Concurrency: 4}, nil)
	waitFor(t, 10*time.Second, "the rest", func() bool { return k2.total.Load() == n-concurrency })
	k2.shutdown(t)
	for _, e := range envs {
		if a, b := k.count(e.ID), k2.count(e.ID); a+b != 1 {
			t.Errorf("%s acked %d+%d times, want once", e.ID, a, b)
		}
	}
}

func TestReconnect(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(t *testing.T, c *rabbitmq.Client)
	}{
		{"broker closes connections", closeFromServer},
		{"network drops", func(t *testing.T, c *rabbitmq.Client) { c.DropConnectionsForTest() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := adminConn(t)
			topo := newTopology(t, conn)
			c := dial(t, topo)
			k := startConsumer(t, c, rabbitmq.ConsumeOptions{Concurrency: 4}, nil)
			before := envelopes("before", 20)
			publishAll(t, c, before)
			waitFor(t, 10*time.Second, "first deliveries", func() bool { return k.total.Load() >= 20 })

			old := c.LocalAddrsForTest()
			tc.kill(t, c)
			waitFor(t, 10*time.Second, "the old connections to be gone", func() bool {
				for _, a := range c.LocalAddrsForTest() {
					if slices.Contains(old, a) {
						return false
					}
				}
				return true
			})

			// Publishing waits for the reconnect within its context.
			after := envelopes("after", 20)
			publishAll(t, c, after)
			waitFor(t, 10*time.Second, "deliveries after the reconnect", func() bool {
				for _, e := range after {
					if k.count(e.ID) == 0 {
						return false
					}
				}
				return true
			})
			waitFor(t, 5*time.Second, "healthy again", func() bool {
				return c.Ping(context.Background()) == nil && c.ConsumerState() == rabbitmq.ConsumerConsuming
			})
			for _, e := range before {
				if k.count(e.ID) == 0 {
					t.Errorf("%s never handled", e.ID)
				}
			}
			k.shutdown(t)
			if d := depth(t, conn, topo.Queue); d != 0 {
				t.Errorf("queue holds %d messages", d)
			}
		})
	}
}

// closeFromServer has the broker close the client's connections
// (CONNECTION_FORCED), with rabbitmqctl (the management API is not enabled
// on this machine).
func closeFromServer(t *testing.T, c *rabbitmq.Client) {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatalf("rabbitmqctl is not on PATH (%v): it comes with RabbitMQ (apt-get install rabbitmq-server), and must run as a user that may manage the local broker", err)
	}
	addrs := c.LocalAddrsForTest()
	if len(addrs) != 2 {
		t.Fatalf("client has %d connections, want 2 (publish and consume)", len(addrs))
	}
	// Bounded: rabbitmqctl waits without limit on a broker node half up.
	// It is a script whose Erlang grandchild keeps the output open after
	// the script is killed: WaitDelay stops waiting for it.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ctl := func(args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "rabbitmqctl", args...)
		cmd.WaitDelay = 5 * time.Second
		return cmd
	}
	out, err := ctl("-q", "list_connections", "pid", "name").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	closed := 0
	for _, line := range strings.Split(string(out), "\n") {
		pid, name, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		for _, a := range addrs {
			if strings.HasPrefix(name, a+" ->") {
				if out, err := ctl("-q", "close_connection", pid, "test: forced close").CombinedOutput(); err != nil {
					t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
				}
				closed++
			}
		}
	}
	if closed != len(addrs) {
		t.Fatalf("closed %d of %d connections; rabbitmqctl listed:\n%s", closed, len(addrs), out)
	}
}

func TestPublishToMissingQueueIsNotConfirmed(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	if _, err := adminChannel(t, conn).QueueDelete(topo.Queue, false, false, false); err != nil {
		t.Fatalf("delete queue: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	envs := envelopes("lost", 3)
	confirmed, err := c.PublishConfirmed(ctx, envs)
	if len(confirmed) != 0 || err == nil {
		t.Fatalf("PublishConfirmed with no queue: %d confirmed, err %v; want none and an error", len(confirmed), err)
	}
	if !strings.Contains(err.Error(), "unroutable") || !strings.Contains(err.Error(), "NO_ROUTE") {
		t.Errorf("error %q does not say the messages were unroutable", err)
	}

	// Once the queue is back, the same client publishes fine.
	if err := rabbitmq.Declare(ctx, adminChannel(t, conn), topo); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	publishAll(t, c, envs)
	if d := depth(t, conn, topo.Queue); d != 3 {
		t.Errorf("queue holds %d messages, want 3", d)
	}

	// A missing exchange closes the channel: nothing is confirmed either,
	// and the next publish gets a fresh channel.
	if err := adminChannel(t, conn).ExchangeDelete(topo.Exchange, false, false); err != nil {
		t.Fatalf("delete exchange: %v", err)
	}
	confirmed, err = c.PublishConfirmed(ctx, envs)
	if len(confirmed) != 0 || err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("PublishConfirmed with no exchange: %d confirmed, err %v; want none and NOT_FOUND", len(confirmed), err)
	}
	if err := rabbitmq.Declare(ctx, adminChannel(t, conn), topo); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	publishAll(t, c, envs)
}

func TestNotifyDeadLetter(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := message.DeadLetter{MessageID: "dl-1", Reason: "retries exhausted", LastError: "503", Attempts: 4,
		FailedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := c.NotifyDeadLetter(ctx, want); err != nil {
		t.Fatalf("NotifyDeadLetter: %v", err)
	}
	d, ok, err := adminChannel(t, conn).Get(topo.DeadLetterQueue, true)
	if err != nil || !ok {
		t.Fatalf("get from the DLQ: ok %v, err %v", ok, err)
	}
	if d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || d.MessageId != "dl-1" {
		t.Errorf("DLQ message: delivery mode %d, content type %q, message id %q", d.DeliveryMode, d.ContentType, d.MessageId)
	}
	var got message.DeadLetter
	if err := json.Unmarshal(d.Body, &got); err != nil || got != want {
		t.Errorf("DLQ body %s decodes to %+v (err %v), want %+v", d.Body, got, err, want)
	}
	if n := depth(t, conn, topo.Queue); n != 0 {
		t.Errorf("main queue holds %d messages", n)
	}
}

func TestContextIsHonoured(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if confirmed, err := c.PublishConfirmed(ctx, envelopes("c", 3)); err == nil || len(confirmed) != 0 {
		t.Errorf("PublishConfirmed with a cancelled context: %d confirmed, err %v", len(confirmed), err)
	}
	if err := c.Ping(ctx); err == nil {
		t.Error("Ping with a cancelled context succeeded")
	}
	// Consume with a cancelled context returns at once.
	start := time.Now()
	if err := c.Consume(ctx, rabbitmq.ConsumeOptions{}, func(context.Context, rabbitmq.Delivery) rabbitmq.Action {
		return rabbitmq.Ack
	}); err != nil {
		t.Errorf("Consume with a cancelled context: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Consume with a cancelled context took %s", d)
	}
	// While disconnected and never reconnecting (Close), calls fail fast.
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.PublishConfirmed(context.Background(), envelopes("c", 1)); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Errorf("PublishConfirmed after Close: %v, want ErrClosed", err)
	}
	if err := c.Ping(context.Background()); err == nil {
		t.Error("Ping after Close succeeded")
	}
	if err := c.Consume(context.Background(), rabbitmq.ConsumeOptions{}, func(context.Context, rabbitmq.Delivery) rabbitmq.Action {
		return rabbitmq.Ack
	}); !errors.Is(err, rabbitmq.ErrClosed) {
		t.Errorf("Consume after Close: %v, want ErrClosed", err)
	}
}

func TestConsumeMissingQueueFails(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Consume(ctx, rabbitmq.ConsumeOptions{Queue: topo.Queue + ".nope"}, func(context.Context, rabbitmq.Delivery) rabbitmq.Action {
		return rabbitmq.Ack
	})
	if err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("Consume of a missing queue: %v, want NOT_FOUND", err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	runtime.GC()
	base := runtime.NumGoroutine()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rabbitmq.Dial(ctx, testURI(), topo, testLogger(t))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	cctx, stop := context.WithCancel(context.Background())
	var handled atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, rabbitmq.ConsumeOptions{Concurrency: 8}, func(context.Context, rabbitmq.Delivery) rabbitmq.Action {
			handled.Add(1)
			return rabbitmq.Ack
		})
	}()
	// Several concurrent publishers use more channels than the pool keeps.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.PublishConfirmed(ctx, envelopes(fmt.Sprintf("g%d", i), 50)); err != nil {
				t.Errorf("PublishConfirmed: %v", err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "deliveries", func() bool { return handled.Load() >= 400 })
	c.DropConnectionsForTest()
	waitFor(t, 5*time.Second, "reconnect", func() bool {
		return c.Ping(ctx) == nil && c.ConsumerState() == rabbitmq.ConsumerConsuming
	})
	if _, err := c.PublishConfirmed(ctx, envelopes("late", 10)); err != nil {
		t.Fatalf("PublishConfirmed after reconnect: %v", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Consume: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	var n int
	deadline := time.Now().Add(5 * time.Second)
	for {
		n = runtime.NumGoroutine()
		if n <= base || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n > base {
		buf := make([]byte, 1<<16)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("%d goroutines after Close, %d before Dial:\n%s", n, base, buf)
	}
}

func TestCloseWhileConsumingDrains(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	publishAll(t, c, envelopes("cl", 5))
	var started, finished atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(context.Background(), rabbitmq.ConsumeOptions{Concurrency: 1, Prefetch: 5},
			func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
				started.Add(1)
				time.Sleep(200 * time.Millisecond)
				// Handlers still running at Close can publish dead letters.
				if err := c.NotifyDeadLetter(ctx, message.DeadLetter{MessageID: d.MessageID, Reason: "test"}); err != nil {
					t.Errorf("NotifyDeadLetter during drain: %v", err)
				}
				finished.Add(1)
				return rabbitmq.Ack
			})
	}()
	waitFor(t, 5*time.Second, "a handler to start", func() bool { return started.Load() == 1 })
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Consume: %v", err)
	}
	if s, f := started.Load(), finished.Load(); s != f {
		t.Errorf("%d handlers started, %d finished", s, f)
	}
	waitFor(t, 5*time.Second, "the rest back in the queue", func() bool {
		return depth(t, conn, topo.Queue) == 5-int(finished.Load())
	})
}

// stopConsume stops a Consume running with ctx (cancel) whose result goes
// to done, checks that it returns nil, and says how long it took.
func stopConsume(t *testing.T, cancel context.CancelFunc, done <-chan error) time.Duration {
	t.Helper()
	begin := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Consume: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Consume did not return once stopped")
	}
	return time.Since(begin)
}

func TestDrainTimeoutCancelsStuckHandlers(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	publishAll(t, c, envelopes("stuck", 1))
	started := make(chan struct{})
	var sawCancel atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(ctx, rabbitmq.ConsumeOptions{DrainTimeout: 200 * time.Millisecond},
			func(hctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
				close(started)
				<-hctx.Done()
				sawCancel.Store(true)
				return rabbitmq.NackRequeue
			})
	}()
	<-started
	if d := stopConsume(t, cancel, done); d > 2*time.Second {
		t.Errorf("Consume took %s to give up on a stuck handler with a 200ms drain timeout", d)
	}
	waitFor(t, 2*time.Second, "the handler to see its context cancelled", sawCancel.Load)
	waitFor(t, 5*time.Second, "the message back in the queue", func() bool { return depth(t, conn, topo.Queue) == 1 })
}

// TestCancelledHandlersSettle: a handler still running at the drain timeout
// sees its context cancelled, and Consume waits up to SettleTimeout for it
// to return (a processor records the webhook's answer then) and settles
// what it returns; one that never returns does not hold Consume past that.
func TestCancelledHandlersSettle(t *testing.T) {
	for _, tc := range []struct {
		name     string
		after    time.Duration // how long the handler works on after the cancel
		wantAck  bool
		maxTotal time.Duration
	}{
		{name: "finishes within the settle timeout", after: 300 * time.Millisecond, wantAck: true, maxTotal: 3 * time.Second},
		{name: "never finishes", after: time.Hour, wantAck: false, maxTotal: 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := adminConn(t)
			topo := newTopology(t, conn)
			c := dial(t, topo)
			publishAll(t, c, envelopes("settle", 1))
			started := make(chan struct{})
			var returned atomic.Bool
			stuck := make(chan struct{})
			t.Cleanup(func() { close(stuck) })
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(ctx, rabbitmq.ConsumeOptions{DrainTimeout: 100 * time.Millisecond, SettleTimeout: time.Second},
					func(hctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
						close(started)
						<-hctx.Done()
						select {
						case <-time.After(tc.after):
						case <-stuck:
						}
						returned.Store(true)
						return rabbitmq.Ack
					})
			}()
			<-started
			if d := stopConsume(t, cancel, done); d > tc.maxTotal {
				t.Errorf("Consume took %s to return", d)
			}
			if got := returned.Load(); got != tc.wantAck {
				t.Fatalf("handler returned before Consume: %v, want %v", got, tc.wantAck)
			}
			want := 1
			if tc.wantAck {
				want = 0
			}
			waitFor(t, 5*time.Second, "the queue to settle", func() bool { return depth(t, conn, topo.Queue) == want })
			if tc.wantAck {
				// The ack stays an ack: nothing comes back.
				time.Sleep(300 * time.Millisecond)
				if n := depth(t, conn, topo.Queue); n != 0 {
					t.Fatalf("queue holds %d after the handler acked", n)
				}
			}
		})
	}
}

// deleteQueue deletes queue behind the Client's back, as an operator or a
// broker policy might.
func deleteQueue(t *testing.T, conn *amqp.Connection, queue string) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatalf("delete queue %s: %v", queue, err)
	}
}

// TestQueueDeletedWhileConnectedIsDeclaredAgain: a queue deleted while the
// Client's connections stay up is declared again once the refusals it
// causes have gone on for a while, so publishing and consuming resume
// without a restart.
func TestQueueDeletedWhileConnectedIsDeclaredAgain(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	k := startConsumer(t, c, rabbitmq.ConsumeOptions{}, nil)
	publishAll(t, c, envelopes("before", 1))
	waitFor(t, 10*time.Second, "the first message consumed", func() bool { return k.total.Load() == 1 })

	// publishUntil publishes until the broker takes it, as the relay does
	// pass after pass.
	publishUntil := func(what string, publish func(context.Context) error) {
		t.Helper()
		refused := 0
		waitFor(t, 30*time.Second, what, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := publish(ctx); err != nil {
				refused++
				time.Sleep(200 * time.Millisecond)
				return false
			}
			return true
		})
		if refused == 0 {
			t.Fatalf("%s: the first publish was taken, with the queue deleted", what)
		}
	}

	deleteQueue(t, conn, topo.Queue)
	envs := envelopes("after", 3)
	publishUntil("a publish taken once the queue is back", func(ctx context.Context) error {
		_, err := c.PublishConfirmed(ctx, envs)
		return err
	})
	waitFor(t, 30*time.Second, "the messages after the queue came back consumed", func() bool {
		return k.count("after-0000")+k.count("after-0001")+k.count("after-0002") == 3
	})

	deleteQueue(t, conn, topo.DeadLetterQueue)
	n := message.DeadLetter{MessageID: "dead", Reason: "test", FailedAt: time.Now().UTC()}
	publishUntil("a dead-letter notice taken once its queue is back", func(ctx context.Context) error {
		return c.NotifyDeadLetter(ctx, n)
	})
}

// TestDropHandsOutNothingFromTheDeadChannel: when the connection drops
// while every worker is busy, the delivery waiting for a worker is not
// handed out from the dead channel (the broker has put it back; its ack
// would fail). The consumer subscribes again at once, not when a worker is
// free, and every later copy comes from the new channel, redelivered.
func TestDropHandsOutNothingFromTheDeadChannel(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	publishAll(t, c, envelopes("held", 3))
	var mu sync.Mutex
	var dropped time.Time
	var late []string // copies of the dead channel handed out after the drop
	busy := make(chan struct{})
	var once sync.Once
	k := startConsumer(t, c, rabbitmq.ConsumeOptions{Concurrency: 1, Prefetch: 3}, func(ctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
		mu.Lock()
		if !dropped.IsZero() && !d.Redelivered {
			late = append(late, d.MessageID)
		}
		mu.Unlock()
		once.Do(func() {
			close(busy)
			time.Sleep(3 * time.Second) // the only worker is busy through the drop
		})
		return rabbitmq.Ack
	})
	<-busy
	// The broker must have handed the other two over, so that one waits
	// for the worker when the connection drops; dropped before, they would
	// simply come back on the new channel and the test would prove nothing.
	waitFor(t, 5*time.Second, "the broker to hand every message to the consumer", func() bool {
		return depth(t, conn, topo.Queue) == 0
	})
	mu.Lock()
	dropped = time.Now()
	mu.Unlock()
	c.DropConnectionsForTest()
	waitFor(t, 2*time.Second, "the consumer noticing the drop while its worker is busy", func() bool {
		return c.ConsumerState() != rabbitmq.ConsumerConsuming
	})
	waitFor(t, 15*time.Second, "every message handled", func() bool {
		return k.count("held-0000") > 0 && k.count("held-0001") > 0 && k.count("held-0002") > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(late) > 0 {
		t.Fatalf("handed out from the dead channel after the drop: %v", late)
	}
}

// TestDialKeepsABadURIsPasswordOutOfItsError: a URI that does not parse
// is refused with an error that names the URI without its password, and
// quotes no piece of it either.
func TestDialKeepsABadURIsPasswordOutOfItsError(t *testing.T) {
	for _, uri := range []string{
		"amqp://user:secr/et@127.0.0.1:5672/",   // the slash ends the host: an "invalid port"
		"amqp://user:secret%zz@127.0.0.1:5672/", // an invalid escape
		"amqp://user:secret@127.0.0.1:port/",
	} {
		_, err := rabbitmq.Dial(context.Background(), uri, rabbitmq.Topology{Exchange: "x", Queue: "q", DeadLetterQueue: "d"}, nil)
		if err == nil {
			t.Fatalf("Dial(%q) succeeded", uri)
		}
		if strings.Contains(err.Error(), "secr") {
			t.Errorf("Dial error quotes the password: %v", err)
		}
		if !strings.Contains(err.Error(), "not a valid") {
			t.Errorf("Dial error does not say what is wrong: %v", err)
		}
	}
}

// TestDialTellsPermanentRefusals: a password or virtual host the broker
// refuses, and a URI that does not parse, are errors that dialling again
// will not fix; a closed port is not.
func TestDialTellsPermanentRefusals(t *testing.T) {
	topo := rabbitmq.Topology{Exchange: "x", Queue: "q", DeadLetterQueue: "d"}
	for uri, want := range map[string]bool{
		"amqp://guest:wrong@127.0.0.1:5672/":     true,
		"amqp://guest:guest@127.0.0.1:5672/nope": true,
		"amqp://guest:guest@127.0.0.1:port/":     true,
		"amqp://guest:guest@127.0.0.1:1/":        false,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := rabbitmq.Dial(ctx, uri, topo, nil)
		cancel()
		if err == nil || rabbitmq.Permanent(err) != want {
			t.Errorf("Dial(%s): %v; Permanent %v, want %v", uri, err, err != nil && rabbitmq.Permanent(err), want)
		}
	}
}

// TestQueueDepths: the client reports what each of its queues holds, for
// the metrics; a queue that has gone is an error, not a depth of 0, and
// leaves the client working.
func TestQueueDepths(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	c := dial(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	publishAll(t, c, envelopes("depth", 3))
	if err := c.NotifyDeadLetter(ctx, message.DeadLetter{MessageID: "dl-1", Reason: "test"}); err != nil {
		t.Fatalf("NotifyDeadLetter: %v", err)
	}
	got, err := c.QueueDepths(ctx)
	want := []rabbitmq.QueueDepth{{Queue: topo.Queue, Ready: 3}, {Queue: topo.DeadLetterQueue, Ready: 1}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("QueueDepths = %+v, %v; want %+v", got, err, want)
	}

	if _, err := adminChannel(t, conn).QueueDelete(topo.DeadLetterQueue, false, false, false); err != nil {
		t.Fatalf("delete the dead-letter queue: %v", err)
	}
	if got, err := c.QueueDepths(ctx); err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("QueueDepths with the dead-letter queue gone = %+v, %v; want a NOT_FOUND error", got, err)
	}
	publishAll(t, c, envelopes("after", 1))
	if d := depth(t, conn, topo.Queue); d != 4 {
		t.Errorf("queue holds %d messages, want 4", d)
	}
}
