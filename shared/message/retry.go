package message

import (
	"math/rand/v2"
	"time"
)

// RetryPolicy is the schedule of retries after failed deliveries.
type RetryPolicy struct {
	// MaxRetries is the number of attempts allowed after the first.
	MaxRetries int
	BaseDelay  time.Duration
	MaxDelay   time.Duration
	// Jitter is the relative spread around the nominal delay (0.2 = ±20%).
	Jitter float64
}

// Nominal returns the delay before retry n (n >= 1) without jitter:
// min(MaxDelay, BaseDelay * 2^(n-1)).
func (p RetryPolicy) Nominal(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := p.BaseDelay
	for i := 1; i < n; i++ {
		if d >= p.MaxDelay/2 {
			return p.MaxDelay
		}
		d *= 2
	}
	return min(d, p.MaxDelay)
}

// Delay returns the delay before retry n with jitter applied.
func (p RetryPolicy) Delay(n int) time.Duration {
	d := p.Nominal(n)
	if p.Jitter <= 0 {
		return d
	}
	f := 1 + p.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

// Exhausted reports whether a message that has made attempts attempts may
// not be tried again.
func (p RetryPolicy) Exhausted(attempts int) bool { return attempts > p.MaxRetries }
