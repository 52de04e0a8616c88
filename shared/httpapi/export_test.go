package httpapi

// SetStatusJoined sets a function called with each GET /status request that
// has its run of the checks, and returns a function that unsets it.
func SetStatusJoined(f func()) (unset func()) {
	statusJoined = f
	return func() { statusJoined = nil }
}
