package mongostore

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// allStatuses lists every status, for deriving allowed predecessors.
var allStatuses = []message.Status{
	message.StatusUnsent, message.StatusProcessing, message.StatusSent, message.StatusFailed,
}

// outcomeFrom returns the statuses a message may be in for an outcome with
// status to to apply: to itself (an outcome recorded again after a crash)
// and every status message.CanTransition allows to move to to. It keeps a
// late outcome at the current Seq from undoing a final status, e.g. a stale
// sweep's UNSENT landing on a message just recorded SENT (SENT does not
// advance Seq, so the Seq condition alone would not stop it).
func outcomeFrom(to message.Status) []message.Status {
	from := []message.Status{to}
	for _, s := range allStatuses {
		if message.CanTransition(s, to) {
			from = append(from, s)
		}
	}
	return from
}

// RecordOutcome applies o to its message if the message is still at o.Seq
// and may move to o.Status; then, for UNSENT, inserts the outbox entry of
// dispatch o.Seq+1; then deletes the entry of dispatch o.Seq. The message is
// written first so that a crash in between leaves an outbox entry that the
// stale sweep finds and finishes. It returns message.ErrNotFound for an
// unknown message and message.ErrStaleOutcome, changing nothing, when the
// message has moved on.
//
// On FerretDB the conditional update is a read then a write, not atomic;
// the processor's inbox claim keeps two outcomes of one dispatch from racing.
func (s *Store) RecordOutcome(ctx context.Context, o message.Outcome) error {
	switch o.Status {
	case message.StatusSent, message.StatusFailed:
	case message.StatusUnsent:
		if o.NextAttemptAt == nil {
			return fmt.Errorf("record outcome of %s: UNSENT outcome without NextAttemptAt", o.MessageID)
		}
	default:
		return fmt.Errorf("record outcome of %s: status %q is not an outcome", o.MessageID, o.Status)
	}

	set := bson.D{
		{Key: "status", Value: o.Status},
		{Key: "attempts", Value: o.Attempts},
		{Key: "updatedAt", Value: o.At},
	}
	if o.LastError != "" {
		set = append(set, bson.E{Key: "lastError", Value: o.LastError})
	}
	if o.FailureReason != "" {
		set = append(set, bson.E{Key: "failureReason", Value: o.FailureReason})
	}
	if o.WebhookMessageID != "" {
		set = append(set, bson.E{Key: "webhookMessageId", Value: o.WebhookMessageID})
	}
	if o.Status == message.StatusSent {
		set = append(set, bson.E{Key: "sentAt", Value: o.At})
	}
	unset := bson.D{}
	if o.Status == message.StatusUnsent {
		set = append(set,
			bson.E{Key: "nextAttemptAt", Value: *o.NextAttemptAt},
			bson.E{Key: "seq", Value: o.Seq + 1})
	} else {
		unset = append(unset, bson.E{Key: "nextAttemptAt", Value: ""})
	}
	if o.Status != message.StatusFailed {
		// A replayed message leaves its old failure behind.
		unset = append(unset, bson.E{Key: "failureReason", Value: ""})
	}
	update := bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: unset}}
	if o.Delivery != nil {
		// A real MongoDB appends and trims in one atomic step. FerretDB v1
		// accepts $slice but ignores it (measured: the array grows), so the
		// result is checked below and trimmed there when needed. An update
		// pipeline ($concatArrays + $slice) would do it in one step but
		// FerretDB rejects pipelines.
		update = append(update, bson.E{Key: "$push", Value: bson.D{{Key: "deliveries", Value: bson.D{
			{Key: "$each", Value: bson.A{*o.Delivery}},
			{Key: "$slice", Value: -message.MaxDeliveries},
		}}}})
	}
	filter := bson.D{
		{Key: "_id", Value: o.MessageID},
		{Key: "seq", Value: o.Seq},
		{Key: "status", Value: bson.D{{Key: "$in", Value: outcomeFrom(o.Status)}}},
	}

	// findAndModify returns the document after the update, to see the
	// delivery log's length. FerretDB does not implement findAndModify with
	// a projection, so the whole (small) document comes back.
	var after struct {
		Deliveries bson.RawValue `bson:"deliveries"`
	}
	err := s.messages.FindOneAndUpdate(ctx, filter, update,
		options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&after)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return s.whyNotApplied(ctx, o.MessageID)
	}
	if err != nil {
		return fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
	}
	if o.Delivery != nil {
		// A failed trim is harmless: the log is one entry too long until
		// the next outcome trims it. Failing here instead would make the
		// caller apply an outcome that is already applied.
		_ = s.trimDeliveries(ctx, o.MessageID, after.Deliveries)
	}

	if o.Status == message.StatusFailed {
		if err := s.addFailed(ctx, message.FailedRecord{MessageID: o.MessageID, FailedAt: o.At, Reason: o.FailureReason}); err != nil {
			return fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
		}
	}
	if o.Status == message.StatusUnsent {
		if err := s.EnsureOutbox(ctx, message.NewOutboxEntry(o.MessageID, o.Seq+1, *o.NextAttemptAt, o.At)); err != nil {
			return fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
		}
	}
	if err := s.DeleteOutbox(ctx, message.OutboxKey(o.MessageID, o.Seq)); err != nil {
		return fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
	}
	return nil
}

// whyNotApplied tells an unknown message from one that moved on.
func (s *Store) whyNotApplied(ctx context.Context, id string) error {
	err := s.messages.FindOne(ctx, bson.D{{Key: "_id", Value: id}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return message.ErrNotFound
	case err != nil:
		return fmt.Errorf("record outcome of %s: %w", id, err)
	}
	return message.ErrStaleOutcome
}

// trimDeliveries keeps the last MaxDeliveries entries of a delivery log that
// the server did not trim (FerretDB). The write is conditioned on the log
// being exactly the one read, so it never drops an entry appended meanwhile;
// if it loses that race the next outcome trims instead.
func (s *Store) trimDeliveries(ctx context.Context, id string, log bson.RawValue) error {
	arr, ok := log.ArrayOK()
	if !ok {
		return nil
	}
	vals, err := arr.Values()
	if err != nil || len(vals) <= message.MaxDeliveries {
		return err
	}
	keep := make(bson.A, 0, message.MaxDeliveries)
	for _, v := range vals[len(vals)-message.MaxDeliveries:] {
		keep = append(keep, v)
	}
	_, err = s.messages.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: id}, {Key: "deliveries", Value: log}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "deliveries", Value: keep}}}})
	return err
}
