package mongostore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/mongostore"
)

// uri is the embedded FerretDB that every test of this package uses, each
// with a database of its own.
var uri string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "mongostore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "mongostore tests: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	srv, err := embedded.Start(ctx, embedded.Config{
		Addr:   "127.0.0.1:0",
		Dir:    dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mongostore tests: could not start the embedded MongoDB (FerretDB):", err)
		return 1
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = srv.Close(closeCtx)
	}()
	uri = srv.URI()
	return m.Run()
}

var dbSeq atomic.Int64

// newStore opens a store on a fresh database with its indexes in place.
func newStore(tb testing.TB) *mongostore.Store {
	tb.Helper()
	ctx := context.Background()
	db := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	s, err := mongostore.Open(ctx, uri, db)
	if err != nil {
		tb.Fatalf("open store on embedded MongoDB %s: %v", uri, err)
	}
	tb.Cleanup(func() { _ = s.Close(context.Background()) })
	if err := s.EnsureIndexes(ctx); err != nil {
		tb.Fatalf("ensure indexes: %v", err)
	}
	return s
}

// t0 is a fixed clock reading with sub-millisecond digits, to catch
// comparisons that forget BSON dates keep only milliseconds.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123_456_789, time.UTC)

func newID(tb testing.TB) string {
	tb.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		tb.Fatalf("uuid: %v", err)
	}
	return id.String()
}

// newMessage returns a fresh UNSENT message created at now.
func newMessage(tb testing.TB, now time.Time) message.Message {
	tb.Helper()
	return message.New(newID(tb), message.CreateRequest{To: "+905551111111", Content: "hello"}, now)
}

// create stores m with its first outbox entry, due at now.
func create(tb testing.TB, s *mongostore.Store, m message.Message) {
	tb.Helper()
	e := message.NewOutboxEntry(m.ID, m.Seq, m.CreatedAt, m.CreatedAt)
	if err := s.CreateMessage(context.Background(), m, e); err != nil {
		tb.Fatalf("create message %s: %v", m.ID, err)
	}
}

// ms truncates t to what a BSON date keeps, in UTC.
func ms(t time.Time) time.Time { return t.Truncate(time.Millisecond).UTC() }

func msp(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := ms(*t)
	return &v
}

// norm makes a message comparable after a round trip through BSON.
func norm(m message.Message) message.Message {
	m.CreatedAt, m.UpdatedAt = ms(m.CreatedAt), ms(m.UpdatedAt)
	m.SendAt, m.NextAttemptAt, m.SentAt = msp(m.SendAt), msp(m.NextAttemptAt), msp(m.SentAt)
	var ds []message.Delivery
	for _, d := range m.Deliveries {
		d.At = ms(d.At)
		ds = append(ds, d)
	}
	m.Deliveries = ds
	return m
}

func normEntry(e message.OutboxEntry) message.OutboxEntry {
	e.DueAt, e.CreatedAt, e.PublishedAt = ms(e.DueAt), ms(e.CreatedAt), msp(e.PublishedAt)
	return e
}

func ptr[T any](v T) *T { return &v }
