package rabbitmq

import amqp "github.com/rabbitmq/amqp091-go"

// DropConnectionsForTest closes the sockets under every connection the
// client has, as a network failure would.
func (c *Client) DropConnectionsForTest() {
	for _, m := range c.conns() {
		m.dropForTest()
	}
}

// LocalAddrsForTest returns the client side addresses of the live
// connections; the broker names a connection "<local> -> <remote>".
func (c *Client) LocalAddrsForTest() []string {
	var out []string
	for _, m := range c.conns() {
		if a := m.localAddr(); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// SetBlockedForTest makes the publishing connection behave as if the broker
// had blocked it (active) or unblocked it, as connection.blocked and
// connection.unblocked do during a memory or disk alarm, which a test cannot
// raise without affecting everyone else on the broker.
func (c *Client) SetBlockedForTest(active bool, reason string) {
	c.pub.setBlocked(amqp.Blocking{Active: active, Reason: reason})
}
