package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/mongostore"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redisstore"
)

// guards are the inbox and the relay lease: Redis while it answers, the
// durable documents of MongoDB while it does not. Redis keeps nothing on
// disk, so it is never the only guard anyway: a message's status and
// dispatch number in MongoDB decide whether it may be delivered.
type guards struct {
	redis  *redisstore.Store
	mongo  *mongostore.Store
	logger *slog.Logger
	down   atomic.Bool
	// standInKeep is how long what this process writes to the MongoDB
	// stand-in (a claim, a done marker) may matter once Redis is back: as
	// long as a taken mark is kept.
	standInKeep time.Duration
	// markedUntil is until when this process last recorded the stand-in
	// in use (unix nanoseconds); see markStandIn.
	markedUntil atomic.Int64
	// mark serializes markStandIn's writes; visibleAt is when the period
	// it started is surely seen by every process.
	mark struct {
		sync.Mutex
		visibleAt time.Time
	}
	// used caches the last reading of the stand-in's recorded use; see
	// standInUsed.
	used struct {
		sync.Mutex
		readAt, until time.Time
		reading       bool
	}
	// standIn holds the claims this process took in the MongoDB stand-in
	// (message id to token), for Release to delete there too, even once
	// Redis is back: left behind, such a claim would read as a dispatch
	// taken (see Taken) for the two days it is kept. Complete forgets one:
	// its message is done, and the sweep never asks about it.
	standIn sync.Map
}

var (
	_ processor.Inbox = (*guards)(nil)
	_ outbox.Inbox    = (*guards)(nil)
	_ outbox.Lease    = (*guards)(nil)
)

// fallback records whether Redis failed, logging each change once. An
// error of a caller that gave up (its context ended) says nothing about
// Redis: it is no outage, and the caller's MongoDB call fails the same way.
func (g *guards) fallback(err error) bool {
	if err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return true
	}
	if err == nil {
		if g.down.CompareAndSwap(true, false) {
			g.logger.Info("redis is back; inbox and lease use it again")
		}
		return false
	}
	if g.down.CompareAndSwap(false, true) {
		g.logger.Warn("redis unreachable; inbox and lease fall back to mongodb", "error", err)
	}
	return true
}

// Degraded reports whether the last guard operation had to fall back.
func (g *guards) Degraded() bool { return g.down.Load() }

// standInRead is how often a process reads whether the stand-in is in use
// (see standInUsed).
const standInRead = time.Second

// markStandIn records, before this process writes a claim or a done marker
// to the MongoDB stand-in, that every process must read the stand-in beside
// Redis (see Claim) for at least standInKeep after that write: once Redis is
// back, a done marker written there is otherwise unseen (a copy redelivered
// then would call the webhook again), and so is a live claim (a copy
// claimed in Redis then would be delivered beside it). It writes until
// now + 2·standInKeep whenever less than standInKeep is left, so at most
// once per standInKeep. A process reads the record at most once per
// standInRead, so when this process starts a period (its own last one has
// ended), it waits that long before its first write to the stand-in: each
// process's first claims there in an outage wait a second. Its error fails
// the write to the stand-in, which nobody would check otherwise once Redis
// is back.
func (g *guards) markStandIn(ctx context.Context) error {
	g.mark.Lock()
	now := time.Now()
	if time.Unix(0, g.markedUntil.Load()).Sub(now) <= g.standInKeep {
		until := now.Add(2 * g.standInKeep)
		if err := g.mongo.SetStandInUsed(ctx, until); err != nil {
			g.mark.Unlock()
			return err
		}
		if !time.Unix(0, g.markedUntil.Load()).After(now) {
			g.mark.visibleAt = now.Add(standInRead)
		}
		g.markedUntil.Store(until.UnixNano())
	}
	wait := time.Until(g.mark.visibleAt)
	g.mark.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// standInUsed reports whether the stand-in may hold claims or done
// markers Redis does not, as this process or another recorded
// (markStandIn). It reads MongoDB at most once per standInRead, one caller
// at a time; the others go on with the last reading, as does a read that
// failed. Before the first reading it answers yes: a process that starts
// just after an outage must not miss what the stand-in holds.
func (g *guards) standInUsed(ctx context.Context) bool {
	now := time.Now()
	if time.Unix(0, g.markedUntil.Load()).After(now) {
		return true
	}
	g.used.Lock()
	if g.used.reading || now.Sub(g.used.readAt) < standInRead {
		used := g.used.readAt.IsZero() || g.used.until.After(now)
		g.used.Unlock()
		return used
	}
	g.used.reading = true
	g.used.Unlock()
	until, err := g.mongo.StandInUsedUntil(ctx)
	g.used.Lock()
	defer g.used.Unlock()
	g.used.reading = false
	if err != nil {
		return g.used.readAt.IsZero() || g.used.until.After(now)
	}
	g.used.readAt, g.used.until = now, until
	return until.After(now)
}

// Claim takes the claim in Redis, or in the MongoDB stand-in while Redis
// is down. While the stand-in is in use (standInUsed), a claim Redis gave
// is checked against it: a done marker written there while Redis was down
// answers InboxDone, and a live claim another delivery took there answers
// InboxInProgress, the Redis claim given back. (A claim taken in Redis
// before it failed is not seen by a delivery that claims in the stand-in
// after: that is the duplicate the README names.)
func (g *guards) Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	ok, st, wid, err := g.redis.Claim(ctx, id, token, seq, ttl)
	if g.fallback(err) {
		if err := g.markStandIn(ctx); err != nil {
			return false, outbox.InboxNone, "", fmt.Errorf("claim inbox in mongodb: %w", err)
		}
		ok, st, wid, err = g.mongo.ClaimInbox(ctx, id, token, seq, ttl)
		if ok {
			g.standIn.Store(id, token)
		}
		return ok, st, wid, err
	}
	if ok && g.standInUsed(ctx) {
		held, hwid, holder, herr := g.mongo.InboxHolder(ctx, id)
		if herr == nil && (held == outbox.InboxDone || held == outbox.InboxInProgress && holder != token) {
			if rerr := g.redis.Release(ctx, id, token); rerr != nil {
				g.logger.Warn("could not give back a claim the inbox stand-in holds otherwise; it expires", "message_id", id, "error", rerr)
			}
			return false, held, hwid, nil
		}
	}
	return ok, st, wid, nil
}

// MarkTaken writes Redis's taken marker. For a claim taken in the MongoDB
// stand-in a failure does not matter: the claim records its dispatch and
// answers for it (see Taken). For a claim taken in Redis, which then
// failed, the error stands, whatever other deliveries found meanwhile: the
// processor makes no call without a mark, and the copy, requeued, is
// claimed in the stand-in. Which claim is the delivery's own is told by its
// token: the stand-in may still hold an older claim on the same message,
// kept after a record that failed.
func (g *guards) MarkTaken(ctx context.Context, id, token string, seq int, ttl time.Duration) error {
	err := g.redis.MarkTaken(ctx, id, seq, ttl)
	if !g.fallback(err) {
		return nil
	}
	if held, ok := g.standIn.Load(id); ok && held == token {
		return nil
	}
	return err
}

func (g *guards) Complete(ctx context.Context, id, webhookMessageID string, ttl time.Duration) error {
	g.standIn.Delete(id)
	if g.fallback(g.redis.Complete(ctx, id, webhookMessageID, ttl)) {
		if err := g.markStandIn(ctx); err != nil {
			return fmt.Errorf("complete inbox in mongodb: %w", err)
		}
		return g.mongo.CompleteInbox(ctx, id, webhookMessageID, ttl)
	}
	return nil
}

func (g *guards) Release(ctx context.Context, id, token string) error {
	inStandIn := g.standIn.CompareAndDelete(id, token)
	if inStandIn {
		if err := g.mongo.ReleaseInbox(ctx, id, token); err != nil {
			return err
		}
	}
	if g.fallback(g.redis.Release(ctx, id, token)) && !inStandIn {
		return g.mongo.ReleaseInbox(ctx, id, token)
	}
	return nil
}

// Taken asks Redis, and the MongoDB stand-in, which knows only the claims
// taken while Redis was down: a dispatch taken there has no mark in Redis
// (MarkTaken writes none while Redis is down), even once Redis is back.
// With Redis down the stand-in's "no" is no answer, so that the sweep counts
// the dispatch rather than guess it was never taken.
func (g *guards) Taken(ctx context.Context, id string, seq int) (bool, error) {
	taken, err := g.redis.Taken(ctx, id, seq)
	if !g.fallback(err) {
		if taken {
			return true, nil
		}
		return g.mongo.TakenInbox(ctx, id, seq)
	}
	if taken, merr := g.mongo.TakenInbox(ctx, id, seq); merr == nil && taken {
		return true, nil
	}
	return false, err
}

func (g *guards) Acquire(ctx context.Context, name string, ttl time.Duration) (func(context.Context), bool, error) {
	release, ok, err := g.redis.Acquire(ctx, name, ttl)
	if g.fallback(err) {
		return g.mongo.AcquireLease(ctx, name, ttl)
	}
	return release, ok, nil
}
