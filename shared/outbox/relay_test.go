package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// accept stores n messages through the service without the fast path, so
// that they wait in the outbox for a relay.
func accept(t *testing.T, a *app.App, n int) []string {
	t.Helper()
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	ids := make([]string, n)
	for i := range ids {
		m, _, err := svc.Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: fmt.Sprint("m", i)}, "")
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != message.StatusUnsent {
			t.Fatalf("with the scheduler stopped a new message is UNSENT, got %s", m.Status)
		}
		ids[i] = m.ID
	}
	return ids
}

func envelopes(t *testing.T, bodies [][]byte) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, b := range bodies {
		var env message.Envelope
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatalf("queue holds a non-envelope %q", b)
		}
		seen[env.ID]++
	}
	return seen
}

// TestTwoRelaysPublishEachMessageOnce runs two relays side by side over the
// same outbox until it is empty: the lease lets one pass run at a time, and
// every message is published exactly once.
func TestTwoRelaysPublishEachMessageOnce(t *testing.T) {
	env := testenv.Env(t, map[string]string{"BATCH_SIZE": "50"})
	a := testenv.App(t, env)
	ids := accept(t, a, 200)

	relays := []*outbox.Relay{a.Relay(nil), testenv.App(t, env).Relay(nil)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	published, skipped := 0, 0
	start := make(chan struct{})
	for _, r := range relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range 100 {
				s, err := r.Pass(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				published += s.Published
				if s.Skipped != "" {
					skipped++
				}
				done := published == len(ids)
				mu.Unlock()
				if done {
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if published != len(ids) {
		t.Fatalf("published %d in all, want %d", published, len(ids))
	}
	if skipped == 0 {
		t.Errorf("the two relays never met the lease")
	}
	seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"]))
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s published %d times", id, seen[id])
		}
	}
	for _, id := range ids[:10] {
		m, err := a.Store.GetMessage(context.Background(), id)
		if err != nil || m.Status != message.StatusProcessing {
			t.Fatalf("published message: %v %s", err, m.Status)
		}
	}
	// A further pass finds nothing due.
	s, err := a.Relay(nil).Pass(context.Background())
	if err != nil || s.Published != 0 {
		t.Fatalf("second pass: %+v %v", s, err)
	}
}

func TestRelayWaitsWhileStopped(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	accept(t, a, 3)
	sched := a.LocalScheduler()
	if _, err := sched.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err := a.Relay(sched.Gate()).Pass(context.Background())
	if err != nil || s.Skipped == "" || s.Published != 0 {
		t.Fatalf("stopped relay pass: %+v %v", s, err)
	}
	if _, err := sched.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err = a.Relay(sched.Gate()).Pass(context.Background())
	if err != nil || s.Published != 3 {
		t.Fatalf("started relay pass: %+v %v", s, err)
	}
}

func TestSendAtWaitsForItsTime(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	at := time.Now().Add(time.Hour)
	m, _, err := a.Service(nil).Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: "later", SendAt: &at}, "")
	if err != nil || m.Status != message.StatusUnsent || m.NextAttemptAt == nil {
		t.Fatalf("create: %+v %v", m, err)
	}
	r := a.Relay(nil)
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 0 {
		t.Fatalf("published a message before its sendAt: %+v %v", s, err)
	}
	r.Now = func() time.Time { return at.Add(time.Second) }
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 1 {
		t.Fatalf("at sendAt: %+v %v", s, err)
	}
}

// TestSweepRecoversStaleMessages: a message a processor took but never
// answered is published again while attempts remain, then dead-lettered
// with a reason.
func TestSweepRecoversStaleMessages(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "1", "STALE_DURATION": "1m"})
	a := testenv.App(t, env)
	ids := accept(t, a, 1)
	id := ids[0]
	r := a.Relay(nil)
	now := time.Now()
	clock := now
	r.Now = func() time.Time { return clock }
	ctx := context.Background()
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("first pass: %+v %v", s, err)
	}

	// A processor takes the dispatch, starts the webhook call and dies:
	// its claim expires, its taken marker stays.
	take := func(seq int) {
		t.Helper()
		if ok, _, _, err := a.Redis.Claim(ctx, id, "dead-holder", seq, time.Millisecond); err != nil || !ok {
			t.Fatalf("claim: %v %v", ok, err)
		}
		if err := a.Redis.MarkTaken(ctx, id, seq, time.Hour); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	take(0)
	clock = now.Add(2 * time.Minute) // no outcome arrived: stale
	if s, err := r.Pass(ctx); err != nil || s.Recovered != 1 || s.Published != 1 {
		t.Fatalf("recovery pass: %+v %v", s, err)
	}
	m, _ := a.Store.GetMessage(ctx, id)
	if m.Attempts != 1 || m.Seq != 1 || m.Status != message.StatusProcessing {
		t.Fatalf("after recovery: attempts %d seq %d status %s", m.Attempts, m.Seq, m.Status)
	}

	take(1)
	clock = now.Add(4 * time.Minute) // stale again, no attempts left
	if s, err := r.Pass(ctx); err != nil || s.DeadLettered != 1 {
		t.Fatalf("dead-letter pass: %+v %v", s, err)
	}
	m, _ = a.Store.GetMessage(ctx, id)
	if m.Status != message.StatusFailed || m.FailureReason == "" || m.Attempts != 2 {
		t.Fatalf("after dead-letter: %+v", m)
	}
	dlq := testenv.Drain(t, env["RABBITMQ_DLQ"])
	if len(dlq) != 1 {
		t.Fatalf("dead-letter queue holds %d notifications, want 1", len(dlq))
	}
	var n message.DeadLetter
	if err := json.Unmarshal(dlq[0], &n); err != nil || n.MessageID != id || n.Reason == "" {
		t.Fatalf("notification %s: %v", dlq[0], err)
	}
}

// publishedOnce accepts one message into an app of env and publishes it
// with a relay on a clock the test moves with advance.
func publishedOnce(t *testing.T, env map[string]string) (*app.App, string, *outbox.Relay, func(time.Duration)) {
	t.Helper()
	a := testenv.App(t, env)
	id := accept(t, a, 1)[0]
	r := a.Relay(nil)
	now := time.Now()
	r.Now = func() time.Time { return now }
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 1 {
		t.Fatalf("first pass: %+v %v", s, err)
	}
	return a, id, r, func(d time.Duration) { now = now.Add(d) }
}

// TestSweepCountsNoAttemptNobodyMade: while no processor takes a message
// (none running, or a backlog ahead of it), each stale sweep publishes it
// again without counting an attempt, so even with no retries allowed it is
// never dead-lettered undelivered.
func TestSweepCountsNoAttemptNobodyMade(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		advance(2 * time.Minute)
		if s, err := r.Pass(ctx); err != nil || s.Recovered != 1 || s.DeadLettered != 0 {
			t.Fatalf("stale pass %d: %+v %v", i, s, err)
		}
		m, _ := a.Store.GetMessage(ctx, id)
		if m.Attempts != 0 || m.Seq != i || m.Status != message.StatusProcessing {
			t.Fatalf("after stale pass %d: attempts %d seq %d status %s", i, m.Attempts, m.Seq, m.Status)
		}
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[id] != 4 {
		t.Fatalf("published %v, want %s 4 times", seen, id)
	}
}

// TestSweepCountsTheAttemptWhenRedisCannotTell: with Redis down, whether a
// processor took the dispatch is unknown, and the dispatch counts, so that
// a message that brings its processor down still runs out of attempts.
func TestSweepCountsTheAttemptWhenRedisCannotTell(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m", "REDIS_URI": "127.0.0.1:1"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	advance(2 * time.Minute)
	if s, err := r.Pass(ctx); err != nil || s.DeadLettered != 1 {
		t.Fatalf("stale pass with redis down: %+v %v", s, err)
	}
	if m, _ := a.Store.GetMessage(ctx, id); m.Status != message.StatusFailed || m.Attempts != 1 {
		t.Fatalf("after the stale pass: %s, attempts %d", m.Status, m.Attempts)
	}
	testenv.Drain(t, env["RABBITMQ_DLQ"])
}

// TestSweepCountsOnlyWhatItRecorded: a stale message whose outcome the
// sweep failed to write stays stale, and the next pass decides again; the
// metrics count it once, when its outcome is written, as the processor
// counts its own.
func TestSweepCountsOnlyWhatItRecorded(t *testing.T) {
	for _, c := range []struct {
		name, retries, event string
		taken                bool
	}{
		{"recovered", "3", "recovered", false},
		{"dead-lettered", "0", "dead_lettered", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := testenv.Env(t, map[string]string{"MAX_RETRIES": c.retries, "STALE_DURATION": "1m"})
			a, id, r, advance := publishedOnce(t, env)
			ctx := context.Background()
			if c.taken {
				if err := a.Redis.MarkTaken(ctx, id, 0, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			r.Store = outcomeFailsOnce{Store: r.Store, failed: new(atomic.Bool)}
			var ev testenv.Tally
			r.Observe = ev.Record
			advance(2 * time.Minute)
			if s, err := r.Pass(ctx); err == nil || s.Recovered+s.DeadLettered != 0 {
				t.Fatalf("pass whose outcome write failed: %+v %v, want an error and nothing counted", s, err)
			}
			advance(2 * time.Minute)
			if s, err := r.Pass(ctx); err != nil || s.Recovered+s.DeadLettered != 1 {
				t.Fatalf("next pass: %+v %v, want one message decided", s, err)
			}
			if events := ev.Counts(); events[c.event] != 1 || events["recovered"]+events["dead_lettered"] != 1 {
				t.Fatalf("events %v, want %s counted once", events, c.event)
			}
			testenv.Drain(t, env["RABBITMQ_DLQ"])
			testenv.Drain(t, env["RABBITMQ_QUEUE"])
		})
	}
}

// markHangs is a store whose MarkPublished answers only when its context
// ends: a store that stalls.
type markHangs struct{ outbox.Store }

func (markHangs) MarkPublished(ctx context.Context, _ []message.OutboxEntry, _ time.Time) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestPassEndsBeforeItsCallersDeadline: a Lambda invocation's deadline
// bounds the record of the pass's last batch too: on a store that stalls,
// the pass gives up in time for the lease's release and the invocation's
// end, instead of running its MarkTimeout (10 s) past the deadline into a
// timeout. The entries stay due, as after a crash.
func TestPassEndsBeforeItsCallersDeadline(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ids := accept(t, a, 3)
	r := a.Relay(nil)
	r.Store = markHangs{r.Store}
	// 8 s: time enough for the lease, the sweep and a batch on a loaded
	// machine; the record, stalled, must end by 1 s before the deadline,
	// where it ran MarkTimeout (10 s) past it before.
	const deadline = 8 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	s, err := r.Pass(ctx)
	if took := time.Since(start); err == nil || took > deadline {
		t.Fatalf("pass with an %s deadline on a stalled store: %+v %v after %s, want an error within the deadline", deadline, s, err, took)
	}
	if due, err := a.Store.DueOutbox(context.Background(), time.Now().Add(time.Hour), 10); err != nil || len(due) != len(ids) {
		t.Fatalf("due after the cut-short record: %d (%v), want %d", len(due), err, len(ids))
	}
	testenv.Drain(t, env["RABBITMQ_QUEUE"])
}

// TestRelayLeavesAnEntryWhoseMessageIsBeingStored: a create stores the
// entry, then the message. A pass between the two leaves the entry due
// instead of publishing a copy the processor would drop; once the message
// exists the next pass publishes it. An entry whose message never came
// (its create died) is published after the grace, as before.
func TestRelayLeavesAnEntryWhoseMessageIsBeingStored(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC()
	m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: "half-stored"}, now)
	e := message.NewOutboxEntry(m.ID, 0, now, now)
	if err := a.Store.EnsureOutbox(ctx, e); err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	r.Now = func() time.Time { return now.Add(time.Second) }
	if s, err := r.Pass(ctx); err != nil || s.Published != 0 || s.Waiting != 1 {
		t.Fatalf("pass before the message exists: %+v %v", s, err)
	}
	if err := a.Store.CreateMessage(ctx, m, e); err != nil {
		t.Fatal(err)
	}
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 || s.Waiting != 0 {
		t.Fatalf("pass once it exists: %+v %v", s, err)
	}

	// Entries left waiting do not hold up the due entries behind them:
	// with batches of 2 and 3 half-stored messages ahead, a stored one
	// behind them is published in the same pass.
	r.BatchSize = 2
	var halves []string
	for range 3 {
		id := uuid.Must(uuid.NewV7()).String()
		if err := a.Store.EnsureOutbox(ctx, message.NewOutboxEntry(id, 0, now.Add(-time.Second), now)); err != nil {
			t.Fatal(err)
		}
		halves = append(halves, id)
	}
	behind := accept(t, a, 1)[0]
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 || s.Waiting != 3 {
		t.Fatalf("pass with half-stored messages ahead: %+v %v", s, err)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); len(seen) != 2 || seen[m.ID] != 1 || seen[behind] != 1 {
		t.Fatalf("published %v, want %s and %s once each", seen, m.ID, behind)
	}

	// After the grace an entry whose message never came (its create died)
	// is published as before: the processor drops the copy, the stale
	// sweep the entry.
	r.Now = func() time.Time { return now.Add(time.Minute) }
	r.BatchSize = 100
	if s, err := r.Pass(ctx); err != nil || s.Published != 3 || s.Waiting != 0 {
		t.Fatalf("pass after the grace: %+v %v", s, err)
	}
	seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"]))
	for _, id := range halves {
		if seen[id] != 1 {
			t.Fatalf("published %v, want each of %v once", seen, halves)
		}
	}
}

// TestSweepRecoversAnUnpublishedFastPathEntry: the API stores a fast-path
// entry as published just before publishing it. If it dies in between, the
// sweep publishes the message without counting an attempt, even with no
// retries allowed: nothing was ever sent.
func TestSweepRecoversAnUnpublishedFastPathEntry(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m"})
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC()
	// fastPathStored stores a message as the fast path does, just before
	// it publishes it.
	fastPathStored := func(content string) message.Message {
		t.Helper()
		m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: content}, now)
		m.Status = message.StatusProcessing
		e := message.NewOutboxEntry(m.ID, 0, now.Add(10*time.Second), now)
		e.PublishedAt, e.FastPath = &now, true
		if err := a.Store.CreateMessage(ctx, m, e); err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := fastPathStored("orphan")
	r := a.Relay(nil)
	r.Now = func() time.Time { return now.Add(2 * time.Minute) }
	s, err := r.Pass(ctx)
	if err != nil || s.Recovered != 1 || s.Published != 1 || s.DeadLettered != 0 {
		t.Fatalf("recovery pass: %+v %v", s, err)
	}
	got, _ := a.Store.GetMessage(ctx, m.ID)
	if got.Attempts != 0 || got.Seq != 1 || got.Status != message.StatusProcessing {
		t.Fatalf("after recovery: attempts %d seq %d status %s", got.Attempts, got.Seq, got.Status)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[m.ID] != 1 {
		t.Fatalf("published %v, want %s once", seen, m.ID)
	}

	// The same, but a processor started the webhook call of the first
	// dispatch and died: that counts, and with no retries allowed the
	// message is dead-lettered, as a message that brings its processor
	// down must run out of attempts.
	m2 := fastPathStored("crasher")
	if err := a.Redis.MarkTaken(ctx, m2.ID, 0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if s, err := r.Pass(ctx); err != nil || s.DeadLettered != 1 {
		t.Fatalf("recovery pass of a taken fast-path dispatch: %+v %v", s, err)
	}
	if got, _ := a.Store.GetMessage(ctx, m2.ID); got.Status != message.StatusFailed || got.Attempts != 1 {
		t.Fatalf("taken fast-path dispatch after recovery: %s, attempts %d", got.Status, got.Attempts)
	}
}

// TestFailedIndexIsRepaired: the failed index is written after a message's
// FAILED status, so that write can be lost. The stale sweep, finding the
// dead-lettered message's entry, puts it back in the index; a bulk replay
// drops an index entry whose message is no longer FAILED.
func TestFailedIndexIsRepaired(t *testing.T) {
	env := testenv.Env(t, map[string]string{"STALE_DURATION": "1m"})
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC()
	m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: "failed"}, now)
	m.Status, m.FailureReason = message.StatusFailed, "permanent failure"
	e := message.NewOutboxEntry(m.ID, 0, now, now)
	e.PublishedAt = &now
	if err := a.Store.CreateMessage(ctx, m, e); err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	r.Now = func() time.Time { return now.Add(2 * time.Minute) }
	if _, err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Store.CountFailed(ctx); err != nil || n != 1 {
		t.Fatalf("failed index after the sweep: %d %v, want 1", n, err)
	}
	if has, err := a.Store.HasOutboxEntry(ctx, e.Key); err != nil {
		t.Fatalf("look up the dead-lettered message's entry: %v", err)
	} else if has {
		t.Fatal("the sweep left the dead-lettered message's entry")
	}

	// A stale entry: a message no longer FAILED still in the index, as an
	// IndexFailed whose check of the message failed leaves one.
	sent := accept(t, a, 1)[0]
	client, err := mongo.Connect(options.Client().ApplyURI(a.Config.MongoURI))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(ctx)
	if _, err := client.Database(a.Config.MongoDatabase).Collection("failed").InsertOne(ctx, message.FailedRecord{MessageID: sent, FailedAt: now}); err != nil {
		t.Fatal(err)
	}
	svc := a.Service(nil)
	if res, err := svc.Replay(ctx, message.ReplayRequest{DryRun: true}); err != nil || res.Matched != 1 {
		t.Fatalf("dry run: %+v %v, want the one FAILED message", res, err)
	}
	res, err := svc.Replay(ctx, message.ReplayRequest{})
	if err != nil || res.Replayed != 1 || len(res.IDs) != 1 || res.IDs[0] != m.ID {
		t.Fatalf("replay: %+v %v, want %s replayed alone", res, err, m.ID)
	}
	got, err := a.Store.GetMessage(ctx, m.ID)
	if err != nil || got.Status != message.StatusUnsent {
		t.Fatalf("replayed message: %+v %v, want UNSENT", got, err)
	}
	if has, err := a.Store.HasOutboxEntry(ctx, message.OutboxKey(m.ID, got.Seq)); err != nil || !has {
		t.Fatalf("replayed message has no outbox entry at seq %d: %v", got.Seq, err)
	}
	if n, err := a.Store.CountFailed(ctx); err != nil || n != 0 {
		t.Fatalf("failed index after the replay: %d %v, want 0", n, err)
	}
}

// TestRunForGoesOnWhenTheStateIsUnknown: a run whose gate cannot read the
// publisher's state (the schedule's API throttling) keeps making passes, as
// the schedule started it, so a message that falls due during its window
// is published; and it says so once.
func TestRunForGoesOnWhenTheStateIsUnknown(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	at := time.Now().Add(500 * time.Millisecond)
	if _, _, err := svc.Create(ctx, message.CreateRequest{To: "+905551111111", Content: "soon", SendAt: &at}, ""); err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	out := &logbuf.Buffer{}
	r.Logger = slog.New(slog.NewTextHandler(out, nil))
	var looks atomic.Int32
	unknown := func(context.Context) (bool, error) {
		looks.Add(1)
		return false, errors.New("get schedule: ThrottlingException")
	}
	s, err := r.RunFor(ctx, 3*time.Second, 100*time.Millisecond, 0, unknown)
	if err != nil || s.Published != 1 {
		t.Fatalf("passes for 3 s with the state unknown: %+v %v, want the message due after 0.5 s published", s, err)
	}
	if n := looks.Load(); n < 2 {
		t.Fatalf("the run looked at the state %d times: it ended at the first unknown", n)
	}
	if n := strings.Count(out.String(), "publisher state unknown"); n != 1 {
		t.Fatalf("%d warnings about the unknown state, want 1:\n%s", n, out)
	}
}

// TestRunForCountsFailedPasses: a run reports how many of its passes
// failed (for the Lambda publisher's relay_pass_failures metric), and the
// error of its last pass only: one that recovers ends without error.
func TestRunForCountsFailedPasses(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	var passes atomic.Int32
	r := a.Relay(func(context.Context) (bool, error) {
		if passes.Add(1) <= 2 {
			return false, errors.New("scheduler state: connection refused")
		}
		return true, nil
	})
	r.Logger = slog.New(slog.DiscardHandler)
	s, err := r.RunFor(context.Background(), time.Second, 100*time.Millisecond, 0, nil)
	if err != nil || s.FailedPasses != 2 || passes.Load() < 4 {
		t.Fatalf("a run whose first two passes fail: %+v %v after %d passes; want 2 failed and no error", s, err, passes.Load())
	}
}

// TestRunForPublishesWhatFallsDueMeanwhile: RunFor makes passes every
// interval for its window, so a message that falls due during the window
// is published in the same call; a window of 0 is one pass; the call ends
// before ctx's deadline, keeping reserve.
func TestRunForPublishesWhatFallsDueMeanwhile(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	ctx := context.Background()
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	at := time.Now().Add(time.Second)
	m, _, err := svc.Create(ctx, message.CreateRequest{To: "+905551111111", Content: "soon", SendAt: &at}, "")
	if err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	if s, err := r.RunFor(ctx, 0, 100*time.Millisecond, 0, nil); err != nil || s.Published != 0 {
		t.Fatalf("one pass before the message is due: %+v %v", s, err)
	}
	start := time.Now()
	s, err := r.RunFor(ctx, 3*time.Second, 100*time.Millisecond, 0, nil)
	if err != nil || s.Published != 1 {
		t.Fatalf("passes for 3 s: %+v %v, want the message published", s, err)
	}
	if took := time.Since(start); took < 2500*time.Millisecond {
		t.Errorf("passes for 3 s ended after %s (the last one starts within 100 ms of the window's end)", took)
	}
	if got, _ := a.Store.GetMessage(ctx, m.ID); got.Status != message.StatusProcessing {
		t.Errorf("after the passes: %s, want PROCESSING", got.Status)
	}

	// The deadline, less the reserve, ends it before the window does.
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start = time.Now()
	if _, err := r.RunFor(dctx, time.Minute, 100*time.Millisecond, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("with 2 s to its deadline and 1 s reserved, passes went on for %s", took)
	}

	// Turned off, the run ends after its next look, not at its window's
	// end; the first pass is made anyway (the schedule invoked it).
	var looks atomic.Int32
	off := func(context.Context) (bool, error) { return looks.Add(1) < 3, nil }
	start = time.Now()
	s, err = r.RunFor(ctx, time.Minute, 100*time.Millisecond, 0, off)
	if err != nil || s.Skipped != "scheduler stopped" || looks.Load() != 3 {
		t.Fatalf("turned off after two looks: %+v %v, %d looks", s, err, looks.Load())
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("turned off, the run went on for %s", took)
	}
}

// claimProbe is a dead-letter queue that, when notified, tries to claim the
// message as a processor would, and keeps the answer.
type claimProbe struct {
	outbox.DeadLetters
	a       *app.App
	claimed *bool
}

func (p claimProbe) NotifyDeadLetter(ctx context.Context, n message.DeadLetter) error {
	ok, _, _, err := p.a.Redis.Claim(ctx, n.MessageID, "processor", 0, time.Minute)
	if err != nil {
		return err
	}
	*p.claimed = ok
	return p.DeadLetters.NotifyDeadLetter(ctx, n)
}

// TestSweepHoldsTheClaimWhileItRecovers: while the sweep dead-letters a
// message, no processor can claim it (and deliver it, its 2xx then refused
// by the FAILED status); once the sweep is done the claim is free again.
func TestSweepHoldsTheClaimWhileItRecovers(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	if err := a.Redis.MarkTaken(ctx, id, 0, time.Hour); err != nil {
		t.Fatal(err)
	}
	claimed := true
	r.DeadLetters = claimProbe{DeadLetters: r.DeadLetters, a: a, claimed: &claimed}
	advance(2 * time.Minute)
	if s, err := r.Pass(ctx); err != nil || s.DeadLettered != 1 {
		t.Fatalf("stale pass: %+v %v", s, err)
	}
	if claimed {
		t.Fatal("a processor claimed the message while the sweep dead-lettered it")
	}
	if ok, _, _, err := a.Redis.Claim(ctx, id, "later", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim after the sweep: %v %v, want the sweep's claim released", ok, err)
	}
}

// cancelAfterPublish stops the pass the moment the broker has confirmed a
// batch, as SIGTERM or a Lambda deadline can.
type cancelAfterPublish struct {
	outbox.Publisher
	cancel context.CancelFunc
}

func (p cancelAfterPublish) PublishConfirmed(ctx context.Context, envs []message.Envelope) ([]message.Envelope, error) {
	confirmed, err := p.Publisher.PublishConfirmed(ctx, envs)
	p.cancel()
	return confirmed, err
}

// TestStoppedPassRecordsWhatWasConfirmed: a pass stopped right after the
// broker confirmed a batch still marks the batch published, so the next
// pass does not publish it all again.
func TestStoppedPassRecordsWhatWasConfirmed(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	accept(t, a, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := a.Relay(nil)
	r.Publisher = cancelAfterPublish{Publisher: r.Publisher, cancel: cancel}
	if s, err := r.Pass(ctx); err != nil || s.Published != 3 {
		t.Fatalf("stopped pass: %+v %v", s, err)
	}
	if s, err := a.Relay(nil).Pass(context.Background()); err != nil || s.Published != 0 {
		t.Fatalf("next pass: %+v %v, want nothing published again", s, err)
	}
	if n := len(testenv.Drain(t, env["RABBITMQ_QUEUE"])); n != 3 {
		t.Fatalf("queue holds %d copies, want 3", n)
	}
}

// slowSweep makes the stale sweep's scan take a whole lease on the relay's
// clock.
type slowSweep struct {
	outbox.Store
	advance func()
}

func (s slowSweep) StaleOutbox(ctx context.Context, before time.Time, limit int) ([]message.OutboxEntry, error) {
	s.advance()
	return s.Store.StaleOutbox(ctx, before, limit)
}

// TestPassBudgetCountsTheSweep: the time a pass may publish for starts
// with the pass, so a sweep that took the lease's time leaves none, and the
// lease cannot expire under a pass still publishing.
func TestPassBudgetCountsTheSweep(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	accept(t, a, 3)
	r := a.Relay(nil)
	var offset atomic.Int64
	r.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	r.Store = slowSweep{Store: r.Store, advance: func() { offset.Add(int64(r.LeaseTTL)) }}
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 0 {
		t.Fatalf("pass whose sweep took the lease's time: %+v %v, want nothing published", s, err)
	}
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 3 {
		t.Fatalf("next pass: %+v %v", s, err)
	}
}

// entriesOnly stores the entries of a batch and dies before its messages.
type entriesOnly struct{ outbox.Store }

func (s entriesOnly) CreateMessages(ctx context.Context, items []outbox.NewMessage) []error {
	errs := make([]error, len(items))
	for i, it := range items {
		if err := s.Store.EnsureOutbox(ctx, it.Entry); err != nil {
			return []error{err}
		}
		errs[i] = errors.New("the process died")
	}
	return errs
}

// missingThen runs then once, when the message read is found missing.
type missingThen struct {
	outbox.Store
	then func()
}

func (s *missingThen) GetMessage(ctx context.Context, id string) (message.Message, error) {
	m, err := s.Store.GetMessage(ctx, id)
	if message.ErrorCode(err) == message.ENOTFOUND && s.then != nil {
		s.then()
		s.then = nil
	}
	return m, err
}

// TestSweepKeepsTheEntryOfARepeatedCreate: a create died between its entry
// and its message; the client repeats it with its Idempotency-Key just as
// the stale sweep finds the entry without a message. The sweep drops the
// old entry but not the repeat's, and the repeated message is published at
// once, not after a stale sweep.
func TestSweepKeepsTheEntryOfARepeatedCreate(t *testing.T) {
	env := testenv.Env(t, map[string]string{"STALE_DURATION": "1m"})
	a := testenv.App(t, env)
	ctx := context.Background()
	stopped := func(context.Context) (bool, error) { return false, nil }
	req := message.CreateRequest{To: "+905551111111", Content: "hello"}
	start := time.Now().Add(-10 * time.Minute)
	first := a.Service(stopped)
	first.Now = func() time.Time { return start }
	first.Store = entriesOnly{a.Store}
	if _, _, err := first.Create(ctx, req, "key-1"); err == nil {
		t.Fatal("the create that died succeeded")
	}
	r := a.Relay(nil)
	clock := start.Add(time.Minute)
	r.Now = func() time.Time { return clock }
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 { // the orphan, once past the grace period
		t.Fatalf("first pass: %+v %v", s, err)
	}
	testenv.Drain(t, env["RABBITMQ_QUEUE"])

	var repeated message.Message
	sweepStore := &missingThen{Store: a.Store, then: func() {
		m, _, err := a.Service(stopped).Create(ctx, req, "key-1")
		if err != nil {
			t.Errorf("the repeat: %v", err)
		}
		repeated = m
	}}
	r.Store = sweepStore
	clock = start.Add(5 * time.Minute)
	if _, err := r.Pass(ctx); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if sweepStore.then != nil || repeated.ID == "" {
		t.Fatal("the sweep never found the entry without its message")
	}
	r.Store = a.Store
	clock = time.Now()
	if s, err := r.Pass(ctx); err != nil || s.Published != 1 {
		t.Fatalf("pass after the repeat: %+v %v, want the repeated message published", s, err)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[repeated.ID] != 1 {
		t.Fatalf("queued %v, want %s once", seen, repeated.ID)
	}
}

// outcomeBeforeClaim records a processor's outcome just before the sweep
// takes its claim, once.
type outcomeBeforeClaim struct {
	outbox.Inbox
	before func()
}

func (c *outcomeBeforeClaim) Claim(ctx context.Context, id, token string, seq int, ttl time.Duration) (bool, outbox.InboxState, string, error) {
	if c.before != nil {
		c.before()
		c.before = nil
	}
	return c.Inbox.Claim(ctx, id, token, seq, ttl)
}

// TestSweepDecidesOnTheMessageUnderItsClaim: a processor records its
// outcome between the sweep's read of a stale message and the sweep's
// claim (a copy behind a backlog, delivered at last). The sweep leaves the
// outcome alone: no second dead-letter, no reason of its own.
func TestSweepDecidesOnTheMessageUnderItsClaim(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	advance(2 * time.Minute)
	const reason = "permanent failure: HTTP 410 Gone"
	r.Inbox = &outcomeBeforeClaim{Inbox: r.Inbox, before: func() {
		if err := a.Redis.MarkTaken(ctx, id, 0, time.Hour); err != nil {
			t.Fatal(err)
		}
		at := time.Now().UTC()
		o := message.Outcome{MessageID: id, Seq: 0, Status: message.StatusFailed, Attempts: 1, At: at,
			LastError: "HTTP 410 Gone", FailureReason: reason,
			Delivery: &message.Delivery{At: at, Attempt: 1, StatusCode: 410, Outcome: message.OutcomeFailed}}
		if err := a.Store.RecordOutcome(ctx, o); err != nil {
			t.Fatal(err)
		}
	}}
	s, err := r.Pass(ctx)
	if err != nil || s.DeadLettered != 0 || s.Recovered != 0 {
		t.Fatalf("sweep: %+v %v, want it to leave the recorded outcome alone", s, err)
	}
	m, err := a.Store.GetMessage(ctx, id)
	if err != nil || m.Status != message.StatusFailed || m.FailureReason != reason || len(m.Deliveries) != 1 {
		t.Fatalf("message: %s %q with %d deliveries (%v), want the processor's FAILED alone", m.Status, m.FailureReason, len(m.Deliveries), err)
	}
	advance(time.Second)
	if _, err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Store.HasOutboxEntry(ctx, message.OutboxKey(id, 0)); err != nil || ok {
		t.Fatalf("the finished dispatch's entry after the next pass: %v %v, want it gone", ok, err)
	}
}

// TestSweepCountsADispatchTakenWhileRedisWasDown: a processor claimed a
// message in the MongoDB stand-in while Redis was unreachable, called the
// webhook and died. Redis, back, has no mark of it; the sweep still counts
// the attempt.
func TestSweepCountsADispatchTakenWhileRedisWasDown(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	if ok, _, _, err := a.Store.ClaimInbox(ctx, id, "dead-holder", 0, time.Millisecond); err != nil || !ok {
		t.Fatalf("claim in the stand-in: %v %v", ok, err)
	}
	advance(2 * time.Minute)
	if s, err := r.Pass(ctx); err != nil || s.DeadLettered != 1 {
		t.Fatalf("sweep: %+v %v, want the taken dispatch counted (and, with no retries, dead-lettered)", s, err)
	}
	if m, err := a.Store.GetMessage(ctx, id); err != nil || m.Status != message.StatusFailed || m.Attempts != 1 {
		t.Fatalf("message: %s after %d attempts (%v), want FAILED after 1", m.Status, m.Attempts, err)
	}
}

// TestSweepDoesNotTakeItsOwnClaimForATakenDispatch: with Redis down the
// sweep's claim goes to the MongoDB stand-in, where a claim is also the
// dispatch's taken mark. A fast-path entry nobody took, never attempted,
// is published again without counting an attempt (the API may have died
// between storing and publishing it), as when Redis is up; it is not
// counted for the sweep's own claim and, with no retries, dead-lettered.
func TestSweepDoesNotTakeItsOwnClaimForATakenDispatch(t *testing.T) {
	env := testenv.Env(t, map[string]string{"MAX_RETRIES": "0", "STALE_DURATION": "1m", "REDIS_URI": "127.0.0.1:1"})
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC()
	m := message.New(uuid.Must(uuid.NewV7()).String(), message.CreateRequest{To: "+905551111111", Content: "orphan"}, now)
	m.Status = message.StatusProcessing
	e := message.NewOutboxEntry(m.ID, 0, now.Add(10*time.Second), now)
	e.PublishedAt, e.FastPath = &now, true
	if err := a.Store.CreateMessage(ctx, m, e); err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	r.Now = func() time.Time { return now.Add(2 * time.Minute) }
	if s, err := r.Pass(ctx); err != nil || s.Recovered != 1 || s.DeadLettered != 0 {
		t.Fatalf("recovery pass with Redis down: %+v %v, want it recovered", s, err)
	}
	if got, _ := a.Store.GetMessage(ctx, m.ID); got.Attempts != 0 || got.Seq != 1 || got.Status != message.StatusProcessing {
		t.Fatalf("after recovery: attempts %d seq %d status %s, want 0 attempts at seq 1", got.Attempts, got.Seq, got.Status)
	}
	testenv.Drain(t, env["RABBITMQ_QUEUE"])
}

// TestStoppedPassReportsNoRedisOutage: a pass whose context has ended
// (a shutdown) stops at the lease without logging that Redis is down.
func TestStoppedPassReportsNoRedisOutage(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	r := a.Relay(nil)
	out := &logbuf.Buffer{}
	r.Logger = slog.New(slog.NewTextHandler(out, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Pass(ctx); err == nil {
		t.Fatal("a pass stopped before it began: no error")
	}
	if strings.Contains(out.String(), "lease unavailable") {
		t.Fatalf("a stopped pass reported Redis down:\n%s", out)
	}
}

// confirmsAtTheDeadline publishes, then holds the confirms until just
// before its context's deadline, as a broker under load can.
type confirmsAtTheDeadline struct{ outbox.Publisher }

func (p confirmsAtTheDeadline) PublishConfirmed(ctx context.Context, envs []message.Envelope) ([]message.Envelope, error) {
	got, err := p.Publisher.PublishConfirmed(ctx, envs)
	if dl, ok := ctx.Deadline(); ok {
		time.Sleep(time.Until(dl) - 50*time.Millisecond)
	}
	return got, err
}

// slowMark is a store whose MarkPublished takes half a second.
type slowMark struct{ outbox.Store }

func (s slowMark) MarkPublished(ctx context.Context, entries []message.OutboxEntry, at time.Time) error {
	time.Sleep(500 * time.Millisecond)
	return s.Store.MarkPublished(ctx, entries, at)
}

// TestPassEndsWhileItHoldsTheLease: a pass whose confirms come late still
// records its batch before its lease expires, so that a relay that takes
// the lease next finds the batch published, and no message is published
// twice.
func TestPassEndsWhileItHoldsTheLease(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ids := accept(t, a, 5)
	slow := a.Relay(nil)
	slow.LeaseTTL, slow.MarkTimeout = 3*time.Second, time.Second
	slow.Publisher = confirmsAtTheDeadline{slow.Publisher}
	slow.Store = slowMark{slow.Store}
	next := testenv.App(t, env).Relay(nil)
	next.LeaseTTL = 3 * time.Second

	done := make(chan error, 1)
	go func() {
		// As local mode bounds a pass: by the lease.
		ctx, cancel := context.WithTimeout(context.Background(), slow.LeaseTTL)
		defer cancel()
		_, err := slow.Pass(ctx)
		done <- err
	}()
	time.Sleep(slow.LeaseTTL + 100*time.Millisecond)
	if _, err := next.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the slow pass: %v", err)
	}
	seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"]))
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("message %s published %d times, want once", id, seen[id])
		}
	}
}

// confirmsIn is a publisher whose confirms take d, and which, like the
// real one, gives up waiting for them when ctx ends.
type confirmsIn struct {
	outbox.Publisher
	d time.Duration
}

func (p confirmsIn) PublishConfirmed(ctx context.Context, envs []message.Envelope) ([]message.Envelope, error) {
	got, err := p.Publisher.PublishConfirmed(ctx, envs)
	select {
	case <-time.After(p.d):
		return got, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestSlowBatchesEndWithinThePass: a pass through a backlog whose batches
// take a while to be confirmed stops taking batches early enough for the
// last one to be confirmed before the pass's deadline, rather than fail
// with it cut short (and have it published again).
func TestSlowBatchesEndWithinThePass(t *testing.T) {
	env := testenv.Env(t, map[string]string{"BATCH_SIZE": "2"})
	a := testenv.App(t, env)
	accept(t, a, 6)
	r := a.Relay(nil)
	r.LeaseTTL, r.MarkTimeout = 8*time.Second, 2*time.Second
	r.Publisher = confirmsIn{r.Publisher, 3 * time.Second}
	s, err := r.Pass(context.Background())
	if err != nil || s.Published == 0 || s.Failed != 0 {
		t.Fatalf("pass through slow batches: %+v, %v; want batches published and none cut short", s, err)
	}
}

// rewritesBeforeConfirm is a publisher that writes each entry again under
// its key, as a replay tried again would, before the broker confirms it.
type rewritesBeforeConfirm struct {
	outbox.Publisher
	store outbox.Store
	at    time.Time
}

func (p rewritesBeforeConfirm) PublishConfirmed(ctx context.Context, envs []message.Envelope) ([]message.Envelope, error) {
	got, err := p.Publisher.PublishConfirmed(ctx, envs)
	for _, env := range envs {
		if err := p.store.ReplaceOutbox(ctx, message.NewOutboxEntry(env.ID, env.Seq, p.at, p.at)); err != nil {
			return nil, err
		}
	}
	return got, err
}

// TestEntryWrittenAgainDuringItsPublishStaysDue: a pass records as
// published only the entries it read; one written again under its key
// while the broker confirmed the earlier copy stays due, so the next pass
// publishes it instead of leaving it to the stale sweep.
func TestEntryWrittenAgainDuringItsPublishStaysDue(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ids := accept(t, a, 3)
	r := a.Relay(nil)
	now := time.Now().UTC().Add(time.Second)
	r.Now = func() time.Time { return now }
	r.Publisher = rewritesBeforeConfirm{r.Publisher, a.Store, now}
	if s, err := r.Pass(context.Background()); err != nil || s.Published != len(ids) {
		t.Fatalf("pass: %+v %v", s, err)
	}
	due, err := a.Store.DueOutbox(context.Background(), now, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != len(ids) {
		t.Fatalf("%d entries due after the pass, want the %d written again during it", len(due), len(ids))
	}
}

// replayDuringSweep runs its hook once, as the sweep writes its first
// tidy-up of an entry whose message moved on (IndexFailed, for a FAILED
// message): after the sweep has read the message without its claim.
type replayDuringSweep struct {
	outbox.Store
	hook func()
}

func (s *replayDuringSweep) IndexFailed(ctx context.Context, r message.FailedRecord) error {
	if h := s.hook; h != nil {
		s.hook = nil
		h()
	}
	return s.Store.IndexFailed(ctx, r)
}

func TestSweepKeepsTheEntryOfAReplayMadeMeanwhile(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	id := failedAt(t, a, now.Add(-time.Minute))
	// A replay that died after its first write left the entry of the next
	// dispatch (seq 1), and the relay published it long ago: stale, of a
	// message still FAILED at seq 0.
	old := now.Add(-10 * time.Minute)
	stray := message.NewOutboxEntry(id, 1, old, old)
	stray.PublishedAt = &old
	if err := a.Store.EnsureOutbox(ctx, stray); err != nil {
		t.Fatal(err)
	}
	r := a.Relay(nil)
	// The operator retries the replay after the sweep read the message.
	r.Store = &replayDuringSweep{Store: a.Store, hook: func() {
		if _, err := a.Service(nil).Retry(ctx, id); err != nil {
			t.Errorf("retry: %v", err)
		}
	}}
	if _, err := r.Pass(ctx); err != nil {
		t.Fatalf("pass: %v", err)
	}
	m, err := a.Store.GetMessage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	has, err := a.Store.HasOutboxEntry(ctx, message.OutboxKey(id, m.Seq))
	if err != nil {
		t.Fatal(err)
	}
	// The same pass may have published it since (PROCESSING).
	if m.Status.Final() || m.Seq != 1 || !has {
		t.Fatalf("after the replay: %s at seq %d, its entry there: %v; want it pending at seq 1 with its entry", m.Status, m.Seq, has)
	}
}

// hangingInbox is an inbox whose Taken answers only when ctx ends (Redis
// hanging, a slow stand-in).
type hangingInbox struct{ outbox.Inbox }

func (h hangingInbox) Taken(ctx context.Context, id string, seq int) (bool, error) {
	<-ctx.Done()
	return false, ctx.Err()
}

func TestStalledSweepEndsBeforeItsCallersDeadline(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	accept(t, a, 1)
	r := a.Relay(nil)
	r.LeaseTTL = time.Minute // as in the publisher Lambda
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 1 {
		t.Fatalf("first pass: %+v %v", s, err)
	}
	testenv.Drain(t, env["RABBITMQ_QUEUE"])
	r.Now = func() time.Time { return time.Now().Add(10 * time.Minute) } // the entry is stale
	r.Inbox = hangingInbox{r.Inbox}
	const deadline = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, _ = r.Pass(ctx) // the sweep's error: the stalled read
	// The margin is min(1s, LeaseTTL/10): the pass, the lease's release
	// included, ends that long before the deadline.
	if took := time.Since(start); took > deadline-500*time.Millisecond {
		t.Errorf("the pass ran %s of its caller's %s, leaving no time to release the lease", took, deadline)
	}
	s, err := a.Relay(nil).Pass(context.Background())
	if err != nil || s.Skipped != "" {
		t.Errorf("the next pass: %+v %v; want it to run (the lease released)", s, err)
	}
}
