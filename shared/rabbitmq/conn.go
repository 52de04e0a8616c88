package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redact"
)

// ErrClosed is returned by a Client's methods after Close.
var ErrClosed = errors.New("rabbitmq client closed")

// Reconnection timing. The first re-dial after a drop is immediate; later
// ones back off exponentially to maxBackoff, with jitter so that many
// processes that lost the same broker do not all come back at once.
const (
	baseBackoff = 250 * time.Millisecond
	maxBackoff  = 30 * time.Second
	// dialTimeout bounds one dial and handshake when the caller's context
	// has no earlier deadline.
	dialTimeout = 15 * time.Second
	heartbeat   = 10 * time.Second
	// closeTimeout bounds the wait for the broker's close-ok.
	closeTimeout = 3 * time.Second
)

// backoff returns the wait before re-dial attempt n (n = 0 is the first).
func backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := baseBackoff
	for i := 1; i < n && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	// Equal jitter: half fixed, half random.
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// redactURI returns uri without its password, for logs and errors.
func redactURI(uri string) string { return redact.URL(uri) }

// errBadURI marks a URI that does not parse.
var errBadURI = errors.New("not a valid amqp:// or amqps:// URI")

// Permanent reports whether err, from Dial, looks like one that dialling
// again will not fix: a URI that does not parse, credentials or a virtual
// host the broker refuses, or a queue that exists with other arguments.
//
// Only "looks like": amqp091 reports a connection that drops during the
// login as refused credentials too (403), and NOT_ALLOWED (530) is also a
// connection limit reached; only the virtual host's is taken here. A caller
// that gives up should see the error more than once first.
func Permanent(err error) bool {
	if errors.Is(err, errBadURI) {
		return true
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.Code {
	case amqp.AccessRefused, amqp.PreconditionFailed:
		return true
	case amqp.NotAllowed:
		return strings.Contains(strings.ToLower(ae.Reason), "vhost")
	}
	return false
}

// checkURI parses uri without letting its password reach an error message.
// The parser's own errors quote the URL, or the part of it that did not
// parse, which may be a piece of the password ("invalid port \":secr\"" for
// a password with a slash in it), so none of their text is kept.
func checkURI(uri string) error {
	if _, err := amqp.ParseURI(uri); err != nil {
		return fmt.Errorf("parse rabbitmq uri %s: %w (percent-encode reserved characters such as / @ : %% in the user name and password)", redactURI(uri), errBadURI)
	}
	return nil
}

// tracker counts goroutines left to finish calls to the broker that their
// caller stopped waiting for (a channel open, a channel close), so that
// whoever closes the connection they run on can wait for them: such a call
// returns once its connection is closed, at the latest. A broker that has
// stopped answering would otherwise keep them, and what they hold, until
// amqp091's heartbeat gives up, or for good on a blocked connection.
type tracker struct {
	mu      sync.Mutex
	waiting bool // wait has begun
	wg      sync.WaitGroup
}

// start runs f in a goroutine that wait waits for. It reports false, and
// does not run f, once wait has begun: the connection is closed by then, so
// that f would fail, and a WaitGroup must not be added to while it is
// waited on.
func (t *tracker) start(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiting {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

// wait refuses new goroutines and waits for those started. The caller
// closes the connection first, or the wait lasts as long as the broker's
// silence.
func (t *tracker) wait() {
	t.mu.Lock()
	t.waiting = true
	t.mu.Unlock()
	t.wg.Wait()
}

// within runs call, which waits for the broker, in a goroutine that bg
// tracks, and waits for it until ctx ends: amqp091's calls take no context,
// and a broker that stopped answering (a half-open connection, a blocked
// one) would hold the caller until the heartbeat gives up, or for good. If
// ctx ends first, within returns ctx's error at once; what call returns
// later is handed to drop (which closes the channel it opened, say) in that
// goroutine. It returns ErrClosed if bg's owner is closing.
func within[T any](ctx context.Context, bg *tracker, call func() (T, error), drop func(T)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	// Unbuffered: a result is either taken by the caller or dropped, never
	// both and never neither.
	done := make(chan result)
	if !bg.start(func() {
		v, err := call()
		select {
		case done <- result{v, err}:
		case <-ctx.Done():
			if err == nil {
				drop(v)
			}
		}
	}) {
		return zero, ErrClosed
	}
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// closeChannel closes ch, waiting for the broker's close-ok; it is for
// goroutines a tracker counts.
func closeChannel(ch *amqp.Channel) { _ = ch.Close() }

// managedConn is one AMQP connection that re-dials itself. A connection is
// declared into existence with the topology each time it is (re)made, so a
// broker that lost its definitions gets them back.
type managedConn struct {
	uri  string
	name string // "publish" or "consume": the connection name the broker shows
	topo Topology
	log  *slog.Logger

	life     context.Context // ends when the owner closes
	stop     context.CancelFunc
	loopDone chan struct{}
	// bg counts the calls on this connection that their callers gave up
	// on; close and abort wait for them.
	bg tracker

	mu        sync.Mutex
	conn      *amqp.Connection // nil while down
	raw       net.Conn
	gen       uint64        // counts successful connects
	up        chan struct{} // closed when a connection is made; replaced on a drop
	blocked   chan struct{} // non-nil while the broker blocks publishing; closed when it stops
	blockWhy  string
	lastErr   error
	downSince time.Time
	// missingSince is when the refusals redeclare hears of began,
	// missingLast when it last heard of one, redeclared when it last ran.
	missingSince, missingLast, redeclared time.Time
}

func newManagedConn(parent context.Context, uri, name string, topo Topology, log *slog.Logger) *managedConn {
	life, stop := context.WithCancel(parent)
	return &managedConn{
		uri: uri, name: name, topo: topo, log: log.With("connection", name),
		life: life, stop: stop, loopDone: make(chan struct{}),
		up: make(chan struct{}), downSince: time.Now(),
	}
}

// connectNow makes the first connection within ctx and starts the watcher.
func (m *managedConn) connectNow(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Close must be able to interrupt the first dial too.
	stopLife := context.AfterFunc(m.life, cancel)
	defer stopLife()
	w, err := m.connect(ctx)
	if err != nil {
		m.stop()
		close(m.loopDone)
		return err
	}
	go m.run(w)
	return nil
}

// startDown starts the watcher without a connection: it dials in the
// background, with backoff, until it succeeds or the owner closes.
func (m *managedConn) startDown() { go m.run(nil) }

// watched is what the watcher listens to on one connection.
type watched struct {
	gen    uint64
	closes chan *amqp.Error
	blocks chan amqp.Blocking
}

func (m *managedConn) run(w *watched) {
	defer close(m.loopDone)
	connected := w != nil
	for {
		if w != nil {
			if !m.watch(w) {
				return
			}
		}
		w = nil
		for attempt := 0; w == nil; attempt++ {
			if !sleep(m.life, backoff(attempt)) {
				return
			}
			ctx, cancel := context.WithTimeout(m.life, dialTimeout)
			var err error
			w, err = m.connect(ctx)
			cancel()
			if err != nil {
				if m.life.Err() != nil {
					return
				}
				m.setErr(err)
				m.log.Warn("rabbitmq connect failed; retrying", "attempt", attempt+1, "err", err)
				continue
			}
			if connected {
				m.log.Info("rabbitmq reconnected", "attempt", attempt+1)
			} else {
				m.log.Info("rabbitmq connected", "uri", redactURI(m.uri))
			}
			connected = true
		}
	}
}

// watch follows one connection until it closes (false: the owner closed).
func (m *managedConn) watch(w *watched) bool {
	for {
		select {
		case b, ok := <-w.blocks:
			if !ok {
				w.blocks = nil
				continue
			}
			m.setBlocked(b)
		case amqpErr, ok := <-w.closes:
			if m.life.Err() != nil {
				return false
			}
			var err error = amqpErr
			if !ok || amqpErr == nil {
				err = errors.New("connection closed by client")
			}
			m.markDown(w.gen, err)
			m.log.Warn("rabbitmq connection lost; reconnecting", "err", err)
			return true
		case <-m.life.Done():
			return false
		}
	}
}

// connect dials, declares the topology and publishes the new connection.
func (m *managedConn) connect(ctx context.Context) (*watched, error) {
	conn, raw, err := m.dial(ctx)
	if err != nil {
		return nil, err
	}
	// The handshake's deadline is gone by now, and a declare that ctx
	// ends leaves calls behind that wait for the broker (the channel's
	// close-ok among them) until the heartbeat gives up. The connection
	// is thrown away if the declare fails, so ending ctx closes its
	// socket, which ends them at once. Close ends ctx too: m.life is its
	// parent.
	stopWatch := context.AfterFunc(ctx, func() { _ = raw.Close() })
	err = m.declare(ctx, conn)
	if err == nil && !stopWatch() {
		// ctx ended as the declare finished: the socket is closed, or
		// about to be.
		err = fmt.Errorf("declare rabbitmq topology: %w", ctx.Err())
	}
	if err != nil {
		// Once ctx has ended the socket is going: a close handshake on
		// it would wait for a close-ok until closeTimeout. Otherwise the
		// watch stays on through the handshake, which ending ctx cuts
		// short too.
		if ctx.Err() == nil {
			_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
		}
		stopWatch()
		_ = raw.Close()
		return nil, err
	}
	w := &watched{
		closes: conn.NotifyClose(make(chan *amqp.Error, 1)),
		blocks: conn.NotifyBlocked(make(chan amqp.Blocking, 1)),
	}
	m.mu.Lock()
	if m.life.Err() != nil {
		m.mu.Unlock()
		_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
		_ = raw.Close()
		return nil, ErrClosed
	}
	m.gen++
	w.gen = m.gen
	m.conn, m.raw, m.lastErr = conn, raw, nil
	close(m.up)
	m.mu.Unlock()
	return w, nil
}

func (m *managedConn) dial(ctx context.Context) (*amqp.Connection, net.Conn, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("reliable-messaging " + m.name)
	var raw net.Conn
	var stopWatch func() bool
	cfg := amqp.Config{
		Heartbeat:  heartbeat,
		Properties: props,
		// Dial is called synchronously by DialConfig, so raw and stopWatch
		// are written before DialConfig returns.
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			deadline := time.Now().Add(dialTimeout)
			if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
				deadline = dl
			}
			// The handshake has no context; a deadline bounds it, and
			// ending ctx moves the deadline to now.
			if err := c.SetDeadline(deadline); err != nil {
				_ = c.Close()
				return nil, err
			}
			stopWatch = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
			raw = c
			return c, nil
		},
	}
	conn, err := amqp.DialConfig(m.uri, cfg)
	if stopWatch != nil && !stopWatch() {
		// ctx ended during the handshake: even if it succeeded, the
		// deadline may now be in the past.
		if err == nil {
			_ = conn.Close()
		}
		_ = raw.Close()
		return nil, nil, fmt.Errorf("connect to rabbitmq %s: %w", redactURI(m.uri), ctx.Err())
	}
	if err != nil {
		// DialConfig leaves the socket open when it fails after the TCP
		// dial: on TLS settings it cannot load (cacertfile, certfile,
		// keyfile), and when the handshake fails (no SASL mechanism in
		// common, refused credentials), where amqp091's reader goes on
		// reading it until the broker gives up on the handshake. Only a
		// failed TLS handshake closes it. Closing it twice does no harm.
		if raw != nil {
			_ = raw.Close()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("connect to rabbitmq %s: %w", redactURI(m.uri), err)
	}
	return conn, raw, nil
}

// declare declares the topology within ctx on a channel of its own. It
// leaves the channel to close in the background: the close waits for the
// broker's close-ok, which on a live connection that stopped answering
// (redeclare runs on one) comes only when the connection goes, and the
// caller must not wait that long. The connection's close waits for it.
func (m *managedConn) declare(ctx context.Context, conn *amqp.Connection) error {
	ch, err := within(ctx, &m.bg, conn.Channel, closeChannel)
	if err != nil {
		return fmt.Errorf("open channel to declare topology: %w", err)
	}
	err = Declare(ctx, ch, m.topo)
	// Refused only while the connection closes: the channel goes with it.
	_ = m.bg.start(func() { closeChannel(ch) })
	return err
}

// redeclareAfter is how long refusals that point at a missing queue or
// exchange go on before a connection declares the topology again, and
// redeclareEvery how often it does so at most. The wait matters: a quorum
// queue deleted and declared again at once can leave its consumers
// attached to neither queue, uncancelled (seen on RabbitMQ 3.10), where a
// second's wait lets the broker cancel them first, so that they subscribe
// again.
const (
	redeclareAfter = 2 * time.Second
	redeclareEvery = 5 * time.Second
)

// redeclare declares the topology again on the live connection once the
// refusals have gone on for redeclareAfter, at most once every
// redeclareEvery. The topology is declared at each connect; a queue or
// exchange deleted while the connection stays up (by hand, by a broker
// policy) would otherwise refuse every publish and subscription until the
// process restarts. Messages in a deleted queue are gone, but not from the
// outbox: the stale sweep publishes them again.
func (m *managedConn) redeclare(ctx context.Context) {
	m.mu.Lock()
	conn := m.conn
	now := time.Now()
	if now.Sub(m.missingLast) > redeclareEvery {
		// The first refusal in a while: a new spell of them begins.
		m.missingSince = now
	}
	m.missingLast = now
	due := now.Sub(m.missingSince) >= redeclareAfter && now.Sub(m.redeclared) >= redeclareEvery
	if due {
		m.redeclared = now
	}
	m.mu.Unlock()
	if !due || conn == nil || conn.IsClosed() {
		return
	}
	if err := m.declare(ctx, conn); err != nil {
		m.log.Warn("rabbitmq: declaring the topology again failed", "err", err)
		return
	}
	m.log.Warn("rabbitmq: a queue or exchange was missing; declared the topology again",
		"exchange", m.topo.Exchange, "queue", m.topo.Queue, "dlq", m.topo.DeadLetterQueue)
}

// missingTopology reports whether err says that a queue or exchange does not
// exist: a 404 from the broker, or a message returned as unroutable.
func missingTopology(err error) bool {
	var amqpErr *amqp.Error
	var unroutable *unroutableError
	return errors.As(err, &unroutable) || errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound
}

// get returns the live connection, waiting for a reconnect within ctx.
func (m *managedConn) get(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		m.mu.Lock()
		conn, gen, up, lastErr := m.conn, m.gen, m.up, m.lastErr
		m.mu.Unlock()
		if conn != nil {
			if !conn.IsClosed() {
				return conn, gen, nil
			}
			m.markDown(gen, errors.New("connection closed"))
			continue
		}
		select {
		case <-up:
		case <-m.life.Done():
			return nil, 0, ErrClosed
		case <-ctx.Done():
			if lastErr != nil {
				return nil, 0, fmt.Errorf("rabbitmq not connected (last error: %v): %w", lastErr, ctx.Err())
			}
			return nil, 0, fmt.Errorf("rabbitmq not connected: %w", ctx.Err())
		}
	}
}

// markDown forgets connection gen, if it is still the current one.
func (m *managedConn) markDown(gen uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != gen || m.conn == nil {
		return
	}
	m.conn, m.raw = nil, nil
	m.up = make(chan struct{})
	m.lastErr = err
	m.downSince = time.Now()
	if m.blocked != nil {
		close(m.blocked)
		m.blocked = nil
	}
}

func (m *managedConn) setErr(err error) {
	m.mu.Lock()
	m.lastErr = err
	m.mu.Unlock()
}

func (m *managedConn) setBlocked(b amqp.Blocking) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case b.Active && m.blocked == nil:
		m.blocked = make(chan struct{})
		m.blockWhy = b.Reason
		m.log.Warn("rabbitmq blocks publishing on this connection", "reason", b.Reason)
	case !b.Active && m.blocked != nil:
		close(m.blocked)
		m.blocked = nil
		m.log.Info("rabbitmq unblocked this connection")
	}
}

// waitUnblocked waits within ctx while the broker blocks the connection
// (a memory or disk alarm): a publish on a blocked connection would hang in
// a socket write that no context can interrupt.
func (m *managedConn) waitUnblocked(ctx context.Context) error {
	m.mu.Lock()
	b, why := m.blocked, m.blockWhy
	m.mu.Unlock()
	if b == nil {
		return nil
	}
	select {
	case <-b:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbitmq blocks publishing (%s): %w", why, ctx.Err())
	}
}

// blockedErr returns an error if the broker blocks the connection now (a
// memory or disk alarm): it reads nothing from a blocked connection, so a
// call that waits for its answer would wait until the alarm clears.
func (m *managedConn) blockedErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.blocked != nil {
		return fmt.Errorf("rabbitmq blocks the %s connection: %s", m.name, m.blockWhy)
	}
	return nil
}

// status returns nil if the connection is up and not blocked.
func (m *managedConn) status() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.life.Err() != nil:
		return ErrClosed
	case m.conn == nil || m.conn.IsClosed():
		if m.lastErr != nil {
			return fmt.Errorf("rabbitmq %s connection down since %s: %v", m.name, m.downSince.UTC().Format(time.RFC3339), m.lastErr)
		}
		return fmt.Errorf("rabbitmq %s connection down since %s", m.name, m.downSince.UTC().Format(time.RFC3339))
	case m.blocked != nil:
		return fmt.Errorf("rabbitmq blocks publishing on the %s connection: %s", m.name, m.blockWhy)
	}
	return nil
}

// detach stops the watcher and takes the connection away from m, so that
// nothing re-dials it or hands it out any more.
func (m *managedConn) detach() (*amqp.Connection, net.Conn) {
	m.stop()
	<-m.loopDone
	m.mu.Lock()
	defer m.mu.Unlock()
	conn, raw := m.conn, m.raw
	m.conn, m.raw = nil, nil
	return conn, raw
}

// close stops the watcher and closes the connection, waiting up to
// closeTimeout for the broker's close-ok, then for the calls left behind on
// it, which return once it is closed.
func (m *managedConn) close() error {
	conn, raw := m.detach()
	defer m.bg.wait()
	if raw != nil {
		// Before the wait: the calls left behind return once the socket
		// is closed, whatever the close handshake below came to.
		defer func() { _ = raw.Close() }()
	}
	if conn == nil || conn.IsClosed() {
		return nil
	}
	// CloseDeadline's deadline is on the socket, and amqp091's heartbeater
	// moves the read deadline on whenever a frame arrives: a broker that
	// sends one more heartbeat and then falls silent would stretch the wait
	// to the heartbeat's own timeout. Closing the socket bounds it anyway.
	if raw != nil {
		backstop := time.AfterFunc(closeTimeout, func() { _ = raw.Close() })
		defer backstop.Stop()
	}
	if err := conn.CloseDeadline(time.Now().Add(closeTimeout)); err != nil && !errors.Is(err, amqp.ErrClosed) {
		return fmt.Errorf("close rabbitmq %s connection: %w", m.name, err)
	}
	return nil
}

// abort stops the watcher and closes the connection's socket without the
// closing handshake, for a broker that has stopped answering (a half-open
// connection): waiting for its close-ok would last until the heartbeat
// gives up. The broker, when it notices, requeues what was left
// unacknowledged; calls still waiting on the connection return once
// amqp091's reader sees the socket closed.
func (m *managedConn) abort() {
	_, raw := m.detach()
	if raw != nil {
		_ = raw.Close()
	}
	m.bg.wait()
}

// dropForTest closes the socket under the connection, as a network failure
// would.
func (m *managedConn) dropForTest() {
	m.mu.Lock()
	raw := m.raw
	m.mu.Unlock()
	if raw != nil {
		_ = raw.Close()
	}
}

// localAddr returns the client side address of the live connection, which
// the broker uses in the connection's name.
func (m *managedConn) localAddr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == nil {
		return ""
	}
	return m.conn.LocalAddr().String()
}
