package groupcommit

// Pending returns how many calls wait for a batch of g.
func Pending[T any](g *Group[T]) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending)
}
