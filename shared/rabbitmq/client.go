package rabbitmq

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

var (
	_ outbox.Publisher      = (*Client)(nil)
	_ processor.DeadLetters = (*Client)(nil)
)

// Client publishes to and consumes from RabbitMQ. It is safe for concurrent
// use.
//
// A Client owns one connection for publishing, made by Dial, and while
// Consume runs, a second one for consuming: RabbitMQ blocks a publishing
// connection under a memory or disk alarm, and a consumer that shares it
// could then not acknowledge the deliveries whose removal would end the
// alarm. Both connections re-dial themselves when they drop.
type Client struct {
	uri  string
	topo Topology
	log  *slog.Logger

	life context.Context // ends at Close, after consumers have drained
	stop context.CancelFunc
	// consumeStop ends first at Close, so that handlers draining after it
	// can still publish (dead letters, say).
	consumeStop   context.Context
	stopConsumers context.CancelFunc

	pub  *managedConn
	pool chan *pubChannel // idle confirm-mode channels
	// discards counts goroutines left to finish calls on the publishing
	// connection that their callers gave up on: closing a channel, opening
	// one past its caller's deadline, reading queue depths.
	discards tracker

	mu        sync.Mutex
	closed    bool
	consumers map[*managedConn]struct{}
	consumeWG sync.WaitGroup
	consuming atomic.Bool
	state     atomic.Int32 // a consumerState

	closeOnce sync.Once
	closeErr  error
}

// poolSize is how many idle confirm channels a Client keeps. More concurrent
// publishers than this still work: the extra channels are closed after use.
const poolSize = 4

// Dial connects to the broker at uri, declares t (see Declare) and returns a
// Client that keeps the connection up until Close. The first connection is
// made within ctx, once: a broker that cannot be reached or a topology that
// conflicts with what exists is reported to the caller rather than retried.
// Later drops are re-dialed in the background with backoff. logger may be
// nil; nothing logged contains the URI's password.
func Dial(ctx context.Context, uri string, t Topology, logger *slog.Logger) (*Client, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	if err := checkURI(uri); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "rabbitmq")
	life, stop := context.WithCancel(context.Background())
	consumeStop, stopConsumers := context.WithCancel(life)
	c := &Client{
		uri: uri, topo: t, log: logger,
		life: life, stop: stop,
		consumeStop: consumeStop, stopConsumers: stopConsumers,
		pool:      make(chan *pubChannel, poolSize),
		consumers: make(map[*managedConn]struct{}),
	}
	c.state.Store(int32(stateStopped))
	c.pub = newManagedConn(life, uri, "publish", t, logger)
	if err := c.pub.connectNow(ctx); err != nil {
		stop()
		return nil, err
	}
	logger.Info("rabbitmq connected", "uri", redactURI(uri), "exchange", t.Exchange, "queue", t.Queue, "dlq", t.DeadLetterQueue)
	return c, nil
}

// Topology returns the topology the Client declares.
func (c *Client) Topology() Topology { return c.topo }

// Ping reports whether the Client is connected right now: nil if its
// publishing connection (and its consuming one, while Consume runs) is up
// and not blocked by the broker. It does not wait for a reconnect; ctx is
// there for the status endpoint's deadline.
func (c *Client) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.pub.status(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for m := range c.consumers {
		if err := m.status(); err != nil && err != ErrClosed {
			return err
		}
	}
	return nil
}

// Close stops reconnecting, lets a running Consume drain (up to its
// DrainTimeout) and closes the connections. It is safe to call more than
// once; later calls return the first call's result.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stopConsumers()
		c.consumeWG.Wait()
		c.stop()
		c.closeErr = c.pub.close()
		// Idle channels die with their connection; only their
		// bookkeeping is left to drop.
		for {
			select {
			case <-c.pool:
				continue
			default:
			}
			break
		}
		c.discards.wait()
	})
	return c.closeErr
}

func (c *Client) addConsumerConn(m *managedConn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.consumers[m] = struct{}{}
	c.consumeWG.Add(1)
	return nil
}

func (c *Client) removeConsumerConn(m *managedConn) {
	c.mu.Lock()
	delete(c.consumers, m)
	c.mu.Unlock()
	c.consumeWG.Done()
}

// conns returns every connection the Client has now, for test hooks.
func (c *Client) conns() []*managedConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []*managedConn{c.pub}
	for m := range c.consumers {
		out = append(out, m)
	}
	return out
}

func (c *Client) String() string {
	return fmt.Sprintf("rabbitmq.Client(%s)", redactURI(c.uri))
}
