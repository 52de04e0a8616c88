package redisstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/redistest"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

const redisAddr = redistest.Addr

func TestMain(m *testing.M) {
	// The tests against a closed port would print one line per failed dial.
	redisstore.SetClientLogger(slog.New(slog.DiscardHandler))
	m.Run()
}

// newStore opens a store on the test Redis with a prefix of its own, so that
// tests never see each other's keys. A Redis that does not answer fails the
// test: the suite must not pass without exercising Redis.
func newStore(t *testing.T) *redisstore.Store {
	t.Helper()
	prefix := "test:" + rand.Text()[:12] + ":"
	s, err := redisstore.Open(t.Context(), config.RedisOptions{Addr: redisAddr}, prefix)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Redis is not reachable at %s (%v). Start it with:\n  %s", redisAddr, err, redistest.Start)
	}
	t.Cleanup(func() { _ = redistest.DeleteKeys(prefix) })
	return s
}

// deadStore points at a closed port: every command fails.
func deadStore(t *testing.T) *redisstore.Store {
	t.Helper()
	s, err := redisstore.Open(t.Context(), config.RedisOptions{Addr: "127.0.0.1:1"}, "test:")
	if err != nil {
		t.Fatalf("Open must not fail when Redis is down: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestOpenWithRedisDown(t *testing.T) {
	s := deadStore(t)
	if err := s.Ping(t.Context()); err == nil {
		t.Fatal("Ping against a closed port succeeded")
	}
}

func TestOpenTLS(t *testing.T) {
	// rediss:// against a plain-text server must fail the handshake, not
	// fall back to plain text.
	s, err := redisstore.Open(t.Context(), config.RedisOptions{Addr: redisAddr, TLS: true}, "test:")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer s.Close()
	if err := s.Ping(t.Context()); err == nil {
		t.Fatal("TLS ping to a plain-text Redis succeeded")
	}
}

func TestInboxClaimIsExclusive(t *testing.T) {
	in := newStore(t)
	var (
		wg      sync.WaitGroup
		claimed atomic.Int32
		busy    atomic.Int32
	)
	start := make(chan struct{})
	for i := range 16 {
		wg.Go(func() {
			<-start
			ok, state, _, err := in.Claim(t.Context(), "m1", fmt.Sprint("holder-", i), 0, time.Minute)
			if err != nil {
				t.Errorf("claim: %v", err)
				return
			}
			if ok {
				claimed.Add(1)
			} else if state == outbox.InboxInProgress {
				busy.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if claimed.Load() != 1 || busy.Load() != 15 {
		t.Fatalf("claimed %d, in progress %d; want 1 and 15", claimed.Load(), busy.Load())
	}
	state, _, err := in.Peek(t.Context(), "m1")
	if err != nil || state != outbox.InboxInProgress {
		t.Fatalf("Peek = %v, %v; want InboxInProgress", state, err)
	}
}

func TestInboxCompleteAndRelease(t *testing.T) {
	ctx := t.Context()
	in := newStore(t)

	if state, _, err := in.Peek(ctx, "m1"); err != nil || state != outbox.InboxNone {
		t.Fatalf("Peek of unknown id = %v, %v; want InboxNone", state, err)
	}
	if ok, _, _, err := in.Claim(ctx, "m1", "tok", 0, time.Minute); err != nil || !ok {
		t.Fatalf("first claim = %v, %v", ok, err)
	}
	if err := in.Complete(ctx, "m1", "wh-42", time.Minute); err != nil {
		t.Fatal(err)
	}
	ok, state, wid, err := in.Claim(ctx, "m1", "tok", 0, time.Minute)
	if err != nil || ok || state != outbox.InboxDone || wid != "wh-42" {
		t.Fatalf("claim after Complete = %v, %v, %q, %v; want false, InboxDone, wh-42", ok, state, wid, err)
	}
	// Release must never drop a done marker.
	if err := in.Release(ctx, "m1", "tok"); err != nil {
		t.Fatal(err)
	}
	state, wid, err = in.Peek(ctx, "m1")
	if err != nil || state != outbox.InboxDone || wid != "wh-42" {
		t.Fatalf("Peek after Release = %v, %q, %v; want InboxDone, wh-42", state, wid, err)
	}

	// Release drops the caller's own claim, so the next copy may claim;
	// a release with another token (a holder whose claim expired and was
	// taken over) leaves the claim.
	if ok, _, _, err := in.Claim(ctx, "m2", "tok", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim m2 = %v, %v", ok, err)
	}
	if err := in.Release(ctx, "m2", "expired-holder"); err != nil {
		t.Fatal(err)
	}
	if state, _, _ := in.Peek(ctx, "m2"); state != outbox.InboxInProgress {
		t.Fatalf("a release by another token dropped the claim: %v", state)
	}
	if err := in.Release(ctx, "m2", "tok"); err != nil {
		t.Fatal(err)
	}
	if ok, _, _, err := in.Claim(ctx, "m2", "next", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim after Release = %v, %v; want claimed", ok, err)
	}
	// An empty webhook message ID is still a done marker.
	if err := in.Complete(ctx, "m3", "", time.Minute); err != nil {
		t.Fatal(err)
	}
	if state, wid, err := in.Peek(ctx, "m3"); err != nil || state != outbox.InboxDone || wid != "" {
		t.Fatalf("Peek m3 = %v, %q, %v; want InboxDone", state, wid, err)
	}
}

func TestInboxClaimExpires(t *testing.T) {
	ctx := t.Context()
	in := newStore(t)
	if ok, _, _, err := in.Claim(ctx, "m1", "tok", 0, time.Second); err != nil || !ok {
		t.Fatalf("claim = %v, %v", ok, err)
	}
	if ok, _, _, err := in.Claim(ctx, "m1", "other", 0, time.Minute); err != nil {
		t.Fatalf("second claim: %v", err)
	} else if ok {
		t.Fatal("second claim within ttl succeeded")
	}
	// The same token again is the same claim (the client's retry of a
	// claim whose answer it did not get).
	if ok, _, _, err := in.Claim(ctx, "m1", "tok", 0, time.Second); err != nil || !ok {
		t.Fatalf("the holder's own claim again = %v, %v; want claimed", ok, err)
	}
	time.Sleep(1200 * time.Millisecond)
	if ok, _, _, err := in.Claim(ctx, "m1", "other", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim after ttl = %v, %v; want claimed", ok, err)
	}
}

// TestInboxTakenMarker: MarkTaken marks a dispatch, and every earlier one,
// taken for its ttl, past the claim; a claim alone marks nothing; and a
// mark of an older dispatch does not lower the mark.
func TestInboxTakenMarker(t *testing.T) {
	ctx := t.Context()
	in := newStore(t)
	if taken, err := in.Taken(ctx, "m1", 0); err != nil || taken {
		t.Fatalf("Taken before any claim = %v, %v; want false", taken, err)
	}
	if ok, _, _, err := in.Claim(ctx, "m1", "tok", 1, 50*time.Millisecond); err != nil || !ok {
		t.Fatalf("claim = %v, %v", ok, err)
	}
	if taken, err := in.Taken(ctx, "m1", 1); err != nil || taken {
		t.Fatalf("Taken after a claim alone = %v, %v; want false", taken, err)
	}
	if err := in.MarkTaken(ctx, "m1", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the claim expired; the mark stays
	for seq, want := range map[int]bool{0: true, 1: true, 2: false} {
		if taken, err := in.Taken(ctx, "m1", seq); err != nil || taken != want {
			t.Errorf("Taken(m1, %d) = %v, %v; want %v", seq, taken, err, want)
		}
	}
	if err := in.MarkTaken(ctx, "m1", 0, time.Minute); err != nil {
		t.Fatal(err)
	}
	if taken, _ := in.Taken(ctx, "m1", 1); !taken {
		t.Error("a mark of an older dispatch lowered the mark")
	}
}

func TestInboxRedisDown(t *testing.T) {
	in := deadStore(t)
	start := time.Now()
	_, _, _, err := in.Claim(t.Context(), "m1", "tok", 0, time.Minute)
	if err == nil {
		t.Fatal("claim against a closed port succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("claim took %s to fail; want < 2s", d)
	}
	if _, _, err := in.Peek(t.Context(), "m1"); err == nil {
		t.Fatal("peek against a closed port succeeded")
	}
}

func TestLease(t *testing.T) {
	ctx := t.Context()
	l := newStore(t)

	release, ok, err := l.Acquire(ctx, "relay", time.Minute)
	if err != nil || !ok {
		t.Fatalf("first acquire = %v, %v", ok, err)
	}
	release2, ok, err := l.Acquire(ctx, "relay", time.Minute)
	if err != nil || ok {
		t.Fatalf("second acquire = %v, %v; want not acquired", ok, err)
	}
	release2(ctx) // a loser's release must not free the holder's lease
	if _, ok, err := l.Acquire(ctx, "relay", time.Minute); err != nil {
		t.Fatalf("acquire after a non-holder released: %v", err)
	} else if ok {
		t.Fatal("lease taken after a non-holder released it")
	}
	if _, ok, _ := l.Acquire(ctx, "other", time.Minute); !ok {
		t.Fatal("a lease of another name was not free")
	}
	release(ctx)
	release3, ok, err := l.Acquire(ctx, "relay", time.Minute)
	if err != nil || !ok {
		t.Fatalf("acquire after release = %v, %v", ok, err)
	}
	release(ctx) // the old holder's second release must not free the new lease
	if _, ok, err := l.Acquire(ctx, "relay", time.Minute); err != nil {
		t.Fatalf("acquire after a stale release: %v", err)
	} else if ok {
		t.Fatal("stale release freed the new holder's lease")
	}
	release3(ctx)
}

func TestLeaseExpires(t *testing.T) {
	ctx := t.Context()
	l := newStore(t)
	release, ok, err := l.Acquire(ctx, "relay", 100*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("acquire = %v, %v", ok, err)
	}
	time.Sleep(200 * time.Millisecond)
	release2, ok, err := l.Acquire(ctx, "relay", time.Minute)
	if err != nil || !ok {
		t.Fatalf("acquire after expiry = %v, %v", ok, err)
	}
	release(ctx) // after expiry: must not release the new holder
	if _, ok, err := l.Acquire(ctx, "relay", time.Minute); err != nil {
		t.Fatalf("acquire after the expired holder's release: %v", err)
	} else if ok {
		t.Fatal("expired holder's release freed the new lease")
	}
	release2(ctx)
}

// pace makes n reservations, waiting as told, and returns the time taken.
func pace(t *testing.T, l *redisstore.Limiter, n int) time.Duration {
	t.Helper()
	start := time.Now()
	for range n {
		wait, ok, err := l.Reserve(t.Context(), time.Minute)
		if err != nil || !ok {
			t.Fatalf("reserve = %v, %v", ok, err)
		}
		time.Sleep(wait)
	}
	return time.Since(start)
}

func TestLimiterPaces(t *testing.T) {
	l := redisstore.NewLimiter(newStore(t), "webhook", 50, 1, nil, slog.New(slog.DiscardHandler))
	// 50/s with a burst of 1: the first goes at once, each next one 20 ms
	// later, so 11 reservations span 200 ms.
	d := pace(t, l, 11)
	if d < 180*time.Millisecond || d > 2*time.Second {
		t.Fatalf("11 reservations at 50/s took %s; want about 200ms", d)
	}
	if l.Degraded() {
		t.Fatal("Degraded with Redis up")
	}
}

func TestLimiterIsShared(t *testing.T) {
	s := newStore(t)
	quiet := slog.New(slog.DiscardHandler)
	a := redisstore.NewLimiter(s, "webhook", 1, 2, nil, quiet)
	b := redisstore.NewLimiter(s, "webhook", 1, 2, nil, quiet)
	var waits []time.Duration
	for _, l := range []*redisstore.Limiter{a, b, a, b} {
		w, _, err := l.Reserve(t.Context(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	// Burst 2 at 1/s: two at once, then 1 s and 2 s (less the time the
	// calls took), whichever limiter value asks.
	if waits[0] != 0 || waits[1] != 0 || waits[2] < 800*time.Millisecond || waits[2] > 1001*time.Millisecond ||
		waits[3] < 1800*time.Millisecond || waits[3] > 2001*time.Millisecond {
		t.Fatalf("waits %v; want [0 0 ~1s ~2s]", waits)
	}
}

// TestLimiterRefusalTakesNothing: a caller that will not wait as long as
// the next token needs gets the wait and takes nothing, so any number of
// refusals leave the schedule where it was (a processor defers such a
// message; were the token taken anyway, the schedule would run ahead of
// every deferred message and none would ever fit). Both on Redis and on the
// local limiter that stands in while Redis is down.
func TestLimiterRefusalTakesNothing(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	for name, l := range map[string]*redisstore.Limiter{
		"redis": redisstore.NewLimiter(newStore(t), "webhook", 1, 1, nil, quiet),
		"local": redisstore.NewLimiter(deadStore(t), "webhook", 1, 1, rate.NewLimiter(1, 1), quiet),
	} {
		t.Run(name, func(t *testing.T) {
			if w, ok, err := l.Reserve(t.Context(), 0); err != nil || !ok || w != 0 {
				t.Fatalf("first Reserve = %v, %v, %v; want 0, true", w, ok, err)
			}
			for i := range 50 {
				w, ok, err := l.Reserve(t.Context(), 10*time.Millisecond)
				if err != nil || ok {
					t.Fatalf("Reserve %d = %v, %v, %v; want a refusal", i, w, ok, err)
				}
				if w <= 10*time.Millisecond || w > 1001*time.Millisecond {
					t.Fatalf("Reserve %d: wait %v; want at most the 1 s to the next token", i, w)
				}
			}
			// The next token is still the one 1 s after the first.
			w, ok, err := l.Reserve(t.Context(), 2*time.Second)
			if err != nil || !ok || w > 1001*time.Millisecond {
				t.Fatalf("Reserve after the refusals = %v, %v, %v; want a wait of at most 1 s", w, ok, err)
			}
		})
	}
}

func TestLimiterUnlimited(t *testing.T) {
	// Unlimited never touches Redis, so even a dead store answers at once.
	l := redisstore.NewLimiter(deadStore(t), "webhook", 0, 1, nil, nil)
	for range 100 {
		if w, ok, err := l.Reserve(t.Context(), 0); err != nil || w != 0 || !ok {
			t.Fatalf("Reserve = %v, %v, %v; want 0, true", w, ok, err)
		}
	}
	if l.Degraded() {
		t.Fatal("unlimited limiter reports Degraded")
	}
}

type syncBuffer = logbuf.Buffer

func TestLimiterFallsBackWhenRedisIsDown(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	l := redisstore.NewLimiter(deadStore(t), "webhook", 50, 1, rate.NewLimiter(50, 1), logger)

	d := pace(t, l, 11)
	if d < 180*time.Millisecond || d > 1500*time.Millisecond {
		t.Fatalf("11 reservations at 50/s on the local limiter took %s; want about 200ms", d)
	}
	if !l.Degraded() {
		t.Fatal("Degraded is false with Redis down")
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("logged %d warnings for one outage; want 1:\n%s", n, logs.String())
	}
}

func TestLimiterHonoursContext(t *testing.T) {
	l := redisstore.NewLimiter(newStore(t), "webhook", 50, 1, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := l.Reserve(ctx, time.Minute); err == nil {
		t.Fatal("Reserve with a cancelled context succeeded")
	}
	if l.Degraded() {
		t.Fatal("a cancelled caller marked the limiter degraded")
	}
}

// replyHeldOnce is a proxy to upstream that holds back Redis's answer to
// the first SET it passes for hold: longer than the client's read timeout,
// so the client gives up on it and retries the command, which Redis has
// already carried out.
func replyHeldOnce(t *testing.T, upstream string, hold time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var armed atomic.Bool
	armed.Store(true)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			var holdNext atomic.Bool
			go pipe(u, c, func(chunk []byte) {
				if bytes.Contains(bytes.ToUpper(chunk), []byte("SET")) && armed.CompareAndSwap(true, false) {
					holdNext.Store(true)
				}
			})
			go pipe(c, u, func([]byte) {
				if holdNext.Swap(false) {
					time.Sleep(hold)
				}
			})
		}
	}()
	return ln.Addr().String()
}

// pipe copies src to dst, calling before with each chunk first, until
// either side fails; then it closes dst.
func pipe(dst, src net.Conn, before func(chunk []byte)) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			before(buf[:n])
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestLeaseTakenByARetriedCommand: when the answer to the SET that took the
// lease is lost to a timeout and the client retries, the retry finds the
// key set, by this very caller: the lease is held, not lost to nobody for
// its whole TTL.
func TestLeaseTakenByARetriedCommand(t *testing.T) {
	ctx := t.Context()
	prefix := "test:" + rand.Text()[:12] + ":"
	t.Cleanup(func() { _ = redistest.DeleteKeys(prefix) })
	slow, err := redisstore.Open(ctx, config.RedisOptions{Addr: replyHeldOnce(t, redisAddr, 800*time.Millisecond)}, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	direct, err := redisstore.Open(ctx, config.RedisOptions{Addr: redisAddr}, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()

	release, ok, err := slow.Acquire(ctx, "relay", time.Minute)
	if err != nil || !ok {
		t.Fatalf("acquire whose first answer timed out = %v, %v; want the lease", ok, err)
	}
	if _, ok, err := direct.Acquire(ctx, "relay", time.Minute); err != nil {
		t.Fatalf("second acquire: %v", err)
	} else if ok {
		t.Fatal("a second holder took the lease")
	}
	release(ctx)
	if _, ok, _ := direct.Acquire(ctx, "relay", time.Minute); !ok {
		t.Fatal("the lease was not released")
	}
}
