package mongostore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// failedColl indexes the FAILED messages (message.FailedRecord). Counting
// or listing failures from the messages collection would scan all history
// on the embedded MongoDB, where no filter but _id equality uses an index.
const failedColl = "failed"

func (s *Store) failed() *mongo.Collection { return s.messages.Database().Collection(failedColl) }

// IndexFailed records a dead-lettered message in the failed index, or
// updates its entry there.
//
// The index is written after the message's FAILED status, and a replay
// writes the message's new status before it drops the entry: a replay
// between the two writes here finds no entry to drop, and this one would
// stay, counted as a failure, until a bulk replay noticed it. So the
// message is read after the write, and the entry dropped if the message is
// no longer FAILED; a replay that writes its status after that read drops
// the entry itself. A late call for an older failure of a message that was
// replayed and failed again (indexed meanwhile) finds the message FAILED at
// another time, and writes the message's own entry back.
func (s *Store) IndexFailed(ctx context.Context, r message.FailedRecord) error {
	_, err := s.failed().ReplaceOne(ctx, bson.D{{Key: "_id", Value: r.MessageID}}, r, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("index failed message %s: %w", r.MessageID, err)
	}
	var m struct {
		Status        message.Status `bson:"status"`
		UpdatedAt     time.Time      `bson:"updatedAt"`
		FailureReason string         `bson:"failureReason"`
	}
	projection := bson.D{{Key: "status", Value: 1}, {Key: "updatedAt", Value: 1}, {Key: "failureReason", Value: 1}}
	err = s.messages.FindOne(ctx, bson.D{{Key: "_id", Value: r.MessageID}}, options.FindOne().SetProjection(projection)).Decode(&m)
	if err == nil && m.Status == message.StatusFailed && !m.UpdatedAt.Equal(r.FailedAt.Truncate(time.Millisecond)) {
		own := message.FailedRecord{MessageID: r.MessageID, FailedAt: m.UpdatedAt, Reason: m.FailureReason}
		if _, err := s.failed().ReplaceOne(ctx, bson.D{{Key: "_id", Value: r.MessageID}}, own); err != nil {
			return fmt.Errorf("index failed message %s: %w", r.MessageID, err)
		}
		return nil
	}
	if errors.Is(err, mongo.ErrNoDocuments) || err == nil && m.Status != message.StatusFailed {
		if beforeUnindex != nil {
			beforeUnindex()
		}
		// Only the entry written here: the message may have failed again
		// since, and a later call indexed that failure.
		filter := bson.D{{Key: "_id", Value: r.MessageID}, {Key: "failedAt", Value: r.FailedAt}}
		if _, err := s.failed().DeleteOne(ctx, filter); err != nil {
			return fmt.Errorf("unindex failed message %s: %w", r.MessageID, err)
		}
	}
	// A read that failed leaves the entry, which is this call's job: the
	// check is for a race that needs a replay within these milliseconds.
	return nil
}

// beforeUnindex, if set (by tests), runs in IndexFailed between its read
// of the message and its removal of the entry it wrote.
var beforeUnindex func()

// RemoveFailed drops a replayed message from the failed index.
//
// The replay wrote the message's new status first, and its next dispatch
// may have failed for good since, its entry written by IndexFailed: the
// delete would take that entry away, and nothing would write it again (a
// FAILED message has no outbox entry left for the sweep to repair it from).
// So the message is read after the delete, and indexed again if it is
// FAILED; a failure recorded after that read indexes itself. (A replay
// between the read and the write leaves an entry for a message no longer
// FAILED, as in IndexFailed's own race, until a bulk replay drops it; the
// window is a few milliseconds.)
func (s *Store) RemoveFailed(ctx context.Context, id string) error {
	if _, err := s.failed().DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return fmt.Errorf("unindex failed message %s: %w", id, err)
	}
	m, err := s.GetMessage(ctx, id)
	if message.ErrorCode(err) == message.ENOTFOUND {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unindex failed message %s: read it again: %w", id, err)
	}
	if m.Status == message.StatusFailed {
		return s.IndexFailed(ctx, m.FailedRecord())
	}
	return nil
}

// ListFailed returns the failed records at or after since (all if nil),
// oldest first, at most limit.
func (s *Store) ListFailed(ctx context.Context, since *time.Time, limit int) ([]message.FailedRecord, error) {
	filter := bson.D{}
	if since != nil {
		filter = bson.D{{Key: "failedAt", Value: bson.D{{Key: "$gte", Value: *since}}}}
	}
	cur, err := s.failed().Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "failedAt", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list failed messages: %w", err)
	}
	var out []message.FailedRecord
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list failed messages: %w", err)
	}
	return out, nil
}

// CountFailed returns the number of FAILED messages, from the collection's
// metadata (every GET /status asks; counting the documents would read them
// all on a real MongoDB).
func (s *Store) CountFailed(ctx context.Context) (int64, error) {
	n, err := s.failed().EstimatedDocumentCount(ctx)
	if err != nil {
		return 0, fmt.Errorf("count failed messages: %w", err)
	}
	return n, nil
}

// OutboxStats returns the number of outbox entries waiting to be published
// and due now, and the due time of the oldest of them (zero if none).
func (s *Store) OutboxStats(ctx context.Context, now time.Time) (int64, time.Time, error) {
	filter := bson.D{{Key: "publishedAt", Value: nil}, {Key: "dueAt", Value: bson.D{{Key: "$lte", Value: now}}}}
	n, err := s.outbox.CountDocuments(ctx, filter)
	if err != nil || n == 0 {
		return n, time.Time{}, err
	}
	var oldest message.OutboxEntry
	err = s.outbox.FindOne(ctx, filter, options.FindOne().SetSort(bson.D{{Key: "dueAt", Value: 1}})).Decode(&oldest)
	if err != nil {
		return n, time.Time{}, fmt.Errorf("oldest outbox entry: %w", err)
	}
	return n, oldest.DueAt, nil
}
