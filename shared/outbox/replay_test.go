package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/mongostore"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// failedAt stores a message that failed at at, in the failed index.
func failedAt(t *testing.T, a *app.App, at time.Time) string {
	t.Helper()
	ctx := context.Background()
	m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: "failed"}, at)
	m.Status, m.Attempts, m.FailureReason, m.UpdatedAt = message.StatusFailed, 4, "retries exhausted after 4 attempts", at
	e := message.NewOutboxEntry(m.ID, 0, at, at)
	e.PublishedAt = &at
	if err := a.Store.CreateMessage(ctx, m, e); err != nil {
		t.Fatal(err)
	}
	if err := a.Store.IndexFailed(ctx, m.FailedRecord()); err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// TestReplaySelects: a bulk replay takes the listed FAILED messages (and
// skips the others and unknown ids), or those failed since a time, at most
// 1,000 ids per call; a replayed message is UNSENT with a fresh attempt
// budget and an outbox entry, and leaves the failed index.
func TestReplaySelects(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	svc := a.Service(nil)
	now := time.Now().UTC().Truncate(time.Millisecond)
	oldA, oldB := failedAt(t, a, now.Add(-2*time.Hour)), failedAt(t, a, now.Add(-2*time.Hour))
	recent := failedAt(t, a, now.Add(-time.Minute))
	unsent := accept(t, a, 1)[0]

	replayed := func(res message.ReplayResult, err error, want ...string) {
		t.Helper()
		if err != nil || res.Replayed != len(want) || res.Matched != len(want) || !slices.Equal(res.IDs, want) {
			t.Fatalf("replay: %+v %v, want %v replayed", res, err, want)
		}
		for _, id := range want {
			m, err := a.Store.GetMessage(ctx, id)
			if err != nil || m.Status != message.StatusUnsent || m.Attempts != 0 {
				t.Fatalf("replayed %s: %+v %v, want UNSENT with no attempts", id, m, err)
			}
			if has, err := a.Store.HasOutboxEntry(ctx, message.OutboxKey(id, m.Seq)); err != nil || !has {
				t.Fatalf("replayed %s has no outbox entry at seq %d: %v", id, m.Seq, err)
			}
		}
	}

	res, err := svc.Replay(ctx, message.ReplayRequest{IDs: []string{oldA, unsent, uuid.Must(uuid.NewV7()).String()}})
	replayed(res, err, oldA)
	since := now.Add(-time.Hour)
	res, err = svc.Replay(ctx, message.ReplayRequest{IDs: []string{oldB}, Since: &since})
	replayed(res, err)
	res, err = svc.Replay(ctx, message.ReplayRequest{Since: &since})
	replayed(res, err, recent)
	// A since within the millisecond of a failure takes it, by id as in
	// the listing: stored times keep milliseconds only.
	sameMilli := failedAt(t, a, now.Add(-30*time.Minute))
	within := now.Add(-30*time.Minute + 500*time.Microsecond)
	res, err = svc.Replay(ctx, message.ReplayRequest{IDs: []string{sameMilli}, Since: &within})
	replayed(res, err, sameMilli)
	if m, err := a.Store.GetMessage(ctx, oldB); err != nil || m.Status != message.StatusFailed {
		t.Fatalf("%s, failed before since: %+v %v, want it still FAILED", oldB, m, err)
	}
	if n, err := a.Store.CountFailed(ctx); err != nil || n != 1 {
		t.Fatalf("failed index holds %d (%v), want 1", n, err)
	}

	many := make([]string, 1001)
	for i := range many {
		many[i] = uuid.Must(uuid.NewV7()).String()
	}
	if _, err := svc.Replay(ctx, message.ReplayRequest{IDs: many}); message.ErrorCode(err) != message.EINVALID {
		t.Fatalf("1,001 ids: %v, want EINVALID", err)
	}
	if res, err := svc.Replay(ctx, message.ReplayRequest{IDs: many[:1000], DryRun: true}); err != nil || res.Matched != 0 {
		t.Fatalf("1,000 unknown ids: %+v %v, want none matched and no error", res, err)
	}
	res, err = svc.Replay(ctx, message.ReplayRequest{})
	replayed(res, err, oldB)
	if res.More {
		t.Fatalf("a replay that did all there was: %+v, want more false", res)
	}
}

// TestReplayStopsBeforeTheDeadline: a bulk replay whose request is about
// to run out of time stops and says there is more, rather than have the
// deadline cut it off with no answer; the repeat does the rest.
func TestReplayStopsBeforeTheDeadline(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(nil)
	ids := []string{failedAt(t, a, time.Now().Add(-time.Hour)), failedAt(t, a, time.Now().Add(-time.Hour))}
	short, cancel := context.WithTimeout(context.Background(), time.Second) // less than the reserve
	defer cancel()
	res, err := svc.Replay(short, message.ReplayRequest{IDs: ids})
	if err != nil || !res.More || res.Replayed != 0 {
		t.Fatalf("replay with a second left: %+v %v, want nothing done and more", res, err)
	}
	res, err = svc.Replay(context.Background(), message.ReplayRequest{IDs: ids})
	if err != nil || res.More || res.Replayed != 2 {
		t.Fatalf("the repeat: %+v %v, want both replayed and no more", res, err)
	}
}

// nextEntryLost fails RecordOutcome as if the insert of the next
// dispatch's outbox entry had failed after the message was written: it
// writes the outcome, then removes that entry unless it was there before.
type nextEntryLost struct {
	outbox.Store
	db *mongostore.Store
}

func (s nextEntryLost) RecordOutcome(ctx context.Context, o message.Outcome) error {
	key := message.OutboxKey(o.MessageID, o.Seq+1)
	had, err := s.db.HasOutboxEntry(ctx, key)
	if err != nil {
		return err
	}
	if err := s.Store.RecordOutcome(ctx, o); err != nil {
		return err
	}
	if !had {
		if err := s.Store.DeleteOutbox(ctx, key); err != nil {
			return err
		}
	}
	return errors.New("insert next outbox entry: connection reset")
}

// TestReplayFailingMidwayStrandsNothing: a FAILED message has no outbox
// entry left, so a replay whose second write fails must not leave it
// UNSENT without one (nothing would ever publish it). And while a replay
// is between its writes, the relay waits for the message instead of
// publishing a copy the processor would drop.
func TestReplayFailingMidwayStrandsNothing(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	r := a.Relay(nil)

	id := failedAt(t, a, now.Add(-time.Minute))
	svc := a.Service(nil)
	svc.Store = nextEntryLost{Store: svc.Store, db: a.Store}
	if _, err := svc.Retry(ctx, id); err == nil {
		t.Fatal("retry whose second write fails: no error")
	}
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("relay pass after the failed retry: %+v %v, want the message published", s, err)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[id] != 1 {
		t.Fatalf("published %v, want %s once", seen, id)
	}

	// A replay that died after its first write: the entry of the next
	// dispatch exists, the message is still FAILED at the old one.
	half := failedAt(t, a, now.Add(-time.Minute))
	if err := a.Store.EnsureOutbox(ctx, message.NewOutboxEntry(half, 1, now, now)); err != nil {
		t.Fatal(err)
	}
	if s, err := r.Pass(ctx); err != nil || s.Published != 0 || s.Waiting != 1 {
		t.Fatalf("pass during a replay: %+v %v, want the entry waiting", s, err)
	}
	if _, err := a.Service(nil).Retry(ctx, half); err != nil {
		t.Fatalf("retry of the half-replayed message: %v", err)
	}
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("pass after the replay: %+v %v", s, err)
	}

	// The same, but the relay published the half-replayed entry after its
	// wait (the processor acknowledged the copy: the message was FAILED).
	// The replay tried again must not leave the message to an entry marked
	// published, which only the stale sweep would pick up.
	third := failedAt(t, a, now.Add(-time.Minute))
	stray := message.NewOutboxEntry(third, 1, now, now)
	stray.PublishedAt = &now
	if err := a.Store.EnsureOutbox(ctx, stray); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Service(nil).Retry(ctx, third); err != nil {
		t.Fatalf("retry after a stray entry was published: %v", err)
	}
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("pass after that retry: %+v %v", s, err)
	}
}

// failingEntry is a replay that read the message before another replay
// moved it on, and whose write of the next entry fails (its client hung
// up, MongoDB blinked).
type failingEntry struct {
	outbox.Store
	read message.Message
}

func (s failingEntry) GetMessage(context.Context, string) (message.Message, error) {
	return s.read, nil
}

func (s failingEntry) ReplaceOutbox(context.Context, message.OutboxEntry) error {
	return errors.New("connection reset")
}

func (s failingEntry) EnsureOutbox(context.Context, message.OutboxEntry) error {
	return errors.New("connection reset")
}

// failsBeforeUnindex is an outbox store on which the replayed dispatch
// fails for good (fail runs) just before the replay drops the message from
// the failed index.
type failsBeforeUnindex struct {
	outbox.Store
	fail func(id string)
}

func (s failsBeforeUnindex) RemoveFailed(ctx context.Context, id string) error {
	s.fail(id)
	return s.Store.RemoveFailed(ctx, id)
}

// TestReplayKeepsTheIndexEntryOfTheNextFailure: a replayed message whose
// next dispatch fails for good before the replay has dropped the old
// failure from the index stays in the index: it is FAILED again, and
// counted and replayable as such.
func TestReplayKeepsTheIndexEntryOfTheNextFailure(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	id := failedAt(t, a, time.Now().UTC().Add(-time.Hour))
	svc := a.Service(nil)
	svc.Store = failsBeforeUnindex{Store: a.Store, fail: func(id string) {
		m, err := a.Store.GetMessage(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		o := message.Outcome{MessageID: id, Seq: m.Seq, Status: message.StatusFailed, Attempts: 1, At: now,
			FailureReason: "permanent failure: HTTP 400", LastError: "HTTP 400",
			Delivery: &message.Delivery{At: now, Attempt: 1, Outcome: message.OutcomeFailed, StatusCode: 400}}
		if err := a.Store.RecordOutcome(ctx, o); err != nil {
			t.Fatal(err)
		}
	}}
	if _, err := svc.Retry(ctx, id); err != nil {
		t.Fatal(err)
	}
	m, err := a.Store.GetMessage(ctx, id)
	if err != nil || m.Status != message.StatusFailed || m.Seq != 1 {
		t.Fatalf("message: %s at seq %d (%v), want FAILED again at 1", m.Status, m.Seq, err)
	}
	recs, err := a.Store.ListFailed(ctx, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].MessageID != id || !recs[0].FailedAt.Equal(m.UpdatedAt) {
		t.Fatalf("failed index: %+v, want the new failure of %s (at %s)", recs, id, m.UpdatedAt)
	}
}

// TestOverlappingReplaysKeepTheEntry: of two replays of one message (a
// double click, a client's retry after its own timeout), the one that read
// it FAILED before the other moved it on, then failed, leaves the entry the
// message now waits on: the relay publishes it.
func TestOverlappingReplaysKeepTheEntry(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := context.Background()
	id := failedAt(t, a, time.Now().UTC().Add(-time.Minute))
	if err := a.Store.DeleteOutbox(ctx, message.OutboxKey(id, 0)); err != nil {
		t.Fatal(err)
	}
	read, err := a.Store.GetMessage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Service(nil).Retry(ctx, id); err != nil {
		t.Fatalf("first replay: %v", err)
	}
	late := a.Service(nil)
	late.Store = failingEntry{Store: a.Store, read: read}
	if _, err := late.Retry(ctx, id); err == nil {
		t.Fatal("the late replay whose write failed succeeded")
	}
	m, err := a.Store.GetMessage(ctx, id)
	if err != nil || m.Status != message.StatusUnsent || m.Seq != 1 {
		t.Fatalf("message after the replays: %s at seq %d (%v), want UNSENT at 1", m.Status, m.Seq, err)
	}
	if ok, err := a.Store.HasOutboxEntry(ctx, message.OutboxKey(id, 1)); err != nil || !ok {
		t.Fatalf("the entry of dispatch 1: %v %v, want it kept", ok, err)
	}
	if s, err := a.Relay(nil).Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("relay pass: %+v %v, want the replayed message published", s, err)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[id] != 1 {
		t.Fatalf("queued %v, want %s once", seen, id)
	}
}

// TestRetriesAtOnceReplayOnce: of several retries of one FAILED message at
// once (a double click, two operators), one replays it and the others are
// told of a conflict; the message has one replay in its log.
func TestRetriesAtOnceReplayOnce(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	for range 10 {
		id := failedAt(t, a, time.Now().UTC().Add(-time.Hour))
		var ok, conflict atomic.Int32
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				_, err := a.Service(nil).Retry(ctx, id)
				switch {
				case err == nil:
					ok.Add(1)
				case message.ErrorCode(err) == message.ECONFLICT:
					conflict.Add(1)
				default:
					t.Errorf("retry: %v", err)
				}
			})
		}
		wg.Wait()
		m, err := a.Store.GetMessage(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		replays := 0
		for _, d := range m.Deliveries {
			if d.Outcome == message.OutcomeReplayed {
				replays++
			}
		}
		if ok.Load() != 1 || conflict.Load() != 3 || m.Seq != 1 || replays != 1 {
			t.Fatalf("4 retries at once: %d made, %d conflicts; message at seq %d with %d replays; want 1, 3, 1, 1", ok.Load(), conflict.Load(), m.Seq, replays)
		}
	}
}

// TestBulkReplaysAtOnceShareTheWork: two bulk replays of the same ids at
// once each replay some, none twice, and neither fails for the other.
func TestBulkReplaysAtOnceShareTheWork(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	var ids []string
	for range 30 {
		ids = append(ids, failedAt(t, a, time.Now().UTC().Add(-time.Hour)))
	}
	res := make([]message.ReplayResult, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { res[i], errs[i] = a.Service(nil).Replay(ctx, message.ReplayRequest{IDs: ids}) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || res[0].Replayed+res[1].Replayed != len(ids) {
		t.Fatalf("two bulk replays at once: %d (%v) and %d (%v) replayed, want %d between them and no error", res[0].Replayed, errs[0], res[1].Replayed, errs[1], len(ids))
	}
	for _, id := range ids {
		if m, err := a.Store.GetMessage(ctx, id); err != nil || m.Seq != 1 || m.Status != message.StatusUnsent {
			t.Fatalf("message %s after the replays: %s at seq %d (%v), want UNSENT at 1", id, m.Status, m.Seq, err)
		}
	}
}

// outcomeFailsOnce fails the first RecordOutcome, writing nothing.
type outcomeFailsOnce struct {
	outbox.Store
	failed *atomic.Bool
}

func (s outcomeFailsOnce) RecordOutcome(ctx context.Context, o message.Outcome) error {
	if s.failed.CompareAndSwap(false, true) {
		return errors.New("server selection error: context deadline exceeded")
	}
	return s.Store.RecordOutcome(ctx, o)
}

// TestFailedRetryCanBeTriedAgainAtOnce: a retry that failed (the store
// blinked) gives way, so the client's next try replays the message.
func TestFailedRetryCanBeTriedAgainAtOnce(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	id := failedAt(t, a, time.Now().UTC().Add(-time.Hour))
	svc := a.Service(nil)
	svc.Store = outcomeFailsOnce{Store: a.Store, failed: &atomic.Bool{}}
	if _, err := svc.Retry(ctx, id); message.ErrorCode(err) != message.EUNAVAILABLE {
		t.Fatalf("retry whose write failed: %v, want the store unavailable", err)
	}
	if m, err := svc.Retry(ctx, id); err != nil || m.Status != message.StatusUnsent || m.Seq != 1 {
		t.Fatalf("retry tried again at once: %+v %v, want the message UNSENT at seq 1", m, err)
	}
}

// settleFails is a store whose replay markers cannot be settled.
type settleFails struct{ outbox.Store }

func (s settleFails) ClaimReplay(ctx context.Context, id string, seq int) (func(context.Context, bool) error, error) {
	if _, err := s.Store.ClaimReplay(ctx, id, seq); err != nil {
		return nil, err
	}
	return func(context.Context, bool) error { return errors.New("connection reset") }, nil
}

// TestUnsettledReplayIsLogged: a replay whose marker could not be settled
// says so, and what it means (before, the error was dropped unseen).
func TestUnsettledReplayIsLogged(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	id := failedAt(t, a, time.Now().UTC().Add(-time.Hour))
	svc := a.Service(nil)
	svc.Store = settleFails{a.Store}
	out := &logbuf.Buffer{}
	svc.Logger = slog.New(slog.NewTextHandler(out, nil))
	if _, err := svc.Retry(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "replay made, but its marker not marked done") || !strings.Contains(got, "connection reset") {
		t.Fatalf("log:\n%s\nwant a warning that the made replay's marker was not marked done, with the error", got)
	}
}
