package mongostore

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// codeDuplicateKey is the server's duplicate key error.
const codeDuplicateKey = 11000

// CreateMessages stores each message and its first outbox entry as
// CreateMessage does (entries first, then messages), with one insertMany
// per collection for the whole batch: on the embedded MongoDB one command is
// one SQLite transaction, so a batch costs about what a single message did.
// Entries stored as published (the API's fast path) go to the in-flight
// collection. errs[i] is item i's result; nil means all succeeded.
func (s *Store) CreateMessages(ctx context.Context, items []outbox.NewMessage) []error {
	errs := make([]error, len(items))
	var pending, inflight []any
	var pendingAt, inflightAt []int
	for i, it := range items {
		if it.Entry.PublishedAt != nil {
			inflight, inflightAt = append(inflight, it.Entry), append(inflightAt, i)
		} else {
			pending, pendingAt = append(pending, it.Entry), append(pendingAt, i)
		}
	}
	for _, g := range []struct {
		c    *mongo.Collection
		docs []any
		at   []int
	}{{s.outbox, pending, pendingAt}, {s.inflight, inflight, inflightAt}} {
		for j, err := range insertEach(ctx, g.c, g.docs) {
			i := g.at[j]
			if err != nil && isDuplicateKey(err) {
				// The entry of a first request that died before its
				// message was stored, repeated with its Idempotency-Key:
				// this one replaces it, so that the message is published
				// now and not after a stale sweep, and so that the sweep,
				// finding no message behind the old one, does not drop
				// the new one (see DropOutbox).
				err = replaceEntry(ctx, g.c, items[i].Entry)
			}
			if err != nil {
				errs[i] = fmt.Errorf("insert outbox entry %s: %w", items[i].Entry.Key, err)
			}
		}
	}
	var msgs []any
	var at []int
	for i, it := range items {
		if errs[i] == nil {
			msgs = append(msgs, it.Message)
			at = append(at, i)
		}
	}
	for j, err := range insertEach(ctx, s.messages, msgs) {
		i := at[j]
		switch {
		case err == nil:
		case isDuplicateKey(err):
			errs[i] = message.Errorf(message.ECONFLICT, "message %s already exists", items[i].Message.ID)
		default:
			errs[i] = fmt.Errorf("create message: %w", err)
		}
	}
	return errs
}

// MarkUnpublished hands fast-path entries the broker did not confirm to the
// relay: it stores them unpublished in the outbox, then removes them from
// the in-flight entries. The relay publishes them once they fall due.
func (s *Store) MarkUnpublished(ctx context.Context, entries []message.OutboxEntry) error {
	docs := make([]any, len(entries))
	deletes := make([]mongo.WriteModel, len(entries))
	for i, e := range entries {
		e.PublishedAt = nil
		docs[i] = e
		deletes[i] = mongo.NewDeleteOneModel().SetFilter(byID(e.Key))
	}
	for _, err := range insertEach(ctx, s.outbox, docs) {
		if err != nil && !isDuplicateKey(err) {
			return fmt.Errorf("mark outbox unpublished: %w", err)
		}
	}
	if err := bulkWrite(ctx, s.inflight, deletes); err != nil {
		return fmt.Errorf("mark outbox unpublished: %w", err)
	}
	return nil
}

// insertEach inserts docs with one unordered insertMany and returns each
// document's error (nil for inserted ones).
func insertEach(ctx context.Context, c *mongo.Collection, docs []any) []error {
	errs := make([]error, len(docs))
	if len(docs) == 0 {
		return errs
	}
	if _, err := c.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false)); err != nil {
		spread(err, errs)
	}
	return errs
}

// spread sets errs from the error of an insertMany or bulkWrite: each write
// the server named gets its own error, a write concern error goes to every
// other write (each was applied, but not confirmed as durable), and an
// error about the whole command goes to every write. The whole exception
// never goes to one write: it reads as a duplicate key when any write in
// the batch was one.
func spread(err error, errs []error) {
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || (bwe.WriteConcernError == nil && len(bwe.WriteErrors) == 0) {
		for i := range errs {
			errs[i] = err
		}
		return
	}
	if bwe.WriteConcernError != nil {
		for i := range errs {
			errs[i] = bwe.WriteConcernError
		}
	}
	for _, we := range bwe.WriteErrors {
		if we.Index >= 0 && we.Index < len(errs) {
			errs[we.Index] = we.WriteError
		}
	}
}

func isDuplicateKey(err error) bool {
	var we mongo.WriteError
	if errors.As(err, &we) {
		return we.Code == codeDuplicateKey
	}
	return mongo.IsDuplicateKeyError(err)
}
