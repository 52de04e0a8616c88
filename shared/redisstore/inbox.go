package redisstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// The processor's inbox is app's guards, over this store and MongoDB.
var _ outbox.Inbox = (*Store)(nil)

// Inbox values: an in-progress claim, or "d:" and the webhook's message ID.
const (
	claimValue = "p"
	donePrefix = "d:"
)

// claimScript takes the claim, or returns what holds the key instead, in one
// round trip: 1 if the claim was taken, else the existing value.
var claimScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
	return 1
end
return redis.call('GET', KEYS[1])
`)

// takeScript leaves the dispatch number ARGV[1] in the taken marker
// KEYS[1] for ARGV[2] ms, never lowering it: the stale sweep tells by it a
// dispatch whose webhook call may have started from one that never got
// that far.
var takeScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1') or -1
if tonumber(ARGV[1]) >= cur then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
`)

// releaseScript deletes the key only while it holds the caller's claim
// (ARGV[1]): never a done marker written by Complete, nor the claim of
// another holder who took over after the caller's expired.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Claim takes the in-progress claim on id for ttl as token (unique to the
// caller's attempt). When it does, claimed is true and state is InboxNone
// (nothing held the key). The inbox of message id is the key
// <prefix>inbox:<id>. Otherwise state says what holds it: InboxInProgress,
// or InboxDone with the webhook's message ID. seq is for the MongoDB
// stand-in's sake (see mongostore.Store.ClaimInbox); Redis keeps the
// dispatch number in the taken marker (MarkTaken).
func (s *Store) Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	// The claim holds the caller's token: the client retries a script
	// whose answer timed out, and a retry that finds its own claim must
	// not take it for somebody else's.
	mine := claimValue + ":" + token
	v, err := claimScript.Run(ctx, s.client, []string{s.key("inbox", id)}, mine, px(ttl)).Result()
	if err != nil {
		return false, outbox.InboxNone, "", fmt.Errorf("claim inbox %s: %w", id, err)
	}
	switch v := v.(type) {
	case int64:
		return true, outbox.InboxNone, "", nil
	case string:
		if v == mine {
			return true, outbox.InboxNone, "", nil
		}
		state, wid, err := parseInbox(v)
		if err != nil {
			return false, outbox.InboxNone, "", fmt.Errorf("claim inbox %s: %w", id, err)
		}
		return false, state, wid, nil
	default:
		// The key expired between SET and GET cannot happen inside a
		// script; anything else is a server we do not understand.
		return false, outbox.InboxNone, "", fmt.Errorf("claim inbox %s: unexpected reply %T", id, v)
	}
}

// MarkTaken marks dispatch seq of id taken for ttl: its webhook call is
// about to start. A later dispatch's mark is never lowered.
func (s *Store) MarkTaken(ctx context.Context, id string, seq int, ttl time.Duration) error {
	if err := takeScript.Run(ctx, s.client, []string{s.takenKey(id)}, seq, px(ttl)).Err(); err != nil {
		return fmt.Errorf("mark %s taken: %w", id, err)
	}
	return nil
}

// Complete marks id done for ttl, keeping the webhook's message ID. It
// overwrites whatever the key holds.
func (s *Store) Complete(ctx context.Context, id, webhookMessageID string, ttl time.Duration) error {
	if err := s.client.Set(ctx, s.key("inbox", id), donePrefix+webhookMessageID, time.Duration(px(ttl))*time.Millisecond).Err(); err != nil {
		return fmt.Errorf("complete inbox %s: %w", id, err)
	}
	return nil
}

// Release drops the claim on id taken with token; a done marker, or another
// holder's claim, stays.
func (s *Store) Release(ctx context.Context, id, token string) error {
	if err := releaseScript.Run(ctx, s.client, []string{s.key("inbox", id)}, claimValue+":"+token).Err(); err != nil {
		return fmt.Errorf("release inbox %s: %w", id, err)
	}
	return nil
}

// Peek returns what the inbox knows about id without changing it.
func (s *Store) Peek(ctx context.Context, id string) (outbox.InboxState, string, error) {
	v, err := s.client.Get(ctx, s.key("inbox", id)).Result()
	if err == redis.Nil {
		return outbox.InboxNone, "", nil
	}
	if err != nil {
		return outbox.InboxNone, "", fmt.Errorf("peek inbox %s: %w", id, err)
	}
	state, wid, err := parseInbox(v)
	if err != nil {
		return outbox.InboxNone, "", fmt.Errorf("peek inbox %s: %w", id, err)
	}
	return state, wid, nil
}

// takenKey is the taken marker's key of message id. Its hash tag is the
// whole inbox key, so that a Redis Cluster keeps the two in one slot.
func (s *Store) takenKey(id string) string {
	return s.prefix + "taken:{" + s.key("inbox", id) + "}"
}

// Taken reports whether a processor was about to call the webhook for
// dispatch seq of id (or a later one) within the taken marker's lifetime.
func (s *Store) Taken(ctx context.Context, id string, seq int) (bool, error) {
	v, err := s.client.Get(ctx, s.takenKey(id)).Int()
	if err == redis.Nil {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read taken marker of %s: %w", id, err)
	}
	return v >= seq, nil
}

func parseInbox(v string) (outbox.InboxState, string, error) {
	if wid, ok := strings.CutPrefix(v, donePrefix); ok {
		return outbox.InboxDone, wid, nil
	}
	if strings.HasPrefix(v, claimValue) {
		return outbox.InboxInProgress, "", nil
	}
	return outbox.InboxNone, "", fmt.Errorf("unexpected inbox value %q", v)
}
