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
// 185 ms. The handler below polls every 20 µs at first, backing off to
// busyPollMax, and gives up after about busyTimeout as the default did.
const (
	busyPollMin = 20 * time.Microsecond
	busyPollMax = 500 * time.Microsecond
	busyTimeout = 10 * time.Second
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
	// busyMaxPolls is how many waits make busyTimeout.
	busyMaxPolls = busyDoublings + int32(busyTimeout/busyPollMax)
)

var (
	busyHookOnce sync.Once
	// busyInstalled counts the connections given busyWait; busyWaits counts
	// its calls. Tests and Start read them.
	busyInstalled atomic.Int64
	busyWaits     atomic.Int64
)

// installBusyHandler makes every SQLite connection opened in this process
// from now on (FerretDB's and the idIndexer's) use busyWait. modernc.org/
// sqlite has a hook for new connections but no API for the busy handler,
// so the hook takes the connection's handle from its unexported fields.
// Their types are checked first: if a new version of the driver changes
// them, connections keep SQLite's default handler (slower, still correct),
// Start logs a warning and TestBusyHandler fails.
func installBusyHandler() {
	busyHookOnce.Do(func() {
		sqlite.RegisterConnectionHook(func(c sqlite.ExecQuerierContext, _ string) error {
			db, tls, ok := connHandle(c)
			if !ok {
				return nil
			}
			sqlite3.Xsqlite3_busy_handler(tls, db, busyWaitPtr(), 0)
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

// busyWaitPtr is busyWait as the C function pointer the transpiled SQLite
// calls: the code pointer of a top-level func value, the way
// modernc.org/sqlite passes its own callbacks.
func busyWaitPtr() uintptr {
	var f any = busyWait
	return (*[2]uintptr)(unsafe.Pointer(&f))[1]
}

// busyWait is the busy handler: count is how many times it was called for
// this lock. It sleeps and returns 1 to try again, or returns 0 to give up
// (SQLITE_BUSY).
func busyWait(_ *libc.TLS, _ uintptr, count int32) int32 {
	if count >= busyMaxPolls {
		return 0
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
