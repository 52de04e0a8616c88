package redistest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Cut is a TCP proxy to the local Redis that a test can cut and restore,
// as a network failure would: cut, it closes every connection through it
// and refuses new ones.
type Cut struct {
	ln    net.Listener
	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
}

// NewCut starts a proxy to Addr, up, and stops it at the end of the test.
func NewCut(t testing.TB) *Cut {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cut{ln: ln, conns: map[net.Conn]struct{}{}}
	go c.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		c.Set(false)
	})
	return c
}

// Addr is the proxy's address, to use in place of Redis's.
func (c *Cut) Addr() string { return c.ln.Addr().String() }

// Set cuts Redis off (true) or restores it (false).
func (c *Cut) Set(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down = down
	if down {
		for conn := range c.conns {
			_ = conn.Close()
		}
		clear(c.conns)
	}
}

func (c *Cut) serve() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		go c.pipe(client)
	}
}

func (c *Cut) pipe(client net.Conn) {
	server, err := net.Dial("tcp", Addr)
	if err != nil {
		_ = client.Close()
		return
	}
	c.mu.Lock()
	if c.down {
		c.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	c.conns[client], c.conns[server] = struct{}{}, struct{}{}
	c.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
	_ = client.Close()
	_ = server.Close()
	c.mu.Lock()
	delete(c.conns, client)
	delete(c.conns, server)
	c.mu.Unlock()
}
