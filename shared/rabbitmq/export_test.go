package rabbitmq

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
