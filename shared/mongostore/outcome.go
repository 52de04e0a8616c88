package mongostore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// allStatuses lists every status, for deriving allowed predecessors.
var allStatuses = []message.Status{
	message.StatusUnsent, message.StatusProcessing, message.StatusSent, message.StatusFailed,
}

// outcomeFrom returns the statuses a message may be in for outcome o to
// apply: o's status itself (an outcome recorded again after a crash) and
// every status message.CanTransition allows to move to it, except that only
// a replay may move a FAILED message. It keeps a late outcome at the current
// Seq from undoing a final status, e.g. a stale sweep's UNSENT landing on a
// message just recorded SENT (SENT does not advance Seq, so the Seq
// condition alone would not stop it), or a processor's retry reviving a
// message the sweep dead-lettered meanwhile.
func outcomeFrom(o message.Outcome) []message.Status {
	from := []message.Status{o.Status}
	for _, s := range allStatuses {
		if s == message.StatusFailed && o.Status == message.StatusUnsent && !o.Replay {
			continue
		}
		if message.CanTransition(s, o.Status) {
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
	if s.ferret {
		return s.RecordOutcomes(ctx, []message.Outcome{o})[0]
	}
	set, unset, err := outcomeUpdate(o)
	if err != nil {
		return err
	}
	filter := bson.D{
		{Key: "_id", Value: o.MessageID},
		{Key: "seq", Value: o.Seq},
		{Key: "status", Value: bson.D{{Key: "$in", Value: outcomeFrom(o)}}},
	}
	switch merged, err := s.mergeRepeat(ctx, o, filter, set, unset); {
	case err != nil:
		return err
	case merged:
		return s.closeDispatch(ctx, o)
	}
	update := bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: unset}}
	if o.Delivery != nil {
		// A real MongoDB appends and trims in one atomic step. FerretDB v1
		// accepts $slice but ignores it (measured: the array grows), so
		// ferretUpdate builds the trimmed log itself there.
		update = append(update, bson.E{Key: "$push", Value: bson.D{{Key: "deliveries", Value: bson.D{
			{Key: "$each", Value: bson.A{*o.Delivery}},
			{Key: "$slice", Value: -message.MaxDeliveries},
		}}}})
	}
	res, err := s.messages.UpdateOne(ctx, filter, update)
	if err != nil {
		return fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
	}
	if res.MatchedCount == 0 {
		return s.whyNotApplied(ctx, o.MessageID)
	}
	return s.closeDispatch(ctx, o)
}

// mergeRepeat applies o on a real MongoDB with its delivery replacing the
// log's last entry, if o.MergeRepeat is set and that entry, as o.Read holds
// it, is still there and repeated by o's (see message.MergeRepeat). It
// reports whether it did. When it did not, and failed not, the caller
// appends as usual: the log has changed since it was read, or the message
// moved on, which the usual write finds out.
func (s *Store) mergeRepeat(ctx context.Context, o message.Outcome, filter, set, unset bson.D) (bool, error) {
	if !o.MergeRepeat || o.Delivery == nil || o.Read == nil {
		return false, nil
	}
	d, repeats := message.MergeRepeat(o.Read.Deliveries, *o.Delivery)
	if !repeats {
		return false, nil
	}
	n := len(o.Read.Deliveries)
	last := fmt.Sprintf("deliveries.%d", n-1)
	prev := o.Read.Deliveries[n-1]
	filter = append(slices.Clip(filter),
		bson.E{Key: last + ".at", Value: prev.At},
		bson.E{Key: last + ".outcome", Value: prev.Outcome},
		bson.E{Key: fmt.Sprintf("deliveries.%d", n), Value: bson.D{{Key: "$exists", Value: false}}})
	update := bson.D{{Key: "$set", Value: append(slices.Clip(set), bson.E{Key: last, Value: d})}, {Key: "$unset", Value: unset}}
	res, err := s.messages.UpdateOne(ctx, filter, update)
	if err != nil {
		return false, fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
	}
	return res.MatchedCount == 1, nil
}

// RecordOutcomes applies each outcome as RecordOutcome does; errs[i] is
// outcome i's result. On a real MongoDB, whose conditional updates are
// atomic per document and cheap, it applies them concurrently, one command
// each. On FerretDB, where each statement costs a SQLite transaction but
// each command also costs a round trip and its own overhead, the batch goes
// out as bulkWrites of the messages' updates (chunks of maxBulkUpdates),
// one insertMany of the next outbox entries and bulkWrites of the finished
// entries' deletes.
func (s *Store) RecordOutcomes(ctx context.Context, outcomes []message.Outcome) []error {
	errs := make([]error, len(outcomes))
	if !s.ferret {
		var wg sync.WaitGroup
		for i, o := range outcomes {
			wg.Go(func() { errs[i] = s.RecordOutcome(ctx, o) })
		}
		wg.Wait()
		return errs
	}
	// Two outcomes of one message in a batch (a consumer deferring a copy
	// while the claim holder records its answer) must not be checked
	// against the same state and written in either order: the later ones
	// wait for a second round, which reads the message again.
	seen := make(map[string]bool, len(outcomes))
	var first, again []int
	for i, o := range outcomes {
		if seen[o.MessageID] {
			again = append(again, i)
			continue
		}
		seen[o.MessageID] = true
		first = append(first, i)
	}
	s.recordRound(ctx, outcomes, first, errs)
	if len(again) > 0 {
		rest := make([]message.Outcome, len(again))
		for j, i := range again {
			rest[j] = outcomes[i]
			rest[j].Read = nil
		}
		for j, err := range s.RecordOutcomes(ctx, rest) {
			errs[again[j]] = err
		}
	}
	return errs
}

// recordRound applies the outcomes at idx, of distinct messages, on
// FerretDB, setting errs for each.
func (s *Store) recordRound(ctx context.Context, outcomes []message.Outcome, idx []int, errs []error) {
	var applied []int
	var models []mongo.WriteModel
	for _, i := range idx {
		model, err := s.ferretUpdate(ctx, outcomes[i])
		if err != nil {
			errs[i] = err
			continue
		}
		applied = append(applied, i)
		models = append(models, model)
	}
	var closing []int
	for j, err := range bulkWriteEach(ctx, s.messages, models) {
		i := applied[j]
		if err != nil {
			errs[i] = fmt.Errorf("record outcome of %s: %w", outcomes[i].MessageID, err)
			continue
		}
		closing = append(closing, i)
	}

	// Close the dispatches: the failed index, the next outbox entries, the
	// removal of the finished ones (see closeDispatch). A failure leaves
	// that message's dispatch open for the stale sweep to finish, and is
	// reported for that message alone.
	var next []any
	var nextAt, closable []int
	for _, i := range closing {
		o := outcomes[i]
		if o.Status == message.StatusFailed {
			if err := s.IndexFailed(ctx, o.FailedRecord()); err != nil {
				errs[i] = fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
				continue
			}
		}
		if o.Status == message.StatusUnsent {
			next = append(next, message.NewOutboxEntry(o.MessageID, o.Seq+1, *o.NextAttemptAt, o.At))
			nextAt = append(nextAt, i)
		}
		closable = append(closable, i)
	}
	for j, err := range insertEach(ctx, s.outbox, next) {
		if err != nil && !isDuplicateKey(err) {
			i := nextAt[j]
			errs[i] = fmt.Errorf("record outcome of %s: insert next outbox entry: %w", outcomes[i].MessageID, err)
		}
	}
	// An entry is removed only once the next one exists: a message put
	// back in the outbox whose old entry went and new one did not would
	// have no entry at all, and nothing would ever publish it again. With
	// the old entry kept, the stale sweep finds it and makes the new one
	// (see outbox.Relay.Sweep).
	var deletes []mongo.WriteModel
	for _, i := range closable {
		if errs[i] == nil {
			deletes = append(deletes, mongo.NewDeleteOneModel().SetFilter(byID(message.OutboxKey(outcomes[i].MessageID, outcomes[i].Seq))))
		}
	}
	s.deleteEntries(ctx, deletes)
}

// deleteEntries removes finished outbox entries, in flight or pending. Most
// are the fast path's, in flight, so the deletes go there first, in chunks;
// only a chunk that did not delete all its entries there goes to the outbox
// collection too: on FerretDB a delete that matches nothing still costs a
// lookup (about 6% of its CPU under make bench). An entry left behind (a
// delete that failed, or the pending copy MarkUnpublished makes of an entry
// whose outcome came while it moved it) belongs to a message that has moved
// on: the relay publishes it again, the processor acknowledges that copy
// without a delivery, and the stale sweep removes the entry. The outcome
// itself is recorded, so it is not reported.
func (s *Store) deleteEntries(ctx context.Context, deletes []mongo.WriteModel) {
	opts := options.BulkWrite().SetOrdered(false)
	for len(deletes) > 0 {
		chunk := deletes[:min(len(deletes), maxBulkUpdates)]
		deletes = deletes[len(chunk):]
		res, err := s.inflight.BulkWrite(ctx, chunk, opts)
		if err == nil && res.DeletedCount == int64(len(chunk)) {
			continue
		}
		_, _ = s.outbox.BulkWrite(ctx, chunk, opts)
	}
}

// bulkWriteEach runs models as bulkWrite does and returns each model's
// error: the write error the server reported for it, or the error of its
// chunk when the whole chunk failed.
func bulkWriteEach(ctx context.Context, c *mongo.Collection, models []mongo.WriteModel) []error {
	errs := make([]error, len(models))
	for start := 0; start < len(models); start += maxBulkUpdates {
		end := min(start+maxBulkUpdates, len(models))
		if _, err := c.BulkWrite(ctx, models[start:end], options.BulkWrite().SetOrdered(false)); err != nil {
			spread(err, errs[start:end])
		}
	}
	return errs
}

// outcomeUpdate checks o and returns the fields it sets and unsets.
func outcomeUpdate(o message.Outcome) (set, unset bson.D, err error) {
	switch o.Status {
	case message.StatusSent, message.StatusFailed:
	case message.StatusUnsent:
		if o.NextAttemptAt == nil {
			return nil, nil, fmt.Errorf("record outcome of %s: UNSENT outcome without NextAttemptAt", o.MessageID)
		}
	default:
		return nil, nil, fmt.Errorf("record outcome of %s: status %q is not an outcome", o.MessageID, o.Status)
	}
	set = bson.D{
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
	unset = bson.D{}
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
	return set, unset, nil
}

// closeDispatch finishes an applied outcome: the failed index, the next
// outbox entry, and the removal of this dispatch's entry.
func (s *Store) closeDispatch(ctx context.Context, o message.Outcome) error {
	if o.Status == message.StatusFailed {
		if err := s.IndexFailed(ctx, o.FailedRecord()); err != nil {
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

// ferretUpdate is RecordOutcome's message update on FerretDB: the
// conditions are checked on the message as o.Read holds it (read by the
// holder of the message's inbox claim, see message.Outcome) or as read now
// by _id, and the write is by _id alone (see Store.ferret). The delivery log is appended and trimmed here, since
// FerretDB ignores $slice.
func (s *Store) ferretUpdate(ctx context.Context, o message.Outcome) (mongo.WriteModel, error) {
	set, unset, err := outcomeUpdate(o)
	if err != nil {
		return nil, err
	}
	cur := o.Read
	if cur == nil || cur.ID != o.MessageID {
		var m message.Message
		err := s.messages.FindOne(ctx, byID(o.MessageID)).Decode(&m)
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, message.ErrNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("record outcome of %s: %w", o.MessageID, err)
		}
		cur = &m
	}
	if cur.Seq != o.Seq || !slices.Contains(outcomeFrom(o), cur.Status) {
		return nil, message.ErrStaleOutcome
	}
	if o.Delivery != nil {
		set = append(set, bson.E{Key: "deliveries", Value: message.AppendDelivery(cur.Deliveries, *o.Delivery, o.MergeRepeat)})
	}
	update := bson.D{{Key: "$set", Value: set}}
	if len(unset) > 0 {
		update = append(update, bson.E{Key: "$unset", Value: unset})
	}
	return mongo.NewUpdateOneModel().SetFilter(byID(o.MessageID)).SetUpdate(update), nil
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
