package mongostore

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
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
// errs[i] is item i's result; nil means all succeeded.
func (s *Store) CreateMessages(ctx context.Context, items []outbox.NewMessage) []error {
	errs := make([]error, len(items))
	entries := make([]any, len(items))
	for i, it := range items {
		entries[i] = it.Entry
	}
	for i, err := range insertEach(ctx, s.outbox, entries) {
		if err != nil && !isDuplicateKey(err) {
			errs[i] = fmt.Errorf("insert outbox entry %s: %w", items[i].Entry.Key, err)
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

// MarkUnpublished clears publishedAt on the entries with these keys: the
// API's fast path records its entries as published when it inserts them and
// takes that back for the ones the broker did not confirm, which the relay
// then publishes when they fall due.
func (s *Store) MarkUnpublished(ctx context.Context, keys []string) error {
	models := make([]mongo.WriteModel, 0, len(keys))
	for _, k := range keys {
		models = append(models, mongo.NewUpdateOneModel().
			SetFilter(byID(k)).
			SetUpdate(bson.D{{Key: "$unset", Value: bson.D{{Key: "publishedAt", Value: ""}}}}))
	}
	if err := bulkWrite(ctx, s.outbox, models); err != nil {
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
	_, err := c.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err == nil {
		return errs
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil || len(bwe.WriteErrors) == 0 {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for _, we := range bwe.WriteErrors {
		if we.Index >= 0 && we.Index < len(errs) {
			errs[we.Index] = we.WriteError
		}
	}
	return errs
}

func isDuplicateKey(err error) bool {
	var we mongo.WriteError
	if errors.As(err, &we) {
		return we.Code == codeDuplicateKey
	}
	return mongo.IsDuplicateKeyError(err)
}
