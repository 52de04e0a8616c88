package processor

import (
	"errors"
	"time"

	"github.com/sony/gobreaker/v2"
)

// BreakerSettings configure the circuit breaker around the webhook.
type BreakerSettings struct {
	Name string
	// The circuit opens when, within Window, at least MinRequests calls
	// were made and the share of failures reached FailureRatio.
	FailureRatio float64
	MinRequests  int
	Window       time.Duration
	// Cooldown is how long the circuit stays open before it lets a few
	// trial calls through (half-open).
	Cooldown      time.Duration
	OnStateChange func(from, to string)
}

// LocalBreaker is a gobreaker two-step breaker whose counts live in this
// process. Losing them (a new Lambda instance) only means starting closed.
type LocalBreaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
}

var _ Breaker = (*LocalBreaker)(nil)

// NewLocalBreaker returns a breaker with settings s.
func NewLocalBreaker(s BreakerSettings) *LocalBreaker {
	st := gobreaker.Settings{
		Name:        s.Name,
		MaxRequests: 3,
		// Rolling buckets make the window slide instead of resetting.
		Interval:     s.Window,
		BucketPeriod: max(s.Window/10, time.Second),
		Timeout:      s.Cooldown,
		// A delivery that stopped short of the call says nothing about
		// the webhook, and in half-open state must give its slot back.
		IsExcluded: func(err error) bool { return errors.Is(err, ErrNotCalled) },
		ReadyToTrip: func(c gobreaker.Counts) bool {
			calls := c.Requests - min(c.TotalExclusions, c.Requests)
			return int(calls) >= s.MinRequests &&
				float64(c.TotalFailures) >= s.FailureRatio*float64(calls)
		},
	}
	if s.OnStateChange != nil {
		st.OnStateChange = func(_ string, from, to gobreaker.State) { s.OnStateChange(from.String(), to.String()) }
	}
	return &LocalBreaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st)}
}

// Allow implements Breaker.
func (b *LocalBreaker) Allow() (func(error), error) { return b.cb.Allow() }

// State implements Breaker: "closed", "half-open" or "open".
func (b *LocalBreaker) State() string { return b.cb.State().String() }

// ConsecutiveFailures returns how many calls in a row failed, within the
// window: calls older than the window no longer count. gobreaker rolls its
// window forward in State and Allow, not in Counts, so State runs first.
func (b *LocalBreaker) ConsecutiveFailures() int {
	b.cb.State()
	return int(b.cb.Counts().ConsecutiveFailures)
}
