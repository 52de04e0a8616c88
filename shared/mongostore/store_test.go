package mongostore_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/mongostore"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
)

// farFuture is later than every time the tests store.
var farFuture = t0.Add(100 * 365 * 24 * time.Hour)

// allOutbox returns every outbox entry, pending and published, by key.
func allOutbox(t *testing.T, s *mongostore.Store) map[string]message.OutboxEntry {
	t.Helper()
	ctx := t.Context()
	due, err := s.DueOutbox(ctx, farFuture, 10_000)
	if err != nil {
		t.Fatalf("due outbox: %v", err)
	}
	stale, err := s.StaleOutbox(ctx, farFuture, 10_000)
	if err != nil {
		t.Fatalf("stale outbox: %v", err)
	}
	all := map[string]message.OutboxEntry{}
	for _, e := range append(due, stale...) {
		all[e.Key] = normEntry(e)
	}
	return all
}

func mustGet(t *testing.T, s *mongostore.Store, id string) message.Message {
	t.Helper()
	m, err := s.GetMessage(t.Context(), id)
	if err != nil {
		t.Fatalf("get message %s: %v", id, err)
	}
	return norm(m)
}

func TestOpenAndPing(t *testing.T) {
	s := newStore(t)
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	// EnsureIndexes ran once in newStore; a second run must be a no-op even
	// though FerretDB refuses the TTL index.
	if err := s.EnsureIndexes(t.Context()); err != nil {
		t.Fatalf("ensure indexes again: %v", err)
	}
}

// rawDatabase is a fresh database of the embedded MongoDB, through a
// client of the test's own, for what the store's API does not show.
func rawDatabase(t *testing.T, prefix string) *mongo.Database {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database(fmt.Sprintf("%s%d", prefix, dbSeq.Add(1)))
}

// TestEnsureIndexesCoverTheScans: the relay's due entries are read in the
// order of an index (publishedAt, dueAt, _id), the failures for a replay in
// failedAt order, and the index the first replaced is dropped.
func TestEnsureIndexesCoverTheScans(t *testing.T) {
	ctx := t.Context()
	db := rawDatabase(t, "ix")
	if _, err := db.Collection("outbox").Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "publishedAt", Value: 1}, {Key: "dueAt", Value: 1}},
		Options: options.Index().SetName("publishedAt_1_dueAt_1"),
	}); err != nil {
		t.Fatalf("the index of an earlier version: %v", err)
	}
	s, err := mongostore.Open(ctx, uri, db.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for range 2 {
		if err := s.EnsureIndexes(ctx); err != nil {
			t.Fatalf("ensure indexes: %v", err)
		}
	}
	for coll, want := range map[string][]string{
		"outbox":          {`{"_id": {"$numberInt":"1"}}`, `{"publishedAt": {"$numberInt":"1"},"dueAt": {"$numberInt":"1"},"_id": {"$numberInt":"1"}}`},
		"outbox_inflight": {`{"_id": {"$numberInt":"1"}}`, `{"publishedAt": {"$numberInt":"1"}}`},
		"failed":          {`{"_id": {"$numberInt":"1"}}`, `{"failedAt": {"$numberInt":"1"}}`},
	} {
		specs, err := db.Collection(coll).Indexes().ListSpecifications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, sp := range specs {
			got = append(got, sp.KeysDocument.String())
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("indexes of %s: %v, want %v", coll, got, want)
		}
	}
}

// TestGuardsArePurgedLongAfterTheyExpire: every guard written while Redis
// is down (a claim, a done marker, a lease) carries the time a real
// MongoDB's TTL index deletes it, two days after it expires: an expired
// claim is read as a taken marker for up to twice STALE_DURATION.
func TestGuardsArePurgedLongAfterTheyExpire(t *testing.T) {
	ctx := t.Context()
	db := rawDatabase(t, "guards")
	s, err := mongostore.Open(ctx, uri, db.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if ok, _, _, err := s.ClaimInbox(ctx, "m1", "tok", 0, time.Minute); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if err := s.CompleteInbox(ctx, "m2", "wh", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.AcquireLease(ctx, "relay", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	for _, id := range []string{"inbox:m1", "inbox:m2", "lease:relay"} {
		var doc struct {
			ExpiresAt time.Time `bson:"expiresAt"`
			PurgeAt   time.Time `bson:"purgeAt"`
		}
		if err := db.Collection("guards").FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
			t.Fatalf("guard %s: %v", id, err)
		}
		if d := doc.PurgeAt.Sub(doc.ExpiresAt); d != 48*time.Hour {
			t.Errorf("guard %s is purged %v after it expires, want 48h", id, d)
		}
	}
}

func TestOpenErrorsHidePassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Port 1 refuses connections; the short selection timeout keeps it quick.
	_, err := mongostore.Open(ctx, "mongodb://alice:s3cretPw@127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300", "db")
	if err == nil {
		t.Fatal("Open on a closed port succeeded")
	}
	if strings.Contains(err.Error(), "s3cretPw") {
		t.Errorf("error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), "ping") || errors.Is(err, mongostore.ErrRefused) {
		t.Errorf("error does not say what failed, or calls it a refusal: %v", err)
	}

	if _, err := mongostore.Open(ctx, uri, ""); err == nil {
		t.Error("Open with an empty database name succeeded")
	}
	_, err = mongostore.Open(ctx, "mongodb://bob:pa55word@127.0.0.1:1/?connectTimeoutMS=notanumber", "db")
	if err == nil || strings.Contains(err.Error(), "pa55word") || !errors.Is(err, mongostore.ErrBadURI) {
		t.Errorf("Open with a bad URI: err = %v, want ErrBadURI without the password", err)
	}
	// A server that refuses the credentials (the embedded one refuses every
	// mechanism but PLAIN) is told apart from one that cannot be reached,
	// and the password stays out of the error.
	refusedURI, perr := url.Parse(uri)
	if perr != nil {
		t.Fatal(perr)
	}
	refusedURI.User = url.UserPassword("rms", "Wr0ngPass")
	if _, err := mongostore.Open(ctx, refusedURI.String(), "db"); !errors.Is(err, mongostore.ErrRefused) || strings.Contains(err.Error(), "Wr0ngPass") {
		t.Errorf("Open with credentials the server refuses: err = %v, want ErrRefused without the password", err)
	}
	// An SRV name that does not resolve is no bad URI: the lookup may
	// succeed next time.
	if _, err := mongostore.Open(ctx, "mongodb+srv://cluster0.rms-test.invalid/", "db"); err == nil || errors.Is(err, mongostore.ErrBadURI) {
		t.Errorf("Open with an SRV name that does not resolve: err = %v, want an error that is not ErrBadURI", err)
	}

	// Generated passwords hold characters that should have been
	// percent-encoded; no part of them may show either way.
	for _, bad := range []string{
		"mongodb://rms:S3cr/etPass@127.0.0.1:1/?serverSelectionTimeoutMS=300",
		"mongodb://rms:S3cr?etPass@127.0.0.1:1",
		"mongodb://rms:S3cr#etPass@127.0.0.1:1/",
	} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := mongostore.Open(ctx, bad, "db")
		cancel()
		if err == nil || strings.Contains(err.Error(), "S3cr") || strings.Contains(err.Error(), "etPass") {
			t.Errorf("Open(%s): err = %v, want an error without any part of the password", bad, err)
		}
	}
}

func TestCreateAndGetMessage(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()

	m := message.New(newID(t), message.CreateRequest{To: "+905551111111", Content: "héllo", SendAt: ptr(t0.Add(time.Hour))}, t0)
	e := message.NewOutboxEntry(m.ID, 0, *m.NextAttemptAt, t0)
	if err := s.CreateMessage(ctx, m, e); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := mustGet(t, s, m.ID); !reflect.DeepEqual(got, norm(m)) {
		t.Errorf("get:\n got %+v\nwant %+v", got, norm(m))
	}
	if got := allOutbox(t, s)[e.Key]; got != normEntry(e) {
		t.Errorf("outbox entry = %+v, want %+v", got, normEntry(e))
	}

	// The same ID again is a conflict, and the stored message is unchanged.
	dup := m
	dup.Content = "other"
	err := s.CreateMessage(ctx, dup, e)
	if message.ErrorCode(err) != message.ECONFLICT {
		t.Errorf("duplicate create: err = %v, want code %s", err, message.ECONFLICT)
	}
	if got := mustGet(t, s, m.ID); got.Content != m.Content {
		t.Errorf("duplicate create changed content to %q", got.Content)
	}

	// A message whose outbox entry exists already (a crash after the entry
	// was written) is created without complaint.
	m2 := newMessage(t, t0)
	e2 := message.NewOutboxEntry(m2.ID, 0, t0, t0)
	if err := s.EnsureOutbox(ctx, e2); err != nil {
		t.Fatalf("ensure outbox: %v", err)
	}
	if err := s.CreateMessage(ctx, m2, e2); err != nil {
		t.Fatalf("create with existing entry: %v", err)
	}
	mustGet(t, s, m2.ID)

	_, err = s.GetMessage(ctx, newID(t))
	if message.ErrorCode(err) != message.ENOTFOUND || !errors.Is(err, message.ErrNotFound) {
		t.Errorf("get unknown: err = %v, want message.ErrNotFound", err)
	}
}

func TestCreateMessageConcurrently(t *testing.T) {
	s := newStore(t)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	ids := make(chan string, 40)
	for range 8 {
		wg.Go(func() {
			for range 5 {
				m := newMessage(t, t0)
				e := message.NewOutboxEntry(m.ID, 0, t0, t0)
				if err := s.CreateMessage(t.Context(), m, e); err != nil {
					errs <- err
					return
				}
				ids <- m.ID
			}
		})
	}
	wg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Errorf("create: %v", err)
	}
	n := 0
	for id := range ids {
		mustGet(t, s, id)
		n++
	}
	if n != 40 {
		t.Errorf("created %d messages, want 40", n)
	}
}

func TestCreateMessagesBatch(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	existing := newMessage(t, t0)
	create(t, s, existing)
	withEntry := newMessage(t, t0)
	if err := s.EnsureOutbox(ctx, message.NewOutboxEntry(withEntry.ID, 0, t0, t0)); err != nil {
		t.Fatal(err)
	}

	var items []outbox.NewMessage
	for i := range 60 {
		m := newMessage(t, t0)
		switch i {
		case 10:
			m = existing // a conflict
		case 20:
			m = withEntry // its entry is there already: fine
		}
		items = append(items, outbox.NewMessage{Message: m, Entry: message.NewOutboxEntry(m.ID, 0, t0, t0)})
	}
	errs := s.CreateMessages(ctx, items)
	if len(errs) != len(items) {
		t.Fatalf("%d results for %d items", len(errs), len(items))
	}
	entries := allOutbox(t, s)
	for i, err := range errs {
		id := items[i].Message.ID
		if i == 10 {
			if message.ErrorCode(err) != message.ECONFLICT {
				t.Errorf("item %d (existing id): err = %v, want %s", i, err, message.ECONFLICT)
			}
			continue
		}
		if err != nil {
			t.Errorf("item %d: %v", i, err)
			continue
		}
		mustGet(t, s, id)
		if _, ok := entries[message.OutboxKey(id, 0)]; !ok {
			t.Errorf("item %d: no outbox entry", i)
		}
	}
}

func TestListMessages(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()

	// 120 messages, every third SENT, each with a delivery log that lists
	// must leave out.
	var all, sent []string
	for i := range 120 {
		m := newMessage(t, t0.Add(time.Duration(i)*time.Millisecond))
		if i%3 == 0 {
			m.Status = message.StatusSent
			sent = append(sent, m.ID)
		}
		m.Deliveries = []message.Delivery{{At: t0, Attempt: 1, Outcome: message.OutcomeDelivered}}
		create(t, s, m)
		all = append(all, m.ID)
	}
	// Newest first is descending ID order.
	slices.Sort(all)
	slices.Reverse(all)
	slices.Sort(sent)
	slices.Reverse(sent)

	tests := []struct {
		name      string
		status    message.Status
		limit     int
		want      []string
		firstPage int
	}{
		{name: "all by 50", limit: 50, want: all, firstPage: 50},
		{name: "all by 7", limit: 7, want: all, firstPage: 7},
		{name: "all default limit", limit: 0, want: all, firstPage: mongostore.DefaultListLimit},
		{name: "all in one page", limit: 500, want: all, firstPage: 120},
		{name: "exactly one page", limit: 120, want: all, firstPage: 120},
		{name: "sent by 7", status: message.StatusSent, limit: 7, want: sent, firstPage: 7},
		{name: "sent by 40", status: message.StatusSent, limit: 40, want: sent, firstPage: 40},
		{name: "failed: none", status: message.StatusFailed, limit: 10, want: nil, firstPage: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			cursor := ""
			for page := 0; ; page++ {
				if page > 200 {
					t.Fatal("pagination does not end")
				}
				p, err := s.ListMessages(ctx, message.Filter{Status: tc.status, Limit: tc.limit, Cursor: cursor})
				if err != nil {
					t.Fatalf("list: %v", err)
				}
				if page == 0 && len(p.Items) != tc.firstPage {
					t.Errorf("first page has %d items, want %d", len(p.Items), tc.firstPage)
				}
				for _, m := range p.Items {
					if m.Deliveries != nil {
						t.Fatalf("list item %s has deliveries", m.ID)
					}
					if tc.status != "" && m.Status != tc.status {
						t.Fatalf("list item %s has status %s", m.ID, m.Status)
					}
					got = append(got, m.ID)
				}
				if p.NextCursor == "" {
					break
				}
				if p.NextCursor != p.Items[len(p.Items)-1].ID {
					t.Fatalf("next cursor %s is not the last item's ID", p.NextCursor)
				}
				cursor = p.NextCursor
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("pages joined give %d IDs, want %d in newest-first order without gaps or duplicates", len(got), len(tc.want))
			}
		})
	}
}

func TestIdempotencyRecords(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()

	first := message.IdempotencyRecord{Key: "key-1", RequestHash: "h1", MessageID: newID(t), CreatedAt: t0}
	tests := []struct {
		name         string
		put          message.IdempotencyRecord
		wantInserted bool
		want         message.IdempotencyRecord
	}{
		{"new key", first, true, first},
		{"same key, other request", message.IdempotencyRecord{Key: "key-1", RequestHash: "h2", MessageID: "x", CreatedAt: t0.Add(time.Second)}, false, first},
		{"same request again", first, false, first},
		{"other key", message.IdempotencyRecord{Key: "key-2", RequestHash: "h1", MessageID: "y", CreatedAt: t0}, true, message.IdempotencyRecord{Key: "key-2", RequestHash: "h1", MessageID: "y", CreatedAt: t0}},
	}
	for _, tc := range tests {
		got, inserted, err := s.PutIdempotencyRecord(ctx, tc.put)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got.CreatedAt = ms(got.CreatedAt)
		tc.want.CreatedAt = ms(tc.want.CreatedAt)
		if inserted != tc.wantInserted || got != tc.want {
			t.Errorf("%s: got %+v inserted=%v, want %+v inserted=%v", tc.name, got, inserted, tc.want, tc.wantInserted)
		}
	}

	// A delete of a record that names another message (one a concurrent
	// request put in place of the expired one) leaves it.
	if err := s.DeleteIdempotencyRecord(ctx, "key-1", "not-"+first.MessageID); err != nil {
		t.Fatalf("delete of another record: %v", err)
	}
	if _, inserted, err := s.PutIdempotencyRecord(ctx, first); err != nil {
		t.Fatalf("put after the delete of another record: %v", err)
	} else if inserted {
		t.Fatal("a delete naming another message removed the record")
	}
	// After a delete the key is free again; deleting a missing key is fine.
	if err := s.DeleteIdempotencyRecord(ctx, "key-1", first.MessageID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.DeleteIdempotencyRecord(ctx, "key-1", first.MessageID); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
	again := message.IdempotencyRecord{Key: "key-1", RequestHash: "h3", MessageID: "z", CreatedAt: t0}
	if _, inserted, err := s.PutIdempotencyRecord(ctx, again); err != nil || !inserted {
		t.Fatalf("put after delete: inserted=%v err=%v", inserted, err)
	}

	// On the embedded MongoDB an expired record is taken over through a
	// marker: one left by a caller that died before its delete stops the
	// key for takeoverStale (30 s) at most.
	if s.Ferret() {
		stuck := message.IdempotencyRecord{Key: "key-stuck", RequestHash: "h", MessageID: newID(t), CreatedAt: t0}
		if _, _, err := s.PutIdempotencyRecord(ctx, stuck); err != nil {
			t.Fatal(err)
		}
		marker := "idempotency-expired:" + stuck.MessageID + ":" + stuck.Key
		for _, tc := range []struct {
			age  time.Duration
			want error
		}{{time.Second, message.ErrKeyInUse}, {time.Minute, nil}} {
			if _, err := s.GuardsCollection().ReplaceOne(ctx, bson.D{{Key: "_id", Value: marker}}, bson.D{{Key: "at", Value: time.Now().UTC().Add(-tc.age)}}, options.Replace().SetUpsert(true)); err != nil {
				t.Fatal(err)
			}
			if err := s.ExpireIdempotencyRecord(ctx, stuck.Key, stuck.MessageID); !errors.Is(err, tc.want) {
				t.Fatalf("delete with a takeover marker %s old: %v, want %v", tc.age, err, tc.want)
			}
		}
		if _, inserted, err := s.PutIdempotencyRecord(ctx, stuck); err != nil || !inserted {
			t.Fatalf("put after the delete past a stale marker: inserted=%v err=%v", inserted, err)
		}
	}

	// Concurrent puts of one key: exactly one wins, all see its record.
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners, hashes := 0, map[string]bool{}
	for i := range 8 {
		wg.Go(func() {
			r := message.IdempotencyRecord{Key: "race", RequestHash: string(rune('a' + i)), MessageID: "m", CreatedAt: t0}
			got, inserted, err := s.PutIdempotencyRecord(ctx, r)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("concurrent put: %v", err)
				return
			}
			if inserted {
				winners++
			}
			hashes[got.RequestHash] = true
		})
	}
	wg.Wait()
	if winners != 1 || len(hashes) != 1 {
		t.Errorf("concurrent puts: %d winners, %d distinct records seen; want 1 and 1", winners, len(hashes))
	}
}

func TestOutbox(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()

	entries := []message.OutboxEntry{
		message.NewOutboxEntry("a", 0, t0.Add(3*time.Second), t0),
		message.NewOutboxEntry("b", 0, t0.Add(1*time.Second), t0),
		message.NewOutboxEntry("c", 2, t0.Add(2*time.Second), t0),
		message.NewOutboxEntry("d", 0, t0.Add(time.Hour), t0), // not due
	}
	for _, e := range entries {
		if err := s.EnsureOutbox(ctx, e); err != nil {
			t.Fatalf("ensure outbox: %v", err)
		}
	}
	// EnsureOutbox of an existing key keeps the stored entry.
	moved := entries[0]
	moved.DueAt = t0
	if err := s.EnsureOutbox(ctx, moved); err != nil {
		t.Fatalf("ensure existing: %v", err)
	}

	keys := func(es []message.OutboxEntry) []string {
		var ks []string
		for _, e := range es {
			ks = append(ks, e.Key)
		}
		return ks
	}
	now := t0.Add(10 * time.Second)
	dueTests := []struct {
		now   time.Time
		limit int
		want  []string
	}{
		{now, 10, []string{"b:0", "c:2", "a:0"}},
		{now, 2, []string{"b:0", "c:2"}},
		{now, 0, nil},
		{t0.Add(2 * time.Second), 10, []string{"b:0", "c:2"}}, // due exactly now counts
		{t0, 10, nil},
	}
	for _, tc := range dueTests {
		got, err := s.DueOutbox(ctx, tc.now, tc.limit)
		if err != nil {
			t.Fatalf("due outbox: %v", err)
		}
		if !slices.Equal(keys(got), tc.want) {
			t.Errorf("DueOutbox(%v, %d) = %v, want %v", tc.now.Sub(t0), tc.limit, keys(got), tc.want)
		}
	}
	due, _ := s.DueOutbox(ctx, now, 1)
	if len(due) != 1 || normEntry(due[0]) != normEntry(entries[1]) {
		t.Errorf("due entry = %+v, want %+v", due, normEntry(entries[1]))
	}

	// Publish b then c later; a missing key is no error.
	missing := message.NewOutboxEntry("missing", 0, t0, t0)
	if err := s.MarkPublished(ctx, []message.OutboxEntry{entries[1], missing}, t0.Add(20*time.Second)); err != nil {
		t.Fatalf("mark published: %v", err)
	}
	if err := s.MarkPublished(ctx, entries[2:3], t0.Add(30*time.Second)); err != nil {
		t.Fatalf("mark published: %v", err)
	}
	// Marking again with the same time changes nothing.
	if err := s.MarkPublished(ctx, entries[1:2], t0.Add(20*time.Second)); err != nil {
		t.Fatalf("mark published again: %v", err)
	}
	if err := s.MarkPublished(ctx, nil, t0); err != nil {
		t.Fatalf("mark published of nothing: %v", err)
	}
	if got, _ := s.DueOutbox(ctx, now, 10); !slices.Equal(keys(got), []string{"a:0"}) {
		t.Errorf("due after publish = %v, want [a:0]", keys(got))
	}

	staleTests := []struct {
		before time.Time
		limit  int
		want   []string
	}{
		{t0.Add(time.Minute), 10, []string{"b:0", "c:2"}},
		{t0.Add(time.Minute), 1, []string{"b:0"}},
		{t0.Add(20 * time.Second), 10, []string{"b:0"}},
		{t0.Add(19 * time.Second), 10, nil},
		{t0.Add(time.Minute), 0, nil},
	}
	for _, tc := range staleTests {
		got, err := s.StaleOutbox(ctx, tc.before, tc.limit)
		if err != nil {
			t.Fatalf("stale outbox: %v", err)
		}
		if !slices.Equal(keys(got), tc.want) {
			t.Errorf("StaleOutbox(%v, %d) = %v, want %v", tc.before.Sub(t0), tc.limit, keys(got), tc.want)
		}
	}
	stale, _ := s.StaleOutbox(ctx, t0.Add(time.Minute), 1)
	if len(stale) != 1 || stale[0].PublishedAt == nil || !stale[0].PublishedAt.Equal(ms(t0.Add(20*time.Second))) {
		t.Errorf("stale entry = %+v, want publishedAt t0+20s", stale)
	}

	if err := s.DeleteOutbox(ctx, "b:0"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.DeleteOutbox(ctx, "b:0"); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
	got := allOutbox(t, s)
	if _, ok := got["b:0"]; ok || len(got) != 3 {
		t.Errorf("after delete the outbox holds %v", got)
	}
}

func TestMarkProcessing(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()

	waiting := message.New(newID(t), message.CreateRequest{To: "+905551111111", Content: "x", SendAt: ptr(t0.Add(time.Minute))}, t0)
	movedOn := newMessage(t, t0) // at seq 3: the entry below is for seq 2
	movedOn.Seq = 3
	done := newMessage(t, t0) // already SENT at the entry's seq
	done.Status = message.StatusSent
	for _, m := range []message.Message{waiting, movedOn, done} {
		create(t, s, m)
	}
	at := t0.Add(2 * time.Minute)
	unknown := newID(t)
	missing, err := s.MarkProcessing(ctx, []message.OutboxEntry{
		message.NewOutboxEntry(waiting.ID, 0, t0, t0),
		message.NewOutboxEntry(movedOn.ID, 2, t0, t0),
		message.NewOutboxEntry(done.ID, 0, t0, t0),
		message.NewOutboxEntry(unknown, 0, t0, t0),
	}, at)
	if err != nil {
		t.Fatalf("mark processing: %v", err)
	}
	if !reflect.DeepEqual(missing, []string{unknown}) {
		t.Errorf("missing %v, want [%s]", missing, unknown)
	}
	want := norm(waiting)
	want.Status, want.UpdatedAt, want.NextAttemptAt = message.StatusProcessing, ms(at), nil
	if got := mustGet(t, s, waiting.ID); !reflect.DeepEqual(got, want) {
		t.Errorf("marked message:\n got %+v\nwant %+v", got, want)
	}
	for _, m := range []message.Message{movedOn, done} {
		if got := mustGet(t, s, m.ID); !reflect.DeepEqual(got, norm(m)) {
			t.Errorf("message that should be left alone changed:\n got %+v\nwant %+v", got, norm(m))
		}
	}
	if _, err := s.MarkProcessing(ctx, nil, at); err != nil {
		t.Errorf("mark processing of nothing: %v", err)
	}
}

// processing stores a message that the publisher has handed out at seq.
func processing(t *testing.T, s *mongostore.Store, seq int) message.Message {
	t.Helper()
	m := newMessage(t, t0)
	m.Status, m.Seq, m.Attempts, m.NextAttemptAt = message.StatusProcessing, seq, seq, nil
	e := message.NewOutboxEntry(m.ID, seq, t0, t0)
	if err := s.CreateMessage(t.Context(), m, e); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := s.MarkPublished(t.Context(), []message.OutboxEntry{e}, t0); err != nil {
		t.Fatalf("mark published: %v", err)
	}
	return m
}

// TestRecordOutcomesBatch: one batch mixing every kind of outcome, with
// and without the message as read under the claim, gives each its own
// result and leaves each message and outbox as RecordOutcome would.
func TestRecordOutcomesBatch(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	at := t0.Add(time.Second)
	next := at.Add(time.Minute)
	var outcomes []message.Outcome
	var want []error
	kinds := []message.Status{message.StatusSent, message.StatusUnsent, message.StatusFailed}
	for i := range 60 {
		m := processing(t, s, 1)
		o := message.Outcome{MessageID: m.ID, Seq: 1, Status: kinds[i%3], Attempts: 2, At: at,
			Delivery: &message.Delivery{At: at, Attempt: 2, Outcome: message.OutcomeDelivered}}
		if i%2 == 0 {
			o.Read = &m
		}
		switch o.Status {
		case message.StatusUnsent:
			o.NextAttemptAt = &next
		case message.StatusFailed:
			o.FailureReason = "gave up"
		}
		var err error
		switch i {
		case 7:
			o.Seq = 0 // an older dispatch
			err = message.ErrStaleOutcome
		case 9:
			o.MessageID = newID(t) // unknown
			o.Read = nil
			err = message.ErrNotFound
		}
		outcomes = append(outcomes, o)
		want = append(want, err)
	}
	errs := s.RecordOutcomes(ctx, outcomes)
	entries := allOutbox(t, s)
	for i, o := range outcomes {
		if !errors.Is(errs[i], want[i]) || (want[i] == nil) != (errs[i] == nil) {
			t.Errorf("outcome %d: err = %v, want %v", i, errs[i], want[i])
			continue
		}
		if want[i] != nil {
			continue
		}
		m := mustGet(t, s, o.MessageID)
		if m.Status != o.Status || m.Attempts != 2 || len(m.Deliveries) != 1 {
			t.Errorf("outcome %d: message %+v", i, m)
		}
		if _, ok := entries[message.OutboxKey(o.MessageID, 1)]; ok {
			t.Errorf("outcome %d: finished entry left in the outbox", i)
		}
		_, hasNext := entries[message.OutboxKey(o.MessageID, 2)]
		if hasNext != (o.Status == message.StatusUnsent) || (o.Status == message.StatusUnsent && m.Seq != 2) {
			t.Errorf("outcome %d (%s): next entry %v, seq %d", i, o.Status, hasNext, m.Seq)
		}
	}
	if n, err := s.CountFailed(ctx); err != nil || n != 20 {
		t.Errorf("failed index counts %d (%v), want 20", n, err)
	}
}

// TestRecordOutcomesClosesEntriesWhereverTheyAre: a batch whose finished
// entries are in flight (the fast path's) in one chunk, and in flight and
// pending mixed in the next, leaves no entry in either collection.
func TestRecordOutcomesClosesEntriesWhereverTheyAre(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	at := t0.Add(time.Second)
	var outcomes []message.Outcome
	for i := range 40 {
		var m message.Message
		if i < 25 || i%2 == 0 {
			m = newMessage(t, t0)
			m.Status = message.StatusProcessing
			e := message.NewOutboxEntry(m.ID, 0, t0.Add(10*time.Second), t0)
			e.PublishedAt, e.FastPath = ptr(t0), true
			if err := s.CreateMessage(ctx, m, e); err != nil {
				t.Fatal(err)
			}
		} else {
			m = processing(t, s, 0)
		}
		outcomes = append(outcomes, message.Outcome{MessageID: m.ID, Seq: 0, Status: message.StatusSent, Attempts: 1, At: at, Read: &m,
			Delivery: &message.Delivery{At: at, Attempt: 1, Outcome: message.OutcomeDelivered}})
	}
	if n := len(allOutbox(t, s)); n != 40 {
		t.Fatalf("entries before: %d, want 40", n)
	}
	for i, err := range s.RecordOutcomes(ctx, outcomes) {
		if err != nil {
			t.Errorf("outcome %d: %v", i, err)
		}
	}
	if left := allOutbox(t, s); len(left) != 0 {
		t.Errorf("%d finished entries left: %v", len(left), left)
	}
}

// TestRecordOutcomesSameMessageTwice: the claim holder's SENT and another
// consumer's deferral of a redelivered copy in one batch. The second is
// checked against the first's result, so SENT is not undone.
func TestRecordOutcomesSameMessageTwice(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	m := processing(t, s, 0)
	at := t0.Add(time.Second)
	next := at.Add(time.Minute)
	sent := message.Outcome{MessageID: m.ID, Seq: 0, Status: message.StatusSent, Attempts: 1, At: at, Read: &m,
		Delivery: &message.Delivery{At: at, Attempt: 1, Outcome: message.OutcomeDelivered}}
	deferred := message.Outcome{MessageID: m.ID, Seq: 0, Status: message.StatusUnsent, Attempts: 0, At: at, NextAttemptAt: &next,
		Delivery: &message.Delivery{At: at, Outcome: message.OutcomeDeferred}}
	errs := s.RecordOutcomes(ctx, []message.Outcome{sent, deferred})
	if errs[0] != nil || !errors.Is(errs[1], message.ErrStaleOutcome) {
		t.Fatalf("results %v, want nil and a stale outcome", errs)
	}
	got := mustGet(t, s, m.ID)
	if got.Status != message.StatusSent || got.Seq != 0 || len(got.Deliveries) != 1 {
		t.Fatalf("message after both: %+v", got)
	}
	if n := len(allOutbox(t, s)); n != 0 {
		t.Fatalf("%d outbox entries left, want 0", n)
	}
}

// TestMarkUnpublished: fast-path entries whose publish was not confirmed
// become due for the relay, and leave the in-flight entries.
func TestMarkUnpublished(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	m := newMessage(t, t0)
	m.Status = message.StatusProcessing
	e := message.NewOutboxEntry(m.ID, 0, t0.Add(10*time.Second), t0)
	e.PublishedAt, e.FastPath = ptr(t0), true
	if err := s.CreateMessage(ctx, m, e); err != nil {
		t.Fatal(err)
	}
	if stale, err := s.StaleOutbox(ctx, farFuture, 10); err != nil || len(stale) != 1 || stale[0].Key != e.Key {
		t.Fatalf("in flight before: %+v %v", stale, err)
	}
	if ok, err := s.HasOutboxEntry(ctx, e.Key); err != nil || !ok {
		t.Fatalf("has entry: %v %v", ok, err)
	}
	if err := s.MarkUnpublished(ctx, []message.OutboxEntry{e}); err != nil {
		t.Fatal(err)
	}
	if stale, err := s.StaleOutbox(ctx, farFuture, 10); err != nil || len(stale) != 0 {
		t.Fatalf("in flight after: %+v %v", stale, err)
	}
	due, err := s.DueOutbox(ctx, t0.Add(time.Minute), 10)
	if err != nil || len(due) != 1 || due[0].Key != e.Key || due[0].PublishedAt != nil {
		t.Fatalf("due after: %+v %v", due, err)
	}
	if due, err := s.DueOutbox(ctx, t0, 10); err != nil {
		t.Fatalf("due before its grace ended: %v", err)
	} else if len(due) != 0 {
		t.Fatalf("due before its grace ended: %+v", due)
	}
	if err := s.DeleteOutbox(ctx, e.Key); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.HasOutboxEntry(ctx, e.Key); err != nil || ok {
		t.Fatalf("has entry after delete: %v %v", ok, err)
	}
}

func TestRecordOutcome(t *testing.T) {
	at := t0.Add(5 * time.Second)
	next := at.Add(30 * time.Second)
	delivery := &message.Delivery{At: at, Attempt: 2, Outcome: message.OutcomeRetry, StatusCode: 503, Error: "503", DurationMS: 12}
	tests := []struct {
		name  string
		o     message.Outcome
		apply func(m *message.Message) // the expected change
	}{
		{
			name: "sent",
			o:    message.Outcome{Status: message.StatusSent, Attempts: 2, At: at, WebhookMessageID: "wh-1", Delivery: &message.Delivery{At: at, Attempt: 2, Outcome: message.OutcomeDelivered, StatusCode: 202, DurationMS: 7}},
			apply: func(m *message.Message) {
				m.Status, m.Attempts, m.UpdatedAt, m.SentAt, m.WebhookMessageID = message.StatusSent, 2, at, &at, "wh-1"
				m.Deliveries = []message.Delivery{{At: at, Attempt: 2, Outcome: message.OutcomeDelivered, StatusCode: 202, DurationMS: 7}}
			},
		},
		{
			name: "failed",
			o:    message.Outcome{Status: message.StatusFailed, Attempts: 2, At: at, LastError: "400 Bad Request", FailureReason: "non-retryable status 400"},
			apply: func(m *message.Message) {
				m.Status, m.Attempts, m.UpdatedAt, m.LastError, m.FailureReason = message.StatusFailed, 2, at, "400 Bad Request", "non-retryable status 400"
			},
		},
		{
			name: "unsent for a retry",
			o:    message.Outcome{Status: message.StatusUnsent, Attempts: 2, At: at, NextAttemptAt: &next, LastError: "503", Delivery: delivery},
			apply: func(m *message.Message) {
				m.Status, m.Attempts, m.UpdatedAt, m.NextAttemptAt, m.LastError = message.StatusUnsent, 2, at, &next, "503"
				m.Seq++
				m.Deliveries = []message.Delivery{*delivery}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			ctx := t.Context()
			const seq = 1
			m := processing(t, s, seq)
			o := tc.o
			o.MessageID, o.Seq = m.ID, seq
			if err := s.RecordOutcome(ctx, o); err != nil {
				t.Fatalf("record outcome: %v", err)
			}
			want := m
			tc.apply(&want)
			if got := mustGet(t, s, m.ID); !reflect.DeepEqual(got, norm(want)) {
				t.Errorf("message:\n got %+v\nwant %+v", got, norm(want))
			}
			outbox := allOutbox(t, s)
			if _, ok := outbox[message.OutboxKey(m.ID, seq)]; ok {
				t.Errorf("entry of the finished dispatch %d is still there", seq)
			}
			nextKey := message.OutboxKey(m.ID, seq+1)
			e, ok := outbox[nextKey]
			if o.Status == message.StatusUnsent {
				want := normEntry(message.NewOutboxEntry(m.ID, seq+1, next, at))
				if !ok || e != want {
					t.Errorf("next entry = %+v (present %v), want %+v", e, ok, want)
				}
				due, _ := s.DueOutbox(ctx, next, 10)
				if len(due) != 1 || due[0].Key != nextKey {
					t.Errorf("next entry is not due at %v: %+v", next, due)
				}
			} else if ok || len(outbox) != 0 {
				t.Errorf("outbox after a final outcome holds %v", outbox)
			}

			// The same outcome again is stale for UNSENT (the seq moved on)
			// and a harmless repeat for a final status.
			err := s.RecordOutcome(ctx, o)
			if o.Status == message.StatusUnsent && !errors.Is(err, message.ErrStaleOutcome) {
				t.Errorf("repeat of an UNSENT outcome: err = %v, want ErrStaleOutcome", err)
			}
			if o.Status != message.StatusUnsent && err != nil {
				t.Errorf("repeat of a final outcome: %v", err)
			}
		})
	}
}

func TestRecordOutcomeRefused(t *testing.T) {
	at := t0.Add(5 * time.Second)
	next := at.Add(time.Minute)
	tests := []struct {
		name    string
		status  message.Status // the stored message's status
		seq     int            // the stored message's seq
		o       message.Outcome
		unknown bool
		wantErr error
	}{
		{name: "older seq", status: message.StatusProcessing, seq: 2,
			o: message.Outcome{Seq: 1, Status: message.StatusSent, Attempts: 3, At: at, Delivery: &message.Delivery{At: at, Outcome: message.OutcomeDelivered}}, wantErr: message.ErrStaleOutcome},
		{name: "newer seq", status: message.StatusProcessing, seq: 2,
			o: message.Outcome{Seq: 3, Status: message.StatusUnsent, At: at, NextAttemptAt: &next}, wantErr: message.ErrStaleOutcome},
		{name: "retry after sent", status: message.StatusSent, seq: 2,
			o: message.Outcome{Seq: 2, Status: message.StatusUnsent, At: at, NextAttemptAt: &next}, wantErr: message.ErrStaleOutcome},
		{name: "failed after sent", status: message.StatusSent, seq: 2,
			o: message.Outcome{Seq: 2, Status: message.StatusFailed, At: at}, wantErr: message.ErrStaleOutcome},
		{name: "sent after failed", status: message.StatusFailed, seq: 2,
			o: message.Outcome{Seq: 2, Status: message.StatusSent, At: at}, wantErr: message.ErrStaleOutcome},
		{name: "retry after failed (only a replay revives)", status: message.StatusFailed, seq: 2,
			o: message.Outcome{Seq: 2, Status: message.StatusUnsent, At: at, NextAttemptAt: &next}, wantErr: message.ErrStaleOutcome},
		{name: "unknown message", unknown: true,
			o: message.Outcome{Seq: 0, Status: message.StatusSent, At: at}, wantErr: message.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			m := newMessage(t, t0)
			m.Status, m.Seq = tc.status, tc.seq
			o := tc.o
			o.MessageID = m.ID
			if !tc.unknown {
				create(t, s, m)
				// An entry for the outcome's seq, which must survive.
				if err := s.EnsureOutbox(t.Context(), message.NewOutboxEntry(m.ID, o.Seq, t0, t0)); err != nil {
					t.Fatal(err)
				}
			}
			before := allOutbox(t, s)
			err := s.RecordOutcome(t.Context(), o)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !tc.unknown {
				if got := mustGet(t, s, m.ID); !reflect.DeepEqual(got, norm(m)) {
					t.Errorf("refused outcome changed the message:\n got %+v\nwant %+v", got, norm(m))
				}
			}
			if after := allOutbox(t, s); !reflect.DeepEqual(after, before) {
				t.Errorf("refused outcome changed the outbox:\n got %v\nwant %v", after, before)
			}
		})
	}
}

func TestRecordOutcomeInvalid(t *testing.T) {
	s := newStore(t)
	m := processing(t, s, 0)
	for _, o := range []message.Outcome{
		{MessageID: m.ID, Status: message.StatusUnsent, At: t0}, // no NextAttemptAt
		{MessageID: m.ID, Status: message.StatusProcessing, At: t0},
		{MessageID: m.ID, Status: "", At: t0},
	} {
		if err := s.RecordOutcome(t.Context(), o); err == nil {
			t.Errorf("RecordOutcome(%+v) succeeded", o)
		}
	}
	if got := mustGet(t, s, m.ID); !reflect.DeepEqual(got, norm(m)) {
		t.Errorf("invalid outcome changed the message: %+v", got)
	}
}

func TestDeliveriesCapped(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	m := processing(t, s, 0)
	const n = message.MaxDeliveries + 5
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Second)
		o := message.Outcome{MessageID: m.ID, Seq: i, Status: message.StatusUnsent, Attempts: i + 1, At: at, NextAttemptAt: &at,
			Delivery: &message.Delivery{At: at, Attempt: i + 1, Outcome: message.OutcomeRetry, StatusCode: 500}}
		if err := s.RecordOutcome(ctx, o); err != nil {
			t.Fatalf("outcome %d: %v", i, err)
		}
	}
	got := mustGet(t, s, m.ID)
	if got.Seq != n {
		t.Errorf("seq = %d, want %d", got.Seq, n)
	}
	if len(got.Deliveries) != message.MaxDeliveries {
		t.Fatalf("delivery log has %d entries, want %d", len(got.Deliveries), message.MaxDeliveries)
	}
	for i, d := range got.Deliveries {
		if want := n - message.MaxDeliveries + i + 1; d.Attempt != want {
			t.Errorf("delivery %d is attempt %d, want %d (the latest, oldest first)", i, d.Attempt, want)
		}
	}
	if outbox := allOutbox(t, s); len(outbox) != 1 {
		t.Errorf("outbox holds %d entries, want only the latest dispatch: %v", len(outbox), outbox)
	}
}

func TestSchedulerState(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	st, at, err := s.SchedulerState(ctx, message.SchedulerStarted)
	if err != nil || st != message.SchedulerStarted || !at.IsZero() {
		t.Fatalf("state before any set = %q, %v, %v; want the default and zero time", st, at, err)
	}
	for i, want := range []message.SchedulerState{message.SchedulerStopped, message.SchedulerStarted, message.SchedulerStopped} {
		when := t0.Add(time.Duration(i) * time.Minute)
		if err := s.SetSchedulerState(ctx, want, when); err != nil {
			t.Fatalf("set: %v", err)
		}
		st, at, err := s.SchedulerState(ctx, message.SchedulerStarted)
		if err != nil || st != want || !at.Equal(ms(when)) {
			t.Errorf("state = %q at %v (%v), want %q at %v", st, at, err, want, ms(when))
		}
	}
}

func BenchmarkCreateMessage(b *testing.B) {
	s := newStore(b)
	for b.Loop() {
		m := newMessage(b, t0)
		if err := s.CreateMessage(b.Context(), m, message.NewOutboxEntry(m.ID, 0, t0, t0)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMarkPublishedLeavesAnEntryWrittenAgain: an entry written again under
// its key while the relay waited for the broker's confirm (a replay tried
// again, an Idempotency-Key taken over) stays due, for the relay to
// publish; it does not wait for the stale sweep. Both forms: the embedded
// store's read then write, and a real MongoDB's condition in the filter.
func TestMarkPublishedLeavesAnEntryWrittenAgain(t *testing.T) {
	for _, form := range []string{"embedded", "mongodb"} {
		t.Run(form, func(t *testing.T) {
			s, ctx := newStore(t), t.Context()
			s.SetMongoDBForms(form == "mongodb")
			read := message.NewOutboxEntry("m", 0, t0, t0)
			if err := s.EnsureOutbox(ctx, read); err != nil {
				t.Fatal(err)
			}
			again := message.NewOutboxEntry("m", 0, t0, t0.Add(time.Second))
			if err := s.ReplaceOutbox(ctx, again); err != nil {
				t.Fatal(err)
			}
			if err := s.MarkPublished(ctx, []message.OutboxEntry{read}, t0.Add(2*time.Second)); err != nil {
				t.Fatalf("mark the entry as read: %v", err)
			}
			due, err := s.DueOutbox(ctx, t0.Add(time.Minute), 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(due) != 1 || !due[0].CreatedAt.Equal(again.CreatedAt.Truncate(time.Millisecond)) {
				t.Fatalf("due after marking the entry as read = %+v, want the entry written again", due)
			}
			// The entry as it is now (sub-millisecond digits and all) is marked.
			if err := s.MarkPublished(ctx, []message.OutboxEntry{again}, t0.Add(2*time.Second)); err != nil {
				t.Fatalf("mark the entry written again: %v", err)
			}
			if due, err := s.DueOutbox(ctx, t0.Add(time.Minute), 10); err != nil || len(due) != 0 {
				t.Fatalf("due after marking the entry written again = %+v (%v), want none", due, err)
			}
		})
	}
}

// TestMarkLargeBatches: FerretDB stops answering a single command of 100
// update statements; the store splits large batches.
func TestMarkLargeBatches(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	var entries []message.OutboxEntry
	for i := range 250 {
		id := fmt.Sprintf("0195f0a2-7b1c-7cde-8f00-%012d", i)
		e := message.NewOutboxEntry(id, 0, now, now)
		if err := s.CreateMessage(ctx, message.New(id, message.CreateRequest{To: "+905551111111", Content: "x"}, now), e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.MarkProcessing(ctx, entries, now); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkPublished(ctx, entries, now); err != nil {
		t.Fatal(err)
	}
	due, err := s.DueOutbox(ctx, now.Add(time.Hour), 500)
	if err != nil || len(due) != 0 {
		t.Fatalf("%d entries still due after MarkPublished: %v", len(due), err)
	}
}

// TestDurableInboxTakenMarker: the MongoDB stand-in for the Redis inbox
// keeps a claim's dispatch after the claim expires, so the stale sweep can
// tell a dispatch a processor took from one none did; a done marker is no
// claim.
func TestDurableInboxTakenMarker(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if taken, err := s.TakenInbox(ctx, "m1", 0); err != nil || taken {
		t.Fatalf("TakenInbox before any claim = %v, %v; want false", taken, err)
	}
	if ok, _, _, err := s.ClaimInbox(ctx, "m1", "tok", 2, time.Millisecond); err != nil || !ok {
		t.Fatalf("ClaimInbox = %v, %v", ok, err)
	}
	time.Sleep(5 * time.Millisecond)
	for seq, want := range map[int]bool{1: true, 2: true, 3: false} {
		if taken, err := s.TakenInbox(ctx, "m1", seq); err != nil || taken != want {
			t.Errorf("TakenInbox(m1, %d) = %v, %v; want %v", seq, taken, err, want)
		}
	}
	if err := s.CompleteInbox(ctx, "m1", "wh-1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if taken, err := s.TakenInbox(ctx, "m1", 2); err != nil || taken {
		t.Errorf("TakenInbox after CompleteInbox = %v, %v; want false (the sweep sees it done)", taken, err)
	}

	// Only the claim's own token releases it.
	if ok, _, _, err := s.ClaimInbox(ctx, "m2", "tok", 0, time.Minute); err != nil || !ok {
		t.Fatalf("ClaimInbox m2 = %v, %v", ok, err)
	}
	if err := s.ReleaseInbox(ctx, "m2", "other"); err != nil {
		t.Fatal(err)
	}
	if st, _, _, err := s.InboxHolder(ctx, "m2"); err != nil || st != outbox.InboxInProgress {
		t.Fatalf("after a release by another token: %v, %v; want the claim kept", st, err)
	}
	if err := s.ReleaseInbox(ctx, "m2", "tok"); err != nil {
		t.Fatal(err)
	}
	if st, _, _, err := s.InboxHolder(ctx, "m2"); err != nil || st != outbox.InboxNone {
		t.Fatalf("after the holder's release: %v, %v; want none", st, err)
	}
}

// TestIndexFailedLeavesNoEntryForAMessageNoLongerFailed: the failed index
// is written after the FAILED status, and a replay may move the message on
// in between (finding no entry to drop). The entry written then is dropped
// at once, so that no stale failure is counted; a FAILED message's stays.
func TestIndexFailedLeavesNoEntryForAMessageNoLongerFailed(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	failed := newMessage(t, t0)
	failed.Status, failed.FailureReason = message.StatusFailed, "permanent failure"
	create(t, s, failed)
	replayed := newMessage(t, t0) // UNSENT again, as a replay leaves it
	create(t, s, replayed)
	for _, m := range []message.Message{failed, replayed} {
		if err := s.IndexFailed(ctx, m.FailedRecord()); err != nil {
			t.Fatalf("index %s: %v", m.Status, err)
		}
	}
	if err := s.IndexFailed(ctx, message.FailedRecord{MessageID: newID(t), FailedAt: t0}); err != nil {
		t.Fatalf("index an unknown message: %v", err)
	}
	recs, err := s.ListFailed(ctx, nil, 10)
	if err != nil || len(recs) != 1 || recs[0].MessageID != failed.ID {
		t.Fatalf("failed index holds %+v (%v), want the FAILED message alone", recs, err)
	}

}

// TestIndexFailedDropsOnlyItsOwnEntry: an IndexFailed that finds its
// message moved on drops the entry it wrote, and not the entry of a later
// failure of the same message indexed meanwhile.
func TestIndexFailedDropsOnlyItsOwnEntry(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	m := newMessage(t, t0) // UNSENT: replayed since its first failure
	create(t, s, m)
	later := message.FailedRecord{MessageID: m.ID, FailedAt: t0.Add(time.Minute), Reason: "failed again"}
	defer mongostore.SetBeforeUnindex(func() {
		// The message failed again and was indexed for it, between the
		// late call's read and its removal.
		if _, err := s.FailedCollection().ReplaceOne(ctx, bson.D{{Key: "_id", Value: m.ID}}, later); err != nil {
			t.Error(err)
		}
	})()
	if err := s.IndexFailed(ctx, message.FailedRecord{MessageID: m.ID, FailedAt: t0, Reason: "first failure"}); err != nil {
		t.Fatal(err)
	}
	recs, err := s.ListFailed(ctx, nil, 10)
	if err != nil || len(recs) != 1 || recs[0].Reason != later.Reason {
		t.Fatalf("failed index holds %+v (%v), want the later failure's entry", recs, err)
	}
}

// TestIndexFailedKeepsTheLaterFailure: a late call for a failure that a
// replay and a second failure have overtaken (the second indexed first)
// leaves the index holding the message's failure as it stands, so that
// ListFailed's since and a bulk replay by since see it.
func TestIndexFailedKeepsTheLaterFailure(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	m := newMessage(t, t0)
	m.Status, m.FailureReason, m.UpdatedAt = message.StatusFailed, "failed again", t0.Add(time.Minute)
	create(t, s, m)
	if err := s.IndexFailed(ctx, m.FailedRecord()); err != nil {
		t.Fatal(err)
	}
	if err := s.IndexFailed(ctx, message.FailedRecord{MessageID: m.ID, FailedAt: t0, Reason: "first failure"}); err != nil {
		t.Fatal(err)
	}
	since := t0.Add(30 * time.Second)
	recs, err := s.ListFailed(ctx, &since, 10)
	if err != nil || len(recs) != 1 || recs[0].Reason != "failed again" || !recs[0].FailedAt.Equal(m.UpdatedAt.Truncate(time.Millisecond)) {
		t.Fatalf("failed index since the second failure holds %+v (%v), want the second failure", recs, err)
	}
}

// TestReplayClaims: one replay of a failure at a time. A replay that
// failed gives way at once; one that was made stands for good, so that a
// request that read the message before it, however long ago, cannot make
// it again; one whose caller died gives way after 30 s. Claims are purged
// by a real MongoDB two days on.
func TestReplayClaims(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	id := newID(t)
	age := func(seq int, by time.Duration) {
		t.Helper()
		filter := bson.D{{Key: "_id", Value: fmt.Sprintf("replay:%s:%d", id, seq)}}
		if _, err := s.GuardsCollection().UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{{Key: "at", Value: time.Now().UTC().Add(-by)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(seq int, want error) func(context.Context, bool) error {
		t.Helper()
		settle, err := s.ClaimReplay(ctx, id, seq)
		if !errors.Is(err, want) {
			t.Fatalf("claim of the replay of dispatch %d: %v, want %v", seq, err, want)
		}
		return settle
	}

	settle := claim(0, nil)
	claim(0, message.ErrReplayed)
	claim(1, nil) // another failure's replay is another claim
	if err := settle(ctx, false); err != nil {
		t.Fatal(err)
	}
	settle = claim(0, nil) // a replay that failed gave way
	var marker struct {
		PurgeAt time.Time `bson:"purgeAt"`
	}
	if err := s.GuardsCollection().FindOne(ctx, bson.D{{Key: "_id", Value: "replay:" + id + ":0"}}).Decode(&marker); err != nil {
		t.Fatal(err)
	}
	if until := time.Until(marker.PurgeAt); until < 47*time.Hour || until > 49*time.Hour {
		t.Fatalf("the claim is purged in %s, want two days", until)
	}
	if err := settle(ctx, true); err != nil {
		t.Fatal(err)
	}
	age(0, time.Hour)
	claim(0, message.ErrReplayed) // made: it stands

	claim(2, nil) // its caller dies: it gives way 30 s on
	claim(2, message.ErrReplayed)
	age(2, time.Minute)
	claim(2, nil)

	// Giving back the key of a rejected request leaves no marker.
	before, err := s.GuardsCollection().CountDocuments(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	r := message.IdempotencyRecord{Key: "rejected", RequestHash: "h", MessageID: newID(t), CreatedAt: time.Now().UTC()}
	if _, _, err := s.PutIdempotencyRecord(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteIdempotencyRecord(ctx, r.Key, r.MessageID); err != nil {
		t.Fatal(err)
	}
	if after, err := s.GuardsCollection().CountDocuments(ctx, bson.D{}); err != nil || after != before {
		t.Fatalf("guards after giving back a key: %d (%v), want %d", after, err, before)
	}
}

// ageGuards moves every guard and takeover document's time by back.
func ageGuards(t *testing.T, s *mongostore.Store, back time.Duration) {
	t.Helper()
	update := bson.D{{Key: "$set", Value: bson.D{{Key: "at", Value: time.Now().UTC().Add(-back)}}}}
	if _, err := s.GuardsCollection().UpdateMany(t.Context(), bson.D{}, update); err != nil {
		t.Fatal(err)
	}
}

// TestTakeoversHaveOneWinner: callers that find the same inbox claim
// expired, or the same replay marker stale, at the same moment: one of them
// takes it over, in both forms. A read, a check and a write let several
// through: on FerretDB for the guards (so two processors held one claim
// while Redis was down), and on any MongoDB for the markers (so two
// replays of one failure ran).
func TestTakeoversHaveOneWinner(t *testing.T) {
	for _, mongoForms := range []bool{false, true} {
		t.Run(fmt.Sprintf("mongodb forms %v", mongoForms), func(t *testing.T) {
			s, ctx := newStore(t), t.Context()
			s.SetMongoDBForms(mongoForms)
			race := func(what string, take func(i int) bool) {
				t.Helper()
				var wins atomic.Int32
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i := range 8 {
					wg.Go(func() {
						<-start
						if take(i) {
							wins.Add(1)
						}
					})
				}
				close(start)
				wg.Wait()
				if n := wins.Load(); n != 1 {
					t.Fatalf("%s: %d winners, want 1", what, n)
				}
			}
			for round := range 5 {
				id := newID(t)
				if ok, _, _, err := s.ClaimInbox(ctx, id, "dead", 0, time.Millisecond); err != nil || !ok {
					t.Fatalf("first claim: %v %v", ok, err)
				}
				time.Sleep(3 * time.Millisecond)
				race(fmt.Sprint("expired inbox claim, round ", round), func(i int) bool {
					ok, _, _, err := s.ClaimInbox(ctx, id, fmt.Sprint("tok", i), 0, time.Minute)
					return err == nil && ok
				})
			}
			for round := range 3 {
				id := newID(t)
				if _, err := s.ClaimReplay(ctx, id, 0); err != nil {
					t.Fatal(err)
				}
				ageGuards(t, s, time.Minute)
				race(fmt.Sprint("stale replay marker, round ", round), func(int) bool {
					_, err := s.ClaimReplay(ctx, id, 0)
					return err == nil
				})
			}
		})
	}
}

// TestATakeoverWhoseWinnerDiedGivesWay: the winner of a takeover may die
// before it finishes; its takeover document stands for takeoverStale, then
// the next caller may take the same generation over, once.
func TestATakeoverWhoseWinnerDiedGivesWay(t *testing.T) {
	s, ctx := newStore(t), t.Context()
	want := func(what string, won bool) {
		t.Helper()
		if got, err := s.WinTakeover(ctx, "inbox:m", "gen"); err != nil || got != won {
			t.Fatalf("%s: won %v (%v), want %v", what, got, err, won)
		}
	}
	want("first", true)
	want("while the winner works", false)
	ageGuards(t, s, 10*time.Second)
	want("10 s on", false)
	ageGuards(t, s, time.Minute)
	want("once the winner's document is stale", true)
	want("after the second winner", false)
	if got, err := s.WinTakeover(ctx, "inbox:m", "next-gen"); err != nil || !got {
		t.Fatalf("another generation: won %v (%v), want true", got, err)
	}
}

// TestALateTakeoverLeavesASettledMarker: a caller that read a stale replay
// marker and stalled past the takeover's own 30 s, while another took the
// marker over and made the replay (its marker done), wins the next
// takeover but not the replay: it does not replace the settled marker.
func TestALateTakeoverLeavesASettledMarker(t *testing.T) {
	for _, mongoForms := range []bool{false, true} {
		t.Run(fmt.Sprintf("mongodb forms %v", mongoForms), func(t *testing.T) {
			s, ctx := newStore(t), t.Context()
			s.SetMongoDBForms(mongoForms)
			id := newID(t)
			if _, err := s.ClaimReplay(ctx, id, 0); err != nil {
				t.Fatal(err)
			}
			ageGuards(t, s, time.Minute) // its caller died
			once := true
			defer mongostore.SetBeforeTakeover(func() {
				if !once {
					return
				}
				once = false
				// Meanwhile another caller takes it over and replays...
				settle, err := s.ClaimReplay(ctx, id, 0)
				if err != nil {
					t.Errorf("the other caller's takeover: %v", err)
					return
				}
				if err := settle(ctx, true); err != nil {
					t.Error(err)
				}
				// ...and the stalled caller wakes up past 30 s.
				ageGuards(t, s, time.Minute)
			})()
			if _, err := s.ClaimReplay(ctx, id, 0); !errors.Is(err, message.ErrReplayed) {
				t.Fatalf("the late caller: %v, want ErrReplayed", err)
			}
		})
	}
}

// TestStandInUseRecordedByManyAtOnce: processes that fall back to the
// stand-in at the same moment each record it in use; two upserts at once
// can both insert, and the one that then finds a duplicate key replaces
// instead of failing (a failure here failed the claim it was for).
func TestStandInUseRecordedByManyAtOnce(t *testing.T) {
	for round := range 5 {
		s, ctx := newStore(t), t.Context()
		until := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		start := make(chan struct{})
		for i := range errs {
			wg.Go(func() {
				<-start
				errs[i] = s.SetStandInUsed(ctx, until)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, caller %d: %v", round, i, err)
			}
		}
		if got, err := s.StandInUsedUntil(ctx); err != nil || !got.Equal(until) {
			t.Fatalf("round %d: recorded until %s (%v), want %s", round, got, err, until)
		}
	}
}

// TestRepeatedDeferralMergesIntoTheLastEntry: a deferral that repeats the
// log's last entry (MergeRepeat) replaces it, counted, in both forms; one
// that does not (another reason), or whose log changed since it was read,
// is appended.
func TestRepeatedDeferralMergesIntoTheLastEntry(t *testing.T) {
	for _, form := range []string{"embedded", "mongodb"} {
		t.Run(form, func(t *testing.T) {
			s, ctx := newStore(t), t.Context()
			s.SetMongoDBForms(form == "mongodb")
			m := message.New(newID(t), message.CreateRequest{To: "+905551111111", Content: "x"}, t0)
			if err := s.CreateMessage(ctx, m, message.NewOutboxEntry(m.ID, 0, t0, t0)); err != nil {
				t.Fatal(err)
			}
			at := t0.Truncate(time.Millisecond)
			deferral := func(why string, read bool) {
				t.Helper()
				cur := mustGet(t, s, m.ID)
				at = at.Add(time.Minute)
				o := message.Outcome{
					MessageID: m.ID, Seq: cur.Seq, Status: message.StatusUnsent, At: at, NextAttemptAt: &at,
					Delivery:    &message.Delivery{At: at, Outcome: message.OutcomeDeferred, Error: why},
					MergeRepeat: true,
				}
				if read {
					o.Read = &cur
				}
				if err := s.RecordOutcome(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			deferral("circuit breaker open", true)
			deferral("circuit breaker open", true)
			deferral("circuit breaker open", true)
			deferral("rate limited", true)
			deferral("rate limited", true)
			want := []message.Delivery{
				{At: t0.Truncate(time.Millisecond).Add(3 * time.Minute), Outcome: message.OutcomeDeferred, Error: "circuit breaker open", Times: 3},
				{At: t0.Truncate(time.Millisecond).Add(5 * time.Minute), Outcome: message.OutcomeDeferred, Error: "rate limited", Times: 2},
			}
			if got := mustGet(t, s, m.ID).Deliveries; !reflect.DeepEqual(got, want) {
				t.Fatalf("log:\n got %+v\nwant %+v", got, want)
			}
			// Without the message as read, a real MongoDB has no last
			// entry to check: appended. The embedded store reads it.
			deferral("rate limited", false)
			got := mustGet(t, s, m.ID).Deliveries
			if form == "mongodb" && (len(got) != 3 || got[2].Times != 0) || form == "embedded" && (len(got) != 2 || got[1].Times != 3) {
				t.Fatalf("log after a deferral without its read: %+v", got)
			}
		})
	}
}
