package redisstore

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

var _ processor.Limiter = (*Limiter)(nil)

// gcraScript takes one token with the generic cell rate algorithm if the
// wait for it is at most a given maximum. The key holds the theoretical
// arrival time (TAT) in microseconds of the server's clock, so processes
// with skewed clocks still share one schedule. A token that is taken
// advances the TAT (the caller waits, then goes); a request that does not
// fit leaves the state alone, so callers that give up (and come back later)
// do not push the schedule ahead for those that go.
//
// ARGV[1]: emission interval in microseconds (1e6 / rate)
// ARGV[2]: burst
// ARGV[3]: the most the caller will wait, in microseconds (0: only now)
//
// It returns the wait in microseconds when the token was taken (0: go now),
// or minus the wait until one would fit (at least 1) when it was not.
var gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local maxwait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then
	tat = now
end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait > maxwait then
	return -math.max(math.ceil(wait), 1)
end
if wait < 0 then
	wait = 0
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return math.floor(wait)
`)

// gcraInterval is the script's ARGV[1] for a rate of perSecond.
func gcraInterval(perSecond float64) string { return strconv.FormatFloat(1e6/perSecond, 'f', 3, 64) }

// gcra runs gcraScript on key and returns the wait and whether the token
// was taken.
func (s *Store) gcra(ctx context.Context, key, interval string, burst int, maxWait time.Duration) (time.Duration, bool, error) {
	us, err := gcraScript.Run(ctx, s.client, []string{key}, interval, burst, maxWait.Microseconds()).Int64()
	if err != nil {
		return 0, false, err
	}
	if us < 0 {
		return time.Duration(-us) * time.Microsecond, false, nil
	}
	return time.Duration(us) * time.Microsecond, true, nil
}

// probeInterval is how often a degraded limiter tries Redis again. In
// between it uses the local limiter without waiting for Redis, so an outage
// that times out (rather than refusing connections) adds no latency.
const probeInterval = time.Second

// Limiter is a rate limit shared by every process through Redis. When Redis
// fails it paces with a local limiter instead (so the global rate becomes
// the local rate times the number of processes) and reports Degraded.
type Limiter struct {
	s        *Store
	key      string
	interval string // microseconds per token
	burst    int
	local    *rate.Limiter
	logger   *slog.Logger

	unlimited bool
	degraded  atomic.Bool
	nextProbe atomic.Int64 // unix nanoseconds
}

// NewLimiter returns a limiter of perSecond tokens a second with burst
// tokens of slack, kept under <prefix>ratelimit:<name>. perSecond 0 means
// unlimited. fallback paces calls while Redis fails; nil builds one with the
// same rate and burst. A nil logger logs to slog.Default().
func NewLimiter(s *Store, name string, perSecond float64, burst int, fallback *rate.Limiter, logger *slog.Logger) *Limiter {
	burst = max(burst, 1)
	if logger == nil {
		logger = slog.Default()
	}
	l := &Limiter{s: s, key: s.key("ratelimit", name), burst: burst, logger: logger, unlimited: perSecond <= 0}
	if l.unlimited {
		return l
	}
	l.interval = gcraInterval(perSecond)
	if fallback == nil {
		fallback = rate.NewLimiter(rate.Limit(perSecond), burst)
	}
	l.local = fallback
	return l
}

// Reserve takes one token if the wait for it is at most maxWait, and
// returns the wait: the caller waits that long, then goes. Otherwise it
// takes nothing and returns reserved false with the wait until a token
// would be free, so that a caller who defers instead of waiting does not
// use up a slot. It returns an error only when ctx is done; a Redis failure
// switches to the local limiter.
func (l *Limiter) Reserve(ctx context.Context, maxWait time.Duration) (wait time.Duration, reserved bool, err error) {
	if l.unlimited {
		return 0, true, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	if l.degraded.Load() {
		// Only one caller per probeInterval tries Redis again.
		now := time.Now().UnixNano()
		next := l.nextProbe.Load()
		if now < next || !l.nextProbe.CompareAndSwap(next, now+int64(probeInterval)) {
			return l.reserveLocal(maxWait)
		}
	}
	wait, reserved, err = l.s.gcra(ctx, l.key, l.interval, l.burst, maxWait)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			// The caller gave up; that says nothing about Redis.
			return 0, false, ctxErr
		}
		l.nextProbe.Store(time.Now().Add(probeInterval).UnixNano())
		if l.degraded.CompareAndSwap(false, true) {
			l.logger.Warn("rate limiter: redis unavailable, pacing with the local limiter", "limiter", l.key, "error", err)
		}
		return l.reserveLocal(maxWait)
	}
	if l.degraded.CompareAndSwap(true, false) {
		l.logger.Info("rate limiter: redis available again", "limiter", l.key)
	}
	return wait, reserved, nil
}

// reserveLocal is Reserve on the local limiter: a reservation that would
// wait too long is given back.
func (l *Limiter) reserveLocal(maxWait time.Duration) (time.Duration, bool, error) {
	r := l.local.Reserve()
	if !r.OK() {
		return maxWait + time.Second, false, nil
	}
	d := r.Delay()
	if d > maxWait {
		r.Cancel()
		return d, false, nil
	}
	return d, true, nil
}

// Degraded reports whether the limiter is pacing locally because Redis
// failed.
func (l *Limiter) Degraded() bool { return l.degraded.Load() }
