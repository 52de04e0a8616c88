package redisstore

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// allowScript is GCRA that refuses instead of queueing: if the request fits
// the rate and burst it advances the theoretical arrival time and returns
// 0; otherwise it leaves the state alone and returns how many microseconds
// until a request would fit.
//
// ARGV[1]: emission interval in microseconds, ARGV[2]: burst
var allowScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then
	tat = now
end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait > 0 then
	return math.ceil(wait)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
`)

// Allow takes one request of client from a limit of perSecond requests a
// second with burst of slack, shared by every process. When it refuses, it
// says when to retry.
func (s *Store) Allow(ctx context.Context, client string, perSecond float64, burst int) (bool, time.Duration, error) {
	interval := strconv.FormatFloat(1e6/perSecond, 'f', 3, 64)
	us, err := allowScript.Run(ctx, s.client, []string{s.key("inbound", client)}, interval, max(burst, 1)).Int64()
	if err != nil {
		return false, 0, err
	}
	if us > 0 {
		return false, time.Duration(us) * time.Microsecond, nil
	}
	return true, 0, nil
}
