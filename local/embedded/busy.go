package embedded

import (
	"database/sql"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite lets one connection write at a time. FerretDB opens up to 100
// connections per database and runs each write statement in its own
// transaction, so the API's inserts and the processor's updates contend for
// that lock all the time. A connection that finds it taken calls its busy
// handler, and SQLite's default one (busy_timeout) sleeps 1, 2, 5, 10, 15,
// 20, 25, 25, 25, 50, 50 and then 100 ms between tries, while a write here
// holds the lock for about a millisecond. Measured under `make bench`
// (strace of the mongodb process): waiting writers slept about 0.9 s of
// every second, the database was idle in between, and the API's p99 was
// 185 ms. The handler below asks for 20 µs at first, backing off to
// busyPollMax (Go's timers may wake it later: on an idle machine, after
// about a millisecond), and gives up after busyTimeout as the default did.
const (
	busyPollMin = 20 * time.Microsecond
	busyPollMax = 500 * time.Microsecond
	busyTimeout = 10 * time.Second
	// busyGap: a call this long after the previous one for a connection
	// starts a new wait. SQLite counts from 0 at each statement, but a
	// statement can wait more than once (a read lock, then the write lock).
	busyGap = 100 * time.Millisecond
)

var (
	// busyDoublings is how many waits double before they reach busyPollMax.
	busyDoublings = func() int32 {
		n := int32(0)
		for d := busyPollMin; d < busyPollMax; d <<= 1 {
			n++
		}
		return n
	}()
	// busyMaxPolls is how many waits make busyTimeout when every sleep
	// lasts what it asked for: a bound in case the clock cannot tell.
	busyMaxPolls = busyDoublings + int32(busyTimeout/busyPollMax)
)

// busyState is one connection's current wait for the lock. Only the
// goroutine using the connection calls its busy handler, and database/sql
// hands a connection from one goroutine to another under a lock.
type busyState struct {
	start, last time.Time
}

// busyStates maps each connection's sqlite3* handle to its *busyState.
// FerretDB keeps its connections open (no idle timeout, no lifetime), so
// the map holds about one entry per connection ever opened.
var busyStates sync.Map

var (
	busyHookOnce sync.Once
	// busyInstalled counts the connections given busyWait; busyWaits counts
	// its calls. Tests and Start read them.
	busyInstalled atomic.Int64
	busyWaits     atomic.Int64
)

// installBusyHandler makes every SQLite connection opened in this process
// from now on (FerretDB's and the idIndexer's) use busyWait as its busy
// handler and the hooks that count its commits (installCommitHooks, see
// group.go). modernc.org/sqlite has a hook for new connections but no API
// for either, so the hook takes the connection's handle from its unexported
// fields. Their types are checked first: if a new version of the driver
// changes them, connections keep SQLite's default handler (slower, still
// correct), Start logs a warning, refuses sync=full (it could not count
// commits), and TestBusyHandler fails.
func installBusyHandler() {
	busyHookOnce.Do(func() {
		sqlite.RegisterConnectionHook(func(c sqlite.ExecQuerierContext, _ string) error {
			db, tls, ok := connHandle(c)
			if !ok {
				return nil
			}
			busyStates.Store(db, &busyState{})
			sqlite3.Xsqlite3_busy_handler(tls, db, cFunc(busyWait), db)
			installCommitHooks(tls, db)
			busyInstalled.Add(1)
			return nil
		})
	})
}

// checkBusyHandler opens a throwaway in-memory SQLite connection and
// reports whether it was given busyWait.
func checkBusyHandler() bool {
	before := busyInstalled.Load()
	db, err := sql.Open("sqlite", "file::memory:")
	if err != nil {
		return false
	}
	defer db.Close()
	if err := db.Ping(); err != nil {
		return false
	}
	return busyInstalled.Load() > before
}

// connHandle returns the sqlite3* and the libc TLS of a modernc.org/sqlite
// connection (its fields db and tls).
func connHandle(c sqlite.ExecQuerierContext) (db uintptr, tls *libc.TLS, ok bool) {
	v := reflect.ValueOf(c)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0, nil, false
	}
	s := v.Elem()
	if s.Type().PkgPath() != "modernc.org/sqlite" || s.Type().Name() != "conn" {
		return 0, nil, false
	}
	dbf, tlsf := s.FieldByName("db"), s.FieldByName("tls")
	if !dbf.IsValid() || dbf.Kind() != reflect.Uintptr || !tlsf.IsValid() || tlsf.Type() != reflect.TypeFor[*libc.TLS]() {
		return 0, nil, false
	}
	db = *(*uintptr)(unsafe.Pointer(dbf.UnsafeAddr()))
	tls = *(**libc.TLS)(unsafe.Pointer(tlsf.UnsafeAddr()))
	if db == 0 || tls == nil {
		return 0, nil, false
	}
	return db, tls, true
}

// busyWait is the busy handler of the connection db: count is how many
// times SQLite called it since the statement began. It sleeps and returns 1
// to try again, or returns 0 to give up (SQLITE_BUSY) once this wait has
// lasted busyTimeout, or after busyMaxPolls calls.
func busyWait(_ *libc.TLS, db uintptr, count int32) int32 {
	if count >= busyMaxPolls {
		return 0
	}
	if v, ok := busyStates.Load(db); ok {
		st := v.(*busyState)
		now := time.Now()
		if count == 0 || now.Sub(st.last) > busyGap {
			st.start = now
		}
		st.last = now
		if now.Sub(st.start) >= busyTimeout {
			return 0
		}
	}
	busyWaits.Add(1)
	time.Sleep(busyDelay(count))
	return 1
}

// busyDelay is the wait before try count+1.
func busyDelay(count int32) time.Duration {
	if count >= busyDoublings {
		return busyPollMax
	}
	return busyPollMin << count
}
