package rabbitmq_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
)

// freezingProxy is a TCP proxy to the broker that can freeze: it stops
// forwarding in both directions and keeps both sockets open. To the client
// that is a half-open connection, a broker or network that silently stopped
// answering: nothing fails, nothing comes back, until the heartbeat notices.
// internal/chaos's proxy only cuts connections, and a cut is noticed at once.
type freezingProxy struct {
	upstream string
	ln       net.Listener
	frozen   chan struct{} // closed by freeze
	closed   chan struct{} // closed by close
	once     sync.Once
	// down, if set, passes the broker's bytes on to the client of
	// connection n through the proxy (from 0), in place of forward.
	down func(client, up net.Conn, n int)

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// newFreezingProxy listens on a free loopback port, forwards to upstream and
// is closed at the end of the test.
func newFreezingProxy(t *testing.T, upstream string) *freezingProxy {
	return startProxy(t, upstream, nil)
}

// startProxy starts a freezingProxy to upstream whose broker-to-client
// direction, if down is set, down handles.
func startProxy(t *testing.T, upstream string, down func(client, up net.Conn, n int)) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &freezingProxy{upstream: upstream, ln: ln, frozen: make(chan struct{}), closed: make(chan struct{}), down: down}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// freeze stops all forwarding, for good, on every connection.
func (p *freezingProxy) freeze() { close(p.frozen) }

// close drops every connection and stops the proxy.
func (p *freezingProxy) close() {
	p.once.Do(func() {
		close(p.closed)
		_ = p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

func (p *freezingProxy) accept() {
	defer p.wg.Done()
	for n := 0; ; n++ {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		select {
		case <-p.closed:
			p.mu.Unlock()
			_ = client.Close()
			_ = up.Close()
			return
		default:
		}
		p.conns = append(p.conns, client, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.forward(up, client)
		if p.down != nil {
			go func() {
				defer p.wg.Done()
				p.down(client, up, n)
			}()
		} else {
			go p.forward(client, up)
		}
	}
}

// forward copies src to dst until either fails or the proxy closes. Once
// frozen it reads no more and holds what it has read: the bytes stay in the
// socket buffers, and the sockets stay open.
func (p *freezingProxy) forward(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-p.frozen:
			<-p.closed
			return
		default:
		}
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.frozen:
				<-p.closed
				return
			default:
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// uri is testURI with its host and port replaced by the proxy's.
func (p *freezingProxy) uri(t *testing.T) string { return uriThrough(t, p.ln) }

// uriThrough is testURI with its host and port replaced by ln's.
func uriThrough(t *testing.T, ln net.Listener) string {
	t.Helper()
	u, err := amqp.ParseURI(testURI())
	if err != nil {
		t.Fatalf("parse %s: %v", testURI(), err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	u.Host, u.Port = addr.IP.String(), addr.Port
	return u.String()
}

// brokerAddr is the host:port of testURI.
func brokerAddr(t *testing.T) string {
	t.Helper()
	u, err := amqp.ParseURI(testURI())
	if err != nil {
		t.Fatalf("parse %s: %v", testURI(), err)
	}
	return net.JoinHostPort(u.Host, fmt.Sprint(u.Port))
}

// TestStopDoesNotWaitForASilentBroker: a consumer whose connection goes
// half-open (the broker, or the network to it, stops answering while TCP
// stays up) stops within a few seconds, and without error, instead of
// waiting for a cancel-ok or close-ok that never comes until the heartbeat
// declares the connection dead (amqp091 gives up on a connection it has read
// nothing from for one and a half heartbeat intervals: 15 s). An
// orchestrator's stop must not hang on the broker. The broker may go silent
// before the stop (the cancel gets no answer) or while handlers drain (the
// channel's close gets none); a handler still running keeps its drain and
// finishes uncancelled. What the broker had sent on the connection comes
// back to the queue once the connection is really gone: nothing is lost.
func TestStopDoesNotWaitForASilentBroker(t *testing.T) {
	for _, tc := range []struct {
		name string
		// duringDrain: the handler is busy at the stop, and the broker
		// goes silent after it confirmed the cancel, before the handler's
		// ack; otherwise it goes silent before the stop.
		duringDrain bool
	}{
		{name: "silent before the stop"},
		{name: "silent during the drain", duringDrain: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := adminConn(t)
			topo := newTopology(t, conn)
			proxy := newFreezingProxy(t, brokerAddr(t))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := rabbitmq.Dial(ctx, proxy.uri(t), topo, testLogger(t))
			if err != nil {
				t.Fatalf("Dial through the proxy: %v (is RabbitMQ running? start it with `rabbitmq-server -detached`)", err)
			}
			t.Cleanup(func() {
				// The publishing connection is frozen too: dropping it
				// first spares Close the wait for its close-ok, and Close
				// may then say that the connection went (EOF), which is no
				// failure here.
				proxy.close()
				_ = c.Close()
			})

			handled := make(chan struct{})
			release := make(chan struct{})
			releaseHandler := sync.OnceFunc(func() { close(release) })
			// A test that fails midway does not leave the handler to
			// hold Close for the drain timeout.
			t.Cleanup(releaseHandler)
			if !tc.duringDrain {
				releaseHandler()
			}
			var once sync.Once
			var handlerCancelled atomic.Bool
			cctx, stop := context.WithCancel(context.Background())
			defer stop()
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(cctx, rabbitmq.ConsumeOptions{}, func(hctx context.Context, d rabbitmq.Delivery) rabbitmq.Action {
					once.Do(func() { close(handled) })
					<-release
					if hctx.Err() != nil {
						handlerCancelled.Store(true)
					}
					return rabbitmq.Ack
				})
			}()
			// One message handled: the subscription is live on the
			// consume connection, through the proxy.
			publishAll(t, c, envelopes("silent", 1))
			select {
			case <-handled:
			case <-time.After(10 * time.Second):
				t.Fatal("the message published through the proxy was not handled")
			}
			waitFor(t, 5*time.Second, "consumer state consuming", func() bool { return c.ConsumerState() == rabbitmq.ConsumerConsuming })

			admin := adminChannel(t, conn)
			var begin time.Time
			var wantBack string
			if tc.duringDrain {
				begin = time.Now()
				stop()
				// The consumer is stopped before it cancels; the cancel-ok
				// takes milliseconds here. (A quorum queue counts a
				// cancelled consumer as long as it holds a delivery, so the
				// queue's consumer count cannot tell.) Were the freeze to
				// come first, the stop would wait on the cancel instead:
				// bounded all the same.
				waitFor(t, 5*time.Second, "consumer state stopped", func() bool { return c.ConsumerState() == rabbitmq.ConsumerStopped })
				time.Sleep(500 * time.Millisecond)
				proxy.freeze()
				// The handler's ack is stuck in the frozen connection, and
				// so is the channel's close.
				releaseHandler()
				wantBack = "silent-0000"
			} else {
				proxy.freeze()
				// A message the broker sends now is stuck in the frozen
				// connection, unacknowledged. It is confirmed, so that an
				// empty queue means it went to the consumer.
				if err := admin.Confirm(false); err != nil {
					t.Fatalf("confirm mode: %v", err)
				}
				confirm, err := admin.PublishWithDeferredConfirmWithContext(ctx, topo.Exchange, topo.Queue, false, false,
					amqp.Publishing{Body: []byte(`{}`), MessageId: "stuck"})
				if err != nil {
					t.Fatalf("publish past the proxy: %v", err)
				}
				if ok, err := confirm.WaitContext(ctx); !ok || err != nil {
					t.Fatalf("publish past the proxy: confirmed %v, err %v", ok, err)
				}
				waitFor(t, 5*time.Second, "the broker to send the message to the frozen consumer", func() bool {
					return depth(t, conn, topo.Queue) == 0
				})
				begin = time.Now()
				stop()
				wantBack = "stuck"
			}

			awaitStop(t, done, begin, 8*time.Second, "on a silent broker")
			if handlerCancelled.Load() {
				t.Error("the handler's context was cancelled: the silent broker shortened its drain")
			}

			// Once the connection is really gone, the broker requeues what
			// it had sent on it, acknowledged or not by the handler. (The
			// first message may come back in the other case too: the
			// handler returns before its ack leaves, and the freeze may
			// catch the ack.)
			proxy.close()
			waitFor(t, 10*time.Second, wantBack+" back in the queue", func() bool {
				for {
					m, ok, err := admin.Get(topo.Queue, true)
					if err != nil {
						t.Fatalf("get from %s: %v", topo.Queue, err)
					}
					if !ok {
						return false
					}
					if m.MessageId == wantBack {
						return true
					}
				}
			})
		})
	}
}

// amqpFrame is the header of one AMQP frame and, for a method frame, its
// class and method.
type amqpFrame struct {
	typ             byte
	channel         uint16
	class, method   uint16
	connectionIndex int // which connection through the proxy, from 0
}

// basicCancel is the broker telling a consumer that its subscription is
// gone (the queue was deleted, say).
func (f amqpFrame) basicCancel() bool { return f.typ == 1 && f.class == 60 && f.method == 30 }

// stallingProxy is a TCP proxy to the broker that reads the frames the
// broker sends and stops passing them on after the first one that its stall
// function picks, on that connection only: the client's frames still reach
// the broker, its answers are read and thrown away, and both sockets stay
// open. To the client that is a broker that took a request and then fell
// silent, as on a half-open connection, from a chosen point on; amqp091
// notices only when its heartbeat gives up (15 s). Unlike freezingProxy it
// can let a connection's handshake through and stall the next call.
type stallingProxy struct {
	*freezingProxy               // never frozen: its accept and close
	stalled        chan struct{} // closed when the first connection stalls
	once           sync.Once
}

// newStallingProxy listens on a free loopback port, forwards to the broker
// and is closed at the end of the test.
func newStallingProxy(t *testing.T, stall func(amqpFrame) bool) *stallingProxy {
	t.Helper()
	p := &stallingProxy{stalled: make(chan struct{})}
	p.freezingProxy = startProxy(t, brokerAddr(t), func(client, up net.Conn, n int) {
		p.forwardFrames(client, up, n, stall)
	})
	return p
}

// forwardFrames passes the broker's frames on to the client until stall
// picks one; it passes that one on and discards the rest.
func (p *stallingProxy) forwardFrames(client, up net.Conn, n int, stall func(amqpFrame) bool) {
	r := bufio.NewReader(up)
	// The protocol header's answer is connection.start, a frame like any
	// other: every read here is a whole frame.
	hdr := make([]byte, 7)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		rest := make([]byte, binary.BigEndian.Uint32(hdr[3:7])+1) // payload and frame end
		if _, err := io.ReadFull(r, rest); err != nil {
			return
		}
		if _, err := client.Write(append(append([]byte{}, hdr...), rest...)); err != nil {
			return
		}
		f := amqpFrame{typ: hdr[0], channel: binary.BigEndian.Uint16(hdr[1:3]), connectionIndex: n}
		if f.typ == 1 && len(rest) >= 5 {
			f.class, f.method = binary.BigEndian.Uint16(rest[0:2]), binary.BigEndian.Uint16(rest[2:4])
		}
		if stall(f) {
			p.once.Do(func() { close(p.stalled) })
			_, _ = io.Copy(io.Discard, r)
			return
		}
	}
}

// waitStalled fails the test unless a connection stalls within d.
func (p *stallingProxy) waitStalled(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.stalled:
	case <-time.After(d):
		t.Fatalf("no connection through the proxy reached its stall within %s", d)
	}
}

// stallOnChannelsFrom stalls connection first and later ones once the broker
// has answered the first call on a channel (channel.open-ok): the handshake
// goes through, the topology's declare gets no answer.
func stallOnChannelsFrom(first int) func(amqpFrame) bool {
	return func(f amqpFrame) bool { return f.connectionIndex >= first && f.channel != 0 }
}

// TestPublishGivesUpWithItsContextOnASilentBroker: PublishConfirmed on a
// connection whose broker has stopped answering returns when its context
// ends, with the context's error and nothing confirmed, rather than when
// amqp091's heartbeat gives up (15 s): opening the publish channel and
// putting it in confirm mode wait for the broker too. A relay whose pass
// outlived its lease would have another relay publish the same batch again;
// a Lambda would overrun its budget. Close still returns soon after: the
// channel open left behind ends with the connection.
func TestPublishGivesUpWithItsContextOnASilentBroker(t *testing.T) {
	topo := newTopology(t, adminConn(t))
	proxy := newFreezingProxy(t, brokerAddr(t))
	c := dialThrough(t, proxy.uri(t), topo)
	closed := false
	t.Cleanup(func() {
		if !closed {
			proxy.close()
			_ = c.Close()
		}
	})
	proxy.freeze()

	const deadline = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	begin := time.Now()
	confirmed, err := c.PublishConfirmed(ctx, envelopes("silent", 1))
	took := time.Since(begin)
	t.Logf("PublishConfirmed returned after %s: %v", took.Round(10*time.Millisecond), err)
	if took > deadline+3*time.Second {
		t.Errorf("PublishConfirmed with a %s deadline took %s on a silent broker", deadline, took.Round(10*time.Millisecond))
	}
	if !errors.Is(err, context.DeadlineExceeded) || len(confirmed) != 0 {
		t.Errorf("PublishConfirmed on a silent broker: %d confirmed, err %v; want none and the context's deadline", len(confirmed), err)
	}

	// Close waits up to closeTimeout (3 s) for the close-ok the frozen
	// broker never sends, then closes the socket, which ends the open.
	begin = time.Now()
	_ = c.Close() // an error is no failure: the broker did not answer
	closed = true
	if took := time.Since(begin); took > 8*time.Second {
		t.Errorf("Close on a silent broker took %s after a publish gave up", took.Round(10*time.Millisecond))
	}
}

// TestDialGivesUpWithItsContextWhenTheDeclareStalls: Dial returns when its
// context ends even if the broker falls silent after the handshake, while
// the topology is declared: neither the declare's channel open nor its
// close (which waits for a close-ok) outlasts the caller's deadline, and the
// connection is dropped.
func TestDialGivesUpWithItsContextWhenTheDeclareStalls(t *testing.T) {
	topo := newTopology(t, adminConn(t))
	proxy := newStallingProxy(t, stallOnChannelsFrom(0))
	const deadline = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	begin := time.Now()
	c, err := rabbitmq.Dial(ctx, proxy.uri(t), topo, testLogger(t))
	took := time.Since(begin)
	if err == nil {
		_ = c.Close()
		t.Fatal("Dial succeeded through a proxy that stalls the declare")
	}
	t.Logf("Dial returned after %s: %v", took.Round(10*time.Millisecond), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial: %v, want the context's deadline", err)
	}
	// Ending the context closes the socket: Dial returns at once.
	if took > deadline+2*time.Second {
		t.Errorf("Dial with a %s deadline took %s when the declare stalled", deadline, took.Round(10*time.Millisecond))
	}
}

// TestCloseDoesNotWaitForAStalledRedial: Close returns at once while the
// publishing connection's background re-dial is stuck in its declare on a
// broker that fell silent after the handshake, instead of waiting for the
// declare channel's close-ok until the heartbeat gives up.
func TestCloseDoesNotWaitForAStalledRedial(t *testing.T) {
	topo := newTopology(t, adminConn(t))
	// Connection 0 is Dial's; the re-dial after the drop is connection 1.
	proxy := newStallingProxy(t, stallOnChannelsFrom(1))
	c := dialThrough(t, proxy.uri(t), topo)
	c.DropConnectionsForTest()
	// The first re-dial is immediate; once the broker has opened its
	// declare channel, the proxy stalls it.
	proxy.waitStalled(t, 10*time.Second)
	begin := time.Now()
	_ = c.Close() // the connection is down: nothing to report
	// Close ends the re-dial's context, which closes its socket: there is
	// nothing to wait for, not even closeTimeout for a close-ok.
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Close during a stalled re-dial took %s", took.Round(10*time.Millisecond))
	}
}

// TestStopDoesNotWaitForAStalledResubscribe: a consumer whose subscription
// the broker cancels (its queue was deleted), and whose connection then falls
// silent, stops within a few seconds of its context's end while it
// re-subscribes: neither the close of the cancelled channel nor the open of
// the next one waits for answers that come only when the heartbeat gives up
// (15 s), beyond what an orchestrator's stop allows.
func TestStopDoesNotWaitForAStalledResubscribe(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	proxy := newStallingProxy(t, amqpFrame.basicCancel)
	c := dialThrough(t, proxy.uri(t), topo)
	t.Cleanup(func() { _ = c.Close() })
	cctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, rabbitmq.ConsumeOptions{}, func(context.Context, rabbitmq.Delivery) rabbitmq.Action {
			return rabbitmq.Ack
		})
	}()
	waitFor(t, 10*time.Second, "consumer state consuming", func() bool { return c.ConsumerState() == rabbitmq.ConsumerConsuming })

	deleteQueue(t, conn, topo.Queue)
	proxy.waitStalled(t, 10*time.Second)
	// The consumer, told of the cancel, goes back to reconnecting and at
	// once re-subscribes; a moment more lets it get into the calls that go
	// unanswered (it gives no sign of being inside one).
	waitFor(t, 10*time.Second, "consumer state reconnecting", func() bool { return c.ConsumerState() == rabbitmq.ConsumerReconnecting })
	time.Sleep(100 * time.Millisecond)
	begin := time.Now()
	stop()
	// The stop waits up to closeTimeout (3 s) for the connection's
	// close-ok, which the silent broker does not send.
	awaitStop(t, done, begin, 8*time.Second, "while re-subscribing on a silent broker")
}

// dialThrough dials uri (a proxy's) for topo, within 10 s.
func dialThrough(t *testing.T, uri string, topo rabbitmq.Topology) *rabbitmq.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := rabbitmq.Dial(ctx, uri, topo, testLogger(t))
	if err != nil {
		t.Fatalf("Dial through the proxy: %v", err)
	}
	return c
}

// awaitStop fails the test unless Consume, stopped at begin, returns on
// done without an error within bound.
func awaitStop(t *testing.T, done <-chan error, begin time.Time, bound time.Duration, while string) {
	t.Helper()
	select {
	case err := <-done:
		took := time.Since(begin)
		t.Logf("Consume returned %s after the stop, %s", took.Round(10*time.Millisecond), while)
		if err != nil {
			t.Errorf("Consume: %v", err)
		}
		if took > bound {
			t.Errorf("Consume took %s to stop %s, want under %s", took.Round(10*time.Millisecond), while, bound)
		}
	case <-time.After(time.Minute):
		t.Fatalf("Consume did not return within a minute of the stop, %s", while)
	}
}

// TestQueueDepthsRefusesWhileTheBrokerBlocks: while the broker blocks the
// publishing connection (a memory or disk alarm), QueueDepths says so at
// once instead of opening a channel that the broker, reading nothing from
// the connection, would leave waiting until the alarm clears; once
// unblocked it reads the depths again.
func TestQueueDepthsRefusesWhileTheBrokerBlocks(t *testing.T) {
	topo := newTopology(t, adminConn(t))
	c := dial(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.SetBlockedForTest(true, "low on memory")
	begin := time.Now()
	got, err := c.QueueDepths(ctx)
	took := time.Since(begin)
	if err == nil || !strings.Contains(err.Error(), "low on memory") {
		t.Errorf("QueueDepths on a blocked connection = %+v, %v; want an error that gives the broker's reason", got, err)
	}
	if took > time.Second {
		t.Errorf("QueueDepths on a blocked connection took %s", took.Round(10*time.Millisecond))
	}
	c.SetBlockedForTest(false, "")
	if got, err := c.QueueDepths(ctx); err != nil || len(got) != 2 {
		t.Errorf("QueueDepths once unblocked = %+v, %v", got, err)
	}
}

// TestDialClosesTheSocketWhenTLSSettingsFail: a Dial that fails after the
// TCP connection is made (here the amqps URI names a CA file that does not
// exist) closes the socket it opened rather than leaving it to the garbage
// collector: a process re-dialing with such settings would otherwise hold
// one more socket each attempt.
func TestDialClosesTheSocketWhenTLSSettingsFail(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	uri := fmt.Sprintf("amqps://guest:guest@127.0.0.1:%d/?cacertfile=%s", port, t.TempDir()+"/missing-ca.pem")
	topo := rabbitmq.Topology{Exchange: "unused", Queue: "unused.q", DeadLetterQueue: "unused.dlq"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := rabbitmq.Dial(ctx, uri, topo, testLogger(t)); err == nil {
		_ = c.Close()
		t.Fatal("Dial with a missing CA file succeeded")
	} else {
		t.Logf("Dial: %v", err)
	}
	// The connection was made before the CA file was read: it waits in
	// the listener's backlog.
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	server, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept the connection Dial made: %v", err)
	}
	defer server.Close()
	_ = server.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := server.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read from the socket a failed Dial left: %d bytes, %v; want EOF (closed by the client)", n, err)
	}
}

// TestRedeclareGivesUpWithItsContextOnASilentBroker: a publish refused
// because the queue is gone declares the topology again (after the
// refusals have gone on for a while) on its live connection, within the
// publish's context: if the broker falls silent just then, PublishConfirmed
// returns when its context ends, not when the heartbeat gives up, and the
// connection stays open for later calls rather than being torn down.
func TestRedeclareGivesUpWithItsContextOnASilentBroker(t *testing.T) {
	conn := adminConn(t)
	topo := newTopology(t, conn)
	// The broker returns each publish to the missing queue (basic.return).
	// Publishes reuse one channel, so the first channel opened after a
	// return is the declare's: the proxy stalls once the broker has
	// opened it, and the declare, and the channel's close, get no answer.
	var returned atomic.Bool
	proxy := newStallingProxy(t, func(f amqpFrame) bool {
		switch {
		case f.typ != 1:
		case f.class == 60 && f.method == 50:
			returned.Store(true)
		case f.class == 20 && f.method == 11 && returned.Load():
			return true
		}
		return false
	})
	c := dialThrough(t, proxy.uri(t), topo)
	t.Cleanup(func() { _ = c.Close() })
	deleteQueue(t, conn, topo.Queue)

	const deadline = 3 * time.Second
	giveUp := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-proxy.stalled:
			t.Fatal("the proxy stalled between two publishes")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		begin := time.Now()
		_, err := c.PublishConfirmed(ctx, envelopes("refused", 1))
		took := time.Since(begin)
		cancel()
		if err == nil {
			t.Fatal("a publish to the deleted queue was confirmed")
		}
		select {
		case <-proxy.stalled:
			t.Logf("the publish whose declare stalled returned after %s: %v", took.Round(10*time.Millisecond), err)
			if took > deadline+2*time.Second {
				t.Errorf("PublishConfirmed with a %s deadline took %s when its declare stalled", deadline, took.Round(10*time.Millisecond))
			}
			if err := c.Ping(context.Background()); err != nil {
				t.Errorf("Ping after the declare gave up: %v; want the connection left open", err)
			}
			return
		default:
		}
		if time.Now().After(giveUp) {
			t.Fatal("no publish got to declaring the topology again within 20 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
