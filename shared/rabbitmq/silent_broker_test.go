package rabbitmq_test

import (
	"context"
	"fmt"
	"net"
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

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// newFreezingProxy listens on a free loopback port, forwards to upstream and
// is closed at the end of the test.
func newFreezingProxy(t *testing.T, upstream string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &freezingProxy{upstream: upstream, ln: ln, frozen: make(chan struct{}), closed: make(chan struct{})}
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
	for {
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
		go p.forward(client, up)
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
func (p *freezingProxy) uri(t *testing.T) string {
	t.Helper()
	u, err := amqp.ParseURI(testURI())
	if err != nil {
		t.Fatalf("parse %s: %v", testURI(), err)
	}
	addr := p.ln.Addr().(*net.TCPAddr)
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

			const bound = 8 * time.Second
			select {
			case err := <-done:
				took := time.Since(begin)
				t.Logf("Consume returned %s after the stop, on a frozen connection", took.Round(10*time.Millisecond))
				if err != nil {
					t.Errorf("Consume: %v", err)
				}
				if took > bound {
					t.Errorf("Consume took %s to stop on a silent broker, want under %s", took.Round(10*time.Millisecond), bound)
				}
			case <-time.After(time.Minute):
				t.Fatal("Consume did not return within a minute of the stop, on a frozen connection")
			}
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
