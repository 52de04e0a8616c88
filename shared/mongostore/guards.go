package mongostore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// The guards collection holds the inbox claims and the relay lease while
// Redis is unreachable. Redis is the fast guard; these documents are the
// slow, durable stand-in, written only during an outage.
//
// Each guard is a document under a unique _id, taken by an insert: the one
// write the embedded MongoDB (FerretDB) makes atomic. Taking over an expired
// guard is a delete followed by an insert, by the one caller whose insert of
// that expiry's takeover document landed (see winTakeover): two processes
// racing for the same expired guard end with one winner, and neither deletes
// the guard the other has just inserted.
const guardsColl = "guards"

type guardDoc struct {
	ID        string    `bson:"_id"`
	Token     string    `bson:"token"`
	Done      bool      `bson:"done"`
	WebhookID string    `bson:"webhookMessageId,omitempty"`
	ExpiresAt time.Time `bson:"expiresAt"`
	// Seq is the dispatch an inbox claim was taken for.
	Seq int `bson:"seq,omitempty"`
	// PurgeAt is when a real MongoDB's TTL index deletes the guard, long
	// after it expires: an expired claim is still a taken marker (see
	// TakenInbox) until the stale sweep has dealt with its dispatch.
	PurgeAt time.Time `bson:"purgeAt"`
}

// guardKeep is how long a guard outlives its expiry: longer than a taken
// marker is read (twice the longest STALE_DURATION, 12h, plus a claim).
const guardKeep = 48 * time.Hour

func newGuard(id, token string, expiresAt time.Time) guardDoc {
	return guardDoc{ID: id, Token: token, ExpiresAt: expiresAt, PurgeAt: expiresAt.Add(guardKeep)}
}

func (s *Store) guards() *mongo.Collection { return s.messages.Database().Collection(guardsColl) }

// take inserts the guard doc, taking over an expired one once. It returns
// the existing guard when it is live.
func (s *Store) take(ctx context.Context, doc guardDoc, now time.Time) (bool, guardDoc, error) {
	for range 2 {
		_, err := s.guards().InsertOne(ctx, doc)
		if err == nil {
			return true, doc, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return false, guardDoc{}, err
		}
		var cur guardDoc
		if err := s.guards().FindOne(ctx, bson.D{{Key: "_id", Value: doc.ID}}).Decode(&cur); err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				continue // released in between: try again
			}
			return false, guardDoc{}, err
		}
		if cur.ExpiresAt.After(now) {
			return false, cur, nil
		}
		won, err := s.winTakeover(ctx, doc.ID, cur.Token)
		if err != nil {
			return false, guardDoc{}, err
		}
		if !won {
			return false, cur, nil // another caller is taking it over
		}
		if err := s.deleteGuard(ctx, doc.ID, bson.D{{Key: "token", Value: cur.Token}}, func(g guardDoc) bool { return g.Token == cur.Token }); err != nil {
			return false, guardDoc{}, err
		}
	}
	return false, guardDoc{}, fmt.Errorf("guard %s changed hands while taking it", doc.ID)
}

// winTakeover says whether this caller takes over generation gen of guard
// id (an expired guard's token, a stale marker's time): of all callers that
// found it expired, the one whose insert of the generation's takeover
// document lands. A read, a check and a write would let several through:
// on FerretDB, whose conditional writes are not atomic, and for a marker's
// replace, on any MongoDB. A takeover document whose winner did not finish
// within takeoverStale (it died) gives way to the next one, numbered k+1.
// Takeover documents stand until purged, guardKeep later (never on
// FerretDB: a few bytes each, and takeovers happen only during a Redis
// outage or after a request died midway).
func (s *Store) winTakeover(ctx context.Context, id, gen string) (bool, error) {
	for k := 0; ; k++ {
		now := time.Now().UTC().Truncate(time.Millisecond)
		doc := takeoverMarker{ID: fmt.Sprintf("%s|takeover:%s:%d", id, gen, k), At: now, PurgeAt: now.Add(guardKeep)}
		_, err := s.guards().InsertOne(ctx, doc)
		if err == nil {
			return true, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return false, fmt.Errorf("take over %s: %w", id, err)
		}
		var cur takeoverMarker
		if err := s.guards().FindOne(ctx, byID(doc.ID)).Decode(&cur); err != nil {
			return false, fmt.Errorf("take over %s: %w", id, err)
		}
		if now.Sub(cur.At) < takeoverStale {
			return false, nil
		}
	}
}

// ClaimInbox is the durable stand-in for the Redis inbox claim. The claim's
// document, kept until the next claim or release replaces it, is also its
// taken marker (see TakenInbox).
func (s *Store) ClaimInbox(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	now := time.Now()
	doc := newGuard("inbox:"+id, token, now.Add(ttl))
	doc.Seq = seq
	ok, cur, err := s.take(ctx, doc, now)
	switch {
	case err != nil:
		return false, outbox.InboxNone, "", fmt.Errorf("claim inbox in mongodb: %w", err)
	case ok:
		return true, outbox.InboxNone, "", nil
	case cur.Done:
		return false, outbox.InboxDone, cur.WebhookID, nil
	default:
		return false, outbox.InboxInProgress, "", nil
	}
}

// CompleteInbox marks id done for ttl.
func (s *Store) CompleteInbox(ctx context.Context, id, webhookMessageID string, ttl time.Duration) error {
	doc := newGuard("inbox:"+id, newToken(), time.Now().Add(ttl))
	doc.Done, doc.WebhookID = true, webhookMessageID
	_, err := s.guards().ReplaceOne(ctx, bson.D{{Key: "_id", Value: doc.ID}}, doc, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("complete inbox in mongodb: %w", err)
	}
	return nil
}

// ReleaseInbox drops the claim on id taken with token, never a done marker
// (CompleteInbox gives it a token of its own) or another holder's claim.
func (s *Store) ReleaseInbox(ctx context.Context, id, token string) error {
	match := bson.D{{Key: "token", Value: token}}
	if err := s.deleteGuard(ctx, "inbox:"+id, match, func(g guardDoc) bool { return g.Token == token }); err != nil {
		return fmt.Errorf("release inbox in mongodb: %w", err)
	}
	return nil
}

// inboxGuard reads the durable inbox document of id; found is false when
// there is none.
func (s *Store) inboxGuard(ctx context.Context, id string) (cur guardDoc, found bool, err error) {
	err = s.guards().FindOne(ctx, byID("inbox:"+id)).Decode(&cur)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return guardDoc{}, false, nil
	}
	return cur, err == nil, err
}

// InboxHolder returns what the durable inbox knows about id: a done marker
// (with the webhook's message ID), a live claim (with its token), or
// nothing (an expired claim counts as none).
func (s *Store) InboxHolder(ctx context.Context, id string) (outbox.InboxState, string, string, error) {
	cur, found, err := s.inboxGuard(ctx, id)
	switch {
	case err != nil:
		return outbox.InboxNone, "", "", fmt.Errorf("read inbox in mongodb: %w", err)
	case !found:
		return outbox.InboxNone, "", "", nil
	case cur.Done:
		return outbox.InboxDone, cur.WebhookID, "", nil
	case cur.ExpiresAt.After(time.Now()):
		return outbox.InboxInProgress, "", cur.Token, nil
	default:
		return outbox.InboxNone, "", "", nil
	}
}

// standInUsedID is the guard that says until when the durable inbox may
// hold claims or done markers that Redis does not (see SetStandInUsed).
const standInUsedID = "standin-used"

// SetStandInUsed records that the durable inbox holds, or is about to hold,
// claims and done markers that Redis does not, and may until until: every
// process that takes a claim in Redis until then also reads the durable
// inbox (StandInUsedUntil).
//
// Two upserts at once can both insert, and one then fails with a duplicate
// key (on MongoDB as on FerretDB): that one is tried again, and replaces.
func (s *Store) SetStandInUsed(ctx context.Context, until time.Time) error {
	doc := bson.D{{Key: "_id", Value: standInUsedID}, {Key: "until", Value: until}, {Key: "purgeAt", Value: until.Add(guardKeep)}}
	var err error
	for range 3 {
		if _, err = s.guards().ReplaceOne(ctx, byID(standInUsedID), doc, options.Replace().SetUpsert(true)); !mongo.IsDuplicateKeyError(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("record the inbox stand-in in use: %w", err)
	}
	return nil
}

// StandInUsedUntil returns the time SetStandInUsed last recorded, zero if
// none.
func (s *Store) StandInUsedUntil(ctx context.Context) (time.Time, error) {
	var doc struct {
		Until time.Time `bson:"until"`
	}
	err := s.guards().FindOne(ctx, byID(standInUsedID)).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read the inbox stand-in's use: %w", err)
	}
	return doc.Until, nil
}

// TakenInbox reports whether the durable inbox holds a claim, live or
// expired, of dispatch seq of id or a later one.
func (s *Store) TakenInbox(ctx context.Context, id string, seq int) (bool, error) {
	cur, found, err := s.inboxGuard(ctx, id)
	if err != nil {
		return false, fmt.Errorf("read taken marker in mongodb: %w", err)
	}
	return found && !cur.Done && cur.Seq >= seq, nil
}

// AcquireLease is the durable stand-in for the Redis relay lease.
func (s *Store) AcquireLease(ctx context.Context, name string, ttl time.Duration) (func(context.Context), bool, error) {
	now := time.Now()
	doc := newGuard("lease:"+name, newToken(), now.Add(ttl))
	ok, _, err := s.take(ctx, doc, now)
	if err != nil || !ok {
		return nil, false, err
	}
	return func(ctx context.Context) {
		_ = s.deleteGuard(ctx, doc.ID, bson.D{{Key: "token", Value: doc.Token}}, func(g guardDoc) bool { return g.Token == doc.Token })
	}, true, nil
}

// deleteGuard deletes guard id if it matches: with the condition in the
// filter on MongoDB, or checked on the document read by _id on FerretDB,
// which would scan the collection for any filter but _id alone.
func (s *Store) deleteGuard(ctx context.Context, id string, match bson.D, ok func(guardDoc) bool) error {
	if !s.ferret {
		_, err := s.guards().DeleteOne(ctx, append(byID(id), match...))
		return err
	}
	var cur guardDoc
	err := s.guards().FindOne(ctx, byID(id)).Decode(&cur)
	if errors.Is(err, mongo.ErrNoDocuments) || (err == nil && !ok(cur)) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = s.guards().DeleteOne(ctx, byID(id))
	return err
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
