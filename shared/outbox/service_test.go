package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

func TestIdempotencyKey(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(nil)
	ctx := context.Background()
	req := message.CreateRequest{To: "+905551111111", Content: "hello"}

	m, replayed, err := svc.Create(ctx, req, "key-1")
	if err != nil || replayed || m.Status != message.StatusProcessing {
		t.Fatalf("first: %+v %v %v", m, replayed, err)
	}
	again, replayed, err := svc.Create(ctx, req, "key-1")
	if err != nil || !replayed || again.ID != m.ID {
		t.Fatalf("repeat: %+v %v %v", again, replayed, err)
	}
	other := req
	other.Content = "other"
	if _, _, err := svc.Create(ctx, other, "key-1"); message.ErrorCode(err) != message.EMISMATCH {
		t.Fatalf("same key, other request: %v", err)
	}

	// A first request still running: its key is stored, its message not yet.
	now := time.Now().UTC()
	running := message.IdempotencyRecord{Key: "key-2", RequestHash: "", MessageID: "0195f0a2-7b1c-7cde-8f00-000000000002", CreatedAt: now}
	// The hash must match for a repeat to count as the same request: take it
	// from a stored record of the same request.
	rec, _, err := a.Store.PutIdempotencyRecord(ctx, message.IdempotencyRecord{Key: "key-1"})
	if err != nil {
		t.Fatal(err)
	}
	running.RequestHash = rec.RequestHash
	if _, inserted, err := a.Store.PutIdempotencyRecord(ctx, running); err != nil || !inserted {
		t.Fatalf("store record: %v %v", inserted, err)
	}
	if _, _, err := svc.Create(ctx, req, "key-2"); message.ErrorCode(err) != message.EINPROGRESS {
		t.Fatalf("while the first request runs: %v", err)
	}

	// The same, but the first request died long ago: the repeat completes it
	// under the recorded ID.
	dead := running
	dead.Key = "key-3"
	dead.MessageID = "0195f0a2-7b1c-7cde-8f00-000000000003"
	dead.CreatedAt = now.Add(-time.Minute)
	if _, inserted, err := a.Store.PutIdempotencyRecord(ctx, dead); err != nil || !inserted {
		t.Fatalf("store record: %v %v", inserted, err)
	}
	done, replayed, err := svc.Create(ctx, req, "key-3")
	if err != nil || replayed || done.ID != dead.MessageID {
		t.Fatalf("completing a dead request: %+v %v %v", done, replayed, err)
	}
}

// A repeat of a scheduled request whose sendAt has passed since it was
// accepted is still a repeat (200 with the message), not a new request with
// a sendAt in the past (400); a new request with such a sendAt gets the 400
// and leaves no key behind.
func TestIdempotentRepeatAfterSendAt(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(nil)
	ctx := context.Background()
	clock := time.Now().UTC().Truncate(time.Millisecond)
	svc.Now = func() time.Time { return clock }
	at := clock.Add(time.Second)
	req := message.CreateRequest{To: "+905551111111", Content: "later", SendAt: &at}

	m, _, err := svc.Create(ctx, req, "sched-1")
	if err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(2 * time.Second)
	again, replayed, err := svc.Create(ctx, req, "sched-1")
	if err != nil || !replayed || again.ID != m.ID {
		t.Fatalf("repeat after sendAt: %+v %v %v", again, replayed, err)
	}

	if _, _, err := svc.Create(ctx, req, "sched-2"); errorField(err) != "sendAt" {
		t.Fatalf("new request with a past sendAt: %v", err)
	}
	if _, _, err := svc.Create(ctx, req, ""); errorField(err) != "sendAt" {
		t.Fatalf("same, without a key: %v", err)
	}
	// Its key was given back: the same key with a valid request is new.
	later := clock.Add(time.Minute)
	req.SendAt = &later
	m2, replayed, err := svc.Create(ctx, req, "sched-2")
	if err != nil || replayed || m2.ID == m.ID {
		t.Fatalf("key of the rejected request, reused: %+v %v %v", m2, replayed, err)
	}
}

// keyNotGivenBack is a store whose give-back of an idempotency key fails.
type keyNotGivenBack struct{ outbox.Store }

func (keyNotGivenBack) DeleteIdempotencyRecord(context.Context, string, string) error {
	return errors.New("connection reset")
}

// TestRefusedPastSendAtStaysRefused: a request refused for a past sendAt
// whose key could not be given back is refused again when repeated after
// the in-progress window, not taken for a first request that died and
// sent now.
func TestRefusedPastSendAtStaysRefused(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(nil)
	svc.Store = keyNotGivenBack{a.Store}
	ctx := context.Background()
	clock := time.Now().UTC().Truncate(time.Millisecond)
	svc.Now = func() time.Time { return clock }
	past := clock.Add(-time.Hour)
	req := message.CreateRequest{To: "+905551111111", Content: "too late", SendAt: &past}
	if _, _, err := svc.Create(ctx, req, "late-1"); errorField(err) != "sendAt" {
		t.Fatalf("first request: %v, want a sendAt error", err)
	}
	clock = clock.Add(svc.InProgressWindow + time.Second)
	if m, _, err := svc.Create(ctx, req, "late-1"); errorField(err) != "sendAt" {
		t.Fatalf("its repeat: %+v %v, want the same sendAt error", m, err)
	}
}

// errorField returns the field of the *message.Error in err's chain.
func errorField(err error) string {
	var e *message.Error
	if errors.As(err, &e) {
		return e.Field
	}
	return ""
}

// TestControlCharactersAfterTheKey: content with a control character is a
// 400 for a new request, which gives its key back; but the repeat of a
// request accepted before the rule existed still gets its message (200).
func TestControlCharactersAfterTheKey(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(nil)
	ctx := context.Background()
	req := message.CreateRequest{To: "+905551111111", Content: "a\x1b[2Jb"}

	if _, _, err := svc.Create(ctx, req, ""); errorField(err) != "content" {
		t.Fatalf("control character without a key: %v, want a content error", err)
	}
	if _, _, err := svc.Create(ctx, req, "ctl-new"); errorField(err) != "content" {
		t.Fatalf("control character with a new key: %v, want a content error", err)
	}
	// Its key was given back: the same key with a valid request is new.
	if m, replayed, err := svc.Create(ctx, message.CreateRequest{To: "+905551111111", Content: "clean"}, "ctl-new"); err != nil || replayed {
		t.Fatalf("key of the rejected request, reused: %+v %v %v", m, replayed, err)
	}

	// A message accepted, with its key, before the rule.
	now := time.Now().UTC().Truncate(time.Millisecond)
	old := message.New(uuid.Must(uuid.NewV7()).String(), req, now.Add(-time.Minute))
	if _, _, err := a.Store.PutIdempotencyRecord(ctx, message.IdempotencyRecord{Key: "ctl-old", RequestHash: outbox.RequestHash(req), MessageID: old.ID, CreatedAt: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	for _, err := range a.Store.CreateMessages(ctx, []outbox.NewMessage{{Message: old, Entry: message.NewOutboxEntry(old.ID, old.Seq, now, now)}}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, replayed, err := svc.Create(ctx, req, "ctl-old")
	if err != nil || !replayed || got.ID != old.ID {
		t.Fatalf("repeat of a message accepted before the rule: %+v %v %v; want it replayed", got, replayed, err)
	}
}

func TestCreateFastPathPublishes(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	m, _, err := a.Service(nil).Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: "now"}, "")
	if err != nil {
		t.Fatal(err)
	}
	seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"]))
	if len(seen) != 1 || seen[m.ID] != 1 {
		t.Fatalf("fast path published %v, want %s once", seen, m.ID)
	}
	// The relay does not publish it again.
	if s, err := a.Relay(nil).Pass(context.Background()); err != nil || s.Published != 0 {
		t.Fatalf("relay after fast path: %+v %v", s, err)
	}
}

// TestFastPathFailureLeavesTheMessageToTheRelay: with the broker connection
// gone the create still succeeds, and the relay publishes the message once
// the grace period is over (not the stale sweep, minutes later).
func TestFastPathFailureLeavesTheMessageToTheRelay(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	broken := testenv.App(t, env)
	if err := broken.Rabbit.Close(); err != nil {
		t.Fatal(err)
	}
	svc := a.Service(nil)
	svc.Publisher = broken.Rabbit
	m, _, err := svc.Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: "later"}, "")
	if err != nil {
		t.Fatalf("create with the broker unreachable: %v", err)
	}
	if n := len(testenv.Drain(t, env["RABBITMQ_QUEUE"])); n != 0 {
		t.Fatalf("%d copies queued through a closed connection", n)
	}
	r := a.Relay(nil)
	r.Now = func() time.Time { return time.Now().Add(time.Minute) } // past the grace period
	if s, err := r.Pass(context.Background()); err != nil || s.Published != 1 || s.Recovered != 0 {
		t.Fatalf("relay pass: %+v %v", s, err)
	}
	if seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"])); seen[m.ID] != 1 {
		t.Fatalf("relay published %v, want %s once", seen, m.ID)
	}
}

// TestConcurrentCreatesShareWrites: creates that arrive together are stored
// and published together, and each is answered with its own message.
func TestConcurrentCreatesShareWrites(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	svc := a.Service(nil)
	var mu sync.Mutex
	var accepted []int
	svc.Observe = func(event string, n int) {
		if event == "accepted" {
			mu.Lock()
			accepted = append(accepted, n)
			mu.Unlock()
		}
	}
	const n = 200
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m, _, err := svc.Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: fmt.Sprint("c", i)}, "")
			if err != nil {
				t.Errorf("create %d: %v", i, err)
				return
			}
			if m.Content != fmt.Sprint("c", i) {
				t.Errorf("create %d answered with another message: %q", i, m.Content)
			}
			ids[i] = m.ID
		})
	}
	wg.Wait()
	total := 0
	for _, k := range accepted {
		total += k
	}
	if total != n || len(accepted) >= n {
		t.Fatalf("%d accepted in %d batches: want %d in fewer batches", total, len(accepted), n)
	}
	seen := envelopes(t, testenv.Drain(t, env["RABBITMQ_QUEUE"]))
	for _, id := range ids {
		if seen[id] != 1 {
			t.Fatalf("message %s published %d times, want once", id, seen[id])
		}
		if m, err := a.Store.GetMessage(context.Background(), id); err != nil || m.Status != message.StatusProcessing {
			t.Fatalf("message %s: %+v %v", id, m, err)
		}
	}
}

// appliedButFailed stores a batch and reports it failed, as a write that
// timed out after the server applied it.
type appliedButFailed struct{ outbox.Store }

func (s appliedButFailed) CreateMessages(ctx context.Context, items []outbox.NewMessage) []error {
	errs := s.Store.CreateMessages(ctx, items)
	for i := range errs {
		if errs[i] == nil {
			errs[i] = context.DeadlineExceeded
		}
	}
	return errs
}

// TestFastPathCreateThatFailedButWasStored: a fast-path create whose write
// was applied though it failed is answered with an error, but its message
// does not wait for the stale sweep: the relay publishes it after the
// grace period, as one the broker did not confirm.
func TestFastPathCreateThatFailedButWasStored(t *testing.T) {
	env := testenv.Env(t, nil)
	a := testenv.App(t, env)
	svc := a.Service(nil)
	svc.Store = appliedButFailed{a.Store}
	if _, _, err := svc.Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: "unsure"}, ""); err == nil {
		t.Fatal("create whose write failed: no error")
	}
	if n := len(testenv.Drain(t, env["RABBITMQ_QUEUE"])); n != 0 {
		t.Fatalf("%d copies of a failed create published at once", n)
	}
	r := a.Relay(nil)
	r.Now = func() time.Time { return time.Now().Add(time.Minute) } // past the grace period, well before STALE_DURATION
	testenv.WaitFor(t, 10*time.Second, "the relay publishing the stored message", func() bool {
		s, err := r.Pass(context.Background())
		return err == nil && s.Published == 1
	})
}

// TestGateOutageIsLoggedOnce: while the publisher's state cannot be read,
// creates go on without the fast path and say so once, not once per
// request; a read that works again says so once too.
func TestGateOutageIsLoggedOnce(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	var failing atomic.Bool
	failing.Store(true)
	svc := a.Service(func(context.Context) (bool, error) {
		if failing.Load() {
			return false, errors.New("get schedule: throttled")
		}
		return true, nil
	})
	out := &logbuf.Buffer{}
	svc.Logger = slog.New(slog.NewTextHandler(out, nil))
	// createAll creates n messages and checks they took the path the gate
	// allows: the fast path (PROCESSING) or the relay's (UNSENT).
	createAll := func(n int, want message.Status) {
		t.Helper()
		for range n {
			m, _, err := svc.Create(context.Background(), message.CreateRequest{To: "+905551111111", Content: "gate"}, "")
			if err != nil {
				t.Fatal(err)
			}
			if m.Status != want {
				t.Fatalf("created %s, want %s (gate readable: %t)", m.Status, want, !failing.Load())
			}
		}
	}
	lines := func(msg string) int { return strings.Count(out.String(), msg) }

	createAll(20, message.StatusUnsent)
	if n := lines("scheduler state unknown"); n != 1 {
		t.Fatalf("%d warnings for 20 creates with the gate unreadable, want 1:\n%s", n, out)
	}
	failing.Store(false)
	createAll(3, message.StatusProcessing)
	if n := lines("scheduler state known again"); n != 1 {
		t.Fatalf("%d recovery lines, want 1:\n%s", n, out)
	}
	failing.Store(true)
	createAll(1, message.StatusUnsent)
	if n := lines("scheduler state unknown"); n != 2 {
		t.Fatalf("a second outage logged %d warnings in all, want 2", n)
	}
}

// TestExpiredKeyRepeatedAtOnceMakesOneMessage: requests that repeat an
// Idempotency-Key whose record has expired, all at once, make one message
// between them: each of the others is answered with it, or told the key
// is in use. On the embedded MongoDB two of them could each delete the
// expired record, the second the record the first had put in its place.
func TestExpiredKeyRepeatedAtOnceMakesOneMessage(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	ctx := context.Background()
	req := message.CreateRequest{To: "+905551111111", Content: "once"}
	for round := range 40 {
		key := fmt.Sprint("expired-", round)
		old := message.IdempotencyRecord{Key: key, RequestHash: outbox.RequestHash(req), MessageID: uuid.Must(uuid.NewV7()).String(), CreatedAt: time.Now().Add(-25 * time.Hour)}
		if _, _, err := a.Store.PutIdempotencyRecord(ctx, old); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		created, answered := map[string]bool{}, map[string]bool{}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 6 {
			wg.Go(func() {
				<-start
				m, replayed, err := svc.Create(ctx, req, key)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && !replayed:
					created[m.ID] = true
				case err == nil:
					answered[m.ID] = true
				case message.ErrorCode(err) != message.EINPROGRESS:
					t.Errorf("round %d: %v, want a message or the key in use", round, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(created) != 1 {
			t.Fatalf("round %d: %d messages created under one expired key, want 1", round, len(created))
		}
		for id := range answered {
			if !created[id] {
				t.Fatalf("round %d: a repeat was answered with %s, not the message created (%v)", round, id, created)
			}
		}
	}
}

// createsFail fails every CreateMessages while on; with applied set, after
// writing the batch all the same (a write whose answer was lost).
type createsFail struct {
	outbox.Store
	on      *atomic.Bool
	applied bool
	wrote   chan<- string
}

func (f createsFail) CreateMessages(ctx context.Context, items []outbox.NewMessage) []error {
	if !f.on.Load() {
		return f.Store.CreateMessages(ctx, items)
	}
	if f.applied {
		for i, err := range f.Store.CreateMessages(ctx, items) {
			if err != nil {
				return []error{err}
			}
			f.wrote <- items[i].Message.ID
		}
	}
	errs := make([]error, len(items))
	for i := range errs {
		errs[i] = errors.New("connection reset by peer")
	}
	return errs
}

// TestRepeatAfterAFailedCreate: a create with an Idempotency-Key that
// answered 503 leaves its key to the client's repeat at once, not after a
// 409 for the in-progress window: the repeat creates the message, or, if
// the failed write was applied after all, answers with that one message.
func TestRepeatAfterAFailedCreate(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprint("applied=", applied), func(t *testing.T) {
			a := testenv.App(t, testenv.Env(t, nil))
			svc := a.Service(func(context.Context) (bool, error) { return false, nil })
			on := &atomic.Bool{}
			on.Store(true)
			wrote := make(chan string, 1)
			svc.Store = createsFail{Store: a.Store, on: on, applied: applied, wrote: wrote}
			ctx := context.Background()
			req := message.CreateRequest{To: "+905551111111", Content: "after a 503"}
			if _, _, err := svc.Create(ctx, req, "key-503"); message.ErrorCode(err) != message.EUNAVAILABLE {
				t.Fatalf("create whose write failed: %v, want unavailable", err)
			}
			on.Store(false)
			m, replayed, err := svc.Create(ctx, req, "key-503")
			if err != nil || replayed != applied {
				t.Fatalf("repeat at once: replayed %v, %v; want a message, replayed %v", replayed, err, applied)
			}
			if applied {
				if id := <-wrote; m.ID != id {
					t.Fatalf("repeat answered with %s, want the message the failed write stored, %s", m.ID, id)
				}
			}
			again, replayed, err := svc.Create(ctx, req, "key-503")
			if err != nil || !replayed || again.ID != m.ID {
				t.Fatalf("second repeat: %s, replayed %v, %v; want %s replayed", again.ID, replayed, err, m.ID)
			}
		})
	}
}

// abandonHangs is a store whose writes of the key's abandonment hang until
// their context ends.
type abandonHangs struct{ outbox.Store }

func (abandonHangs) AbandonIdempotencyRecord(ctx context.Context, _, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestFailedCreateAnswersWithinItsDeadline: marking the key of a failed
// create abandoned does not hold its answer past the request's deadline,
// which in AWS is 2 s before Lambda ends the function.
func TestFailedCreateAnswersWithinItsDeadline(t *testing.T) {
	a := testenv.App(t, testenv.Env(t, nil))
	svc := a.Service(func(context.Context) (bool, error) { return false, nil })
	on := &atomic.Bool{}
	on.Store(true)
	svc.Store = abandonHangs{createsFail{Store: a.Store, on: on}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	deadline, _ := ctx.Deadline()
	_, _, err := svc.Create(ctx, message.CreateRequest{To: "+905551111111", Content: "late"}, "key-deadline")
	if message.ErrorCode(err) != message.EUNAVAILABLE {
		t.Fatalf("create whose write failed: %v, want unavailable", err)
	}
	// The abandonment's own limit is 2 s; well under it past the deadline
	// is the deadline's doing, with room for a loaded machine.
	if late := time.Since(deadline); late > time.Second {
		t.Fatalf("answered %s after the request's deadline", late)
	}
}
