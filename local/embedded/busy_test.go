package embedded

import (
	"context"
	"database/sql"
	"net/url"
	"path/filepath"
	"testing"
	"time"
)

// openWAL opens a SQLite database file of the test's own in WAL mode,
// through the driver FerretDB uses, so that its connections get the hooks.
func openWAL(t *testing.T, name string) *sql.DB {
	t.Helper()
	q := url.Values{"_pragma": {"busy_timeout(10000)", "journal_mode(wal)"}}
	dsn := (&url.URL{Scheme: "file", Path: filepath.ToSlash(filepath.Join(t.TempDir(), name)), RawQuery: q.Encode()}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestBusyHandler holds SQLite's write lock on one connection while a second
// connection writes: the second one must wait in busyWait (not in SQLite's
// default handler) and succeed once the lock is free.
func TestBusyHandler(t *testing.T) {
	installBusyHandler()
	if !checkBusyHandler() {
		t.Fatal("new SQLite connections do not get busyWait: modernc.org/sqlite's conn no longer has the fields connHandle reads (db uintptr, tls *libc.TLS)")
	}
	ctx := t.Context()
	db := openWAL(t, "busy.db")
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (n INTEGER)`); err != nil {
		t.Fatal(err)
	}

	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}

	waitsBefore := busyWaits.Load()
	written := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(context.Background(), `INSERT INTO t VALUES (2)`)
		written <- err
	}()
	// The writer must be waiting for the lock, in busyWait, before the
	// holder lets go.
	deadline := time.Now().Add(10 * time.Second)
	for busyWaits.Load() == waitsBefore {
		if time.Now().After(deadline) {
			t.Fatal("the second writer never called busyWait")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-written:
		t.Fatalf("the second writer finished while the lock was held: %v", err)
	default:
	}
	if _, err := holder.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatalf("second writer after the lock was released: %v", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows = %d, %v; want 2", n, err)
	}
}

func TestBusyDelay(t *testing.T) {
	want := []time.Duration{20 * time.Microsecond, 40 * time.Microsecond, 80 * time.Microsecond, 160 * time.Microsecond, 320 * time.Microsecond, 500 * time.Microsecond, 500 * time.Microsecond}
	var total time.Duration
	for i, w := range want {
		if got := busyDelay(int32(i)); got != w {
			t.Errorf("busyDelay(%d) = %v, want %v", i, got, w)
		}
	}
	for i := range busyMaxPolls {
		total += busyDelay(i)
	}
	if total < busyTimeout || total > busyTimeout+busyPollMax+time.Millisecond {
		t.Errorf("the waits before giving up add up to %v, want about %v", total, busyTimeout)
	}
	if got := busyWait(nil, 0, busyMaxPolls); got != 0 {
		t.Errorf("busyWait after %d polls = %d, want 0 (give up)", busyMaxPolls, got)
	}
}

// TestBusyWaitGivesUpOnTime: a connection gives up once its wait has lasted
// busyTimeout, however few polls that took (sleeps can last longer than
// asked), and a call after a gap starts a new wait.
func TestBusyWaitGivesUpOnTime(t *testing.T) {
	const db = 1 // a handle no real connection has
	st := &busyState{}
	busyStates.Store(uintptr(db), st)
	defer busyStates.Delete(uintptr(db))

	if got := busyWait(nil, db, 0); got != 1 {
		t.Fatalf("first call = %d, want 1 (wait)", got)
	}
	if st.start.IsZero() || st.last != st.start {
		t.Fatalf("the first call did not start a wait: %+v", st)
	}
	// The same wait, busyTimeout after it began.
	now := time.Now()
	st.start, st.last = now.Add(-busyTimeout), now
	if got := busyWait(nil, db, 7); got != 0 {
		t.Errorf("call %v into the wait = %d, want 0 (give up)", busyTimeout, got)
	}
	// A later wait of the same statement: the previous call was long ago.
	st.start, st.last = now.Add(-time.Hour), now.Add(-time.Minute)
	if got := busyWait(nil, db, 7); got != 1 {
		t.Errorf("first call of a new wait with count 7 = %d, want 1 (wait)", got)
	}
}
