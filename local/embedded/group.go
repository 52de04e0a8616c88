package embedded

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// Group commit for sync=full.
//
// SQLite runs with synchronous=normal: a commit writes its frames to the WAL
// file without an fsync, which keeps it safe from a crash of the process
// but not from a power loss. Durability comes from the proxy in front of
// FerretDB instead: it hands an answer to the client only once every commit
// made before that answer is on disk. FerretDB answers a write after its
// commit, so no client ever sees a write acknowledged, or reads data, that a
// power loss could take back: the promise of synchronous=full. One fsync
// covers all the commits of all the clients waiting, and it happens outside
// SQLite's write lock, so writers no longer queue behind each other's
// fsyncs (make bench, runs interleaved: +27% end to end; the API's own
// answers take longer, each waiting for a round).
//
// Commits are tracked by three hooks on every connection. SQLite calls the
// commit hook before a commit writes its frames, and the WAL hook after the
// statement that committed has finished, by which time other connections
// may already read what it wrote. So a commit counts as in flight from the
// one to the other (or to the rollback hook, if it fails), and an answer
// given while any commit is in flight waits for an fsync that starts after
// it: that fsync covers every frame written before the answer. Frames that
// a checkpoint has moved into the database file are safe too: with
// synchronous=normal SQLite fsyncs the WAL before a checkpoint and the
// database file after it, and the WAL header when it starts reusing the file.

// commits counts the transactions the SQLite connections of this process
// have committed; inflight counts those between the commit hook and the
// WAL (or rollback) hook.
var (
	commits  atomic.Uint64
	inflight atomic.Int64
	// walEnded counts the commits the WAL hook found in flight, for tests:
	// a commit that wrote frames must still be in flight there, never
	// ended early by statementEnded (that would let an answer out before
	// the fsync that covers it).
	walEnded atomic.Uint64
)

// commitState is one connection's commit in progress. Only the goroutine
// using the connection runs its hooks.
type commitState struct {
	committing bool
	// written is the connection's count of pages written (to the WAL, in
	// WAL mode) as its commit began.
	written int32
}

// commitStates maps a connection's sqlite3* handle to its *commitState.
var commitStates sync.Map

// dbFiles holds the path of every database file a connection of this
// process has opened: their WAL files are what groupSync fsyncs. dbFilesAdded
// counts the paths added, so that a round knows when to sync the directory.
var (
	dbFiles      sync.Map // string -> struct{}
	dbFilesAdded atomic.Uint64
)

// installCommitHooks gives the connection db the hooks that track its
// commits, and registers its database file. In-memory databases (no file,
// no WAL, so no WAL hook would end their commits) get no commit hooks.
func installCommitHooks(tls *libc.TLS, db uintptr) {
	sqlite3.Xsqlite3_wal_hook(tls, db, cFunc(walCommitted), db)
	file := dbFilename(tls, db)
	if file == "" {
		return
	}
	if _, loaded := dbFiles.LoadOrStore(file, struct{}{}); !loaded {
		dbFilesAdded.Add(1)
	}
	commitStates.Store(db, &commitState{})
	sqlite3.Xsqlite3_commit_hook(tls, db, cFunc(commitStarted), db)
	sqlite3.Xsqlite3_rollback_hook(tls, db, cFunc(commitRolledBack), db)
	sqlite3.Xsqlite3_trace_v2(tls, db, sqlite3.SQLITE_TRACE_PROFILE, cFunc(statementEnded), db)
}

// dbFilename is the path of the connection's main database file, or "" for
// an in-memory database.
func dbFilename(tls *libc.TLS, db uintptr) string {
	main, err := libc.CString("main")
	if err != nil {
		return ""
	}
	defer libc.Xfree(tls, main)
	return libc.GoString(sqlite3.Xsqlite3_db_filename(tls, db, main))
}

// cFunc returns a Go function as the C function pointer the transpiled
// SQLite calls: the code pointer of a top-level func value, the way
// modernc.org/sqlite passes its own callbacks.
func cFunc(f any) uintptr { return (*[2]uintptr)(unsafe.Pointer(&f))[1] }

// commitStarted is the commit hook: 0 lets the commit go on.
func commitStarted(tls *libc.TLS, db uintptr) int32 {
	if v, ok := commitStates.Load(db); ok {
		if st := v.(*commitState); !st.committing {
			st.committing = true
			st.written = pagesWritten(tls, db)
			inflight.Add(1)
		}
	}
	return 0
}

// statementEnded is the profile trace callback, which SQLite runs as a
// statement ends, before the WAL hook of a commit the statement made. A
// commit that wrote no page (a write transaction that changed nothing: a
// DELETE or UPDATE of rows another connection had just deleted, which
// FerretDB runs when two clients race for one document) gets no WAL hook.
// It ends here instead: left in flight, it would make every answer wait for
// an fsync round until the connection's next commit, perhaps forever.
func statementEnded(tls *libc.TLS, _ uint32, db uintptr, _ uintptr, _ uintptr) int32 {
	if v, ok := commitStates.Load(db); ok {
		if st := v.(*commitState); st.committing && pagesWritten(tls, db) == st.written {
			_ = commitEnded(db)
		}
	}
	return 0
}

// pagesWritten is the connection's count of pages written to disk (to the
// WAL, in WAL mode), SQLITE_DBSTATUS_CACHE_WRITE.
func pagesWritten(tls *libc.TLS, db uintptr) int32 {
	p := tls.Alloc(8)
	defer tls.Free(8)
	sqlite3.Xsqlite3_db_status(tls, db, sqlite3.SQLITE_DBSTATUS_CACHE_WRITE, p, p+4, 0)
	return int32(binary.NativeEndian.Uint32(libc.GoBytes(p, 4)))
}

// commitEnded ends the connection's commit in flight, if any, and says
// whether there was one.
func commitEnded(db uintptr) bool {
	if v, ok := commitStates.Load(db); ok {
		if st := v.(*commitState); st.committing {
			st.committing = false
			inflight.Add(-1)
			return true
		}
	}
	return false
}

// commitRolledBack is the rollback hook.
func commitRolledBack(_ *libc.TLS, db uintptr) { _ = commitEnded(db) }

// walAutocheckpoint is SQLite's default wal_autocheckpoint. A WAL hook
// replaces the one that checkpoints, so walCommitted checkpoints as it did.
const walAutocheckpoint = 1000

// walCommitted is the WAL hook of every connection: nFrame is the number of
// frames in the WAL of database zDb after this commit. The count goes up
// before the commit leaves the in-flight ones, so that an answer that sees
// no commit in flight sees this one counted.
func walCommitted(tls *libc.TLS, _ uintptr, db uintptr, zDb uintptr, nFrame int32) int32 {
	commits.Add(1)
	if commitEnded(db) {
		walEnded.Add(1)
	}
	if nFrame >= walAutocheckpoint {
		if rc := sqlite3.Xsqlite3_wal_checkpoint(tls, db, zDb); rc&0xff == sqlite3.SQLITE_IOERR {
			checkpointFailed(filepath.Dir(dbFilename(tls, db)), rc)
		}
	}
	return sqlite3.SQLITE_OK
}

// checkpointErrs holds, per data directory, the first I/O error of a
// checkpoint of one of its databases. A checkpoint fsyncs the WAL and the
// database file through SQLite's own handles, and Linux reports a failed
// write-back once to the handles that were open when it failed: groupSync's
// may not hear of it. So an I/O error here makes the directory's server
// fail as a failed fsync of its own would (see groupSync.failed).
var checkpointErrs sync.Map // dir string -> error

func checkpointFailed(dir string, rc int32) {
	checkpointErrs.LoadOrStore(dir, fmt.Errorf("sqlite checkpoint: I/O error (extended code %d)", rc))
}

// fsyncFile flushes an open file's data to disk, as SQLite itself does
// (fdatasync: the data and the size, not the times). Tests replace it.
var fsyncFile = func(f *os.File) error {
	return ignoringEINTR(func() error { return syscall.Fdatasync(int(f.Fd())) })
}

// fsyncDir flushes a directory's entries to disk. Tests replace it.
var fsyncDir = func(f *os.File) error { return f.Sync() }

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// groupSync makes commits durable in groups: an fsync round covers every
// commit whose frames were written before the round began.
type groupSync struct {
	dir    string
	logger *slog.Logger
	// synced: every commit up to this count is on disk.
	synced atomic.Uint64

	mu       sync.Mutex
	files    map[string]*walFile // each WAL file's handle, kept from round to round
	added    uint64              // dbFilesAdded as the last round saw it
	started  uint64              // rounds begun
	finished uint64              // rounds ended (one runs at a time)
	running  bool                // a round is in progress
	done     chan struct{}       // closed when it ends
	// failed is sticky: after a failed fsync Linux may drop the dirty
	// pages and report a later fsync as successful, so nothing written
	// since can be known to be on disk. Only a restart (which recovers
	// from the WAL on disk) clears it.
	failed error
}

// walFile is a WAL file's handle and the inode it is open on.
type walFile struct {
	f   *os.File
	ino uint64
}

func newGroupSync(dir string, logger *slog.Logger) *groupSync {
	return &groupSync{dir: dir, logger: logger, done: make(chan struct{}), files: map[string]*walFile{}}
}

// close closes the WAL files' handles. Call it when no round can run.
func (g *groupSync) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for path := range g.files {
		g.forget(path)
	}
}

// wait returns once everything another client could have read before the
// call is on disk, or the error that keeps it from knowing.
func (g *groupSync) wait() error {
	// inflight before commits: see walCommitted.
	busy := inflight.Load() > 0
	want := commits.Load()
	if !busy && g.synced.Load() >= want {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// Any round that begins from now on covers every frame written so far.
	next := g.started + 1
	for g.failed == nil {
		if g.finished >= next || (!busy && g.synced.Load() >= want) {
			return nil
		}
		if g.running {
			done := g.done
			g.mu.Unlock()
			<-done
			g.mu.Lock()
			continue
		}
		g.running = true
		g.started++
		round := g.started
		g.mu.Unlock()
		upTo := commits.Load()
		err := g.syncAll()
		if ce, ok := checkpointErrs.Load(g.dir); ok && err == nil {
			err = ce.(error)
		}
		g.mu.Lock()
		g.running = false
		if err != nil {
			g.failed = fmt.Errorf("embedded mongodb: fsync of the data directory failed, so no write since can be known to be on disk; restart the server: %w", err)
			g.logger.Error(g.failed.Error())
		} else {
			g.finished = round
			if upTo > g.synced.Load() {
				g.synced.Store(upTo)
			}
		}
		close(g.done)
		g.done = make(chan struct{})
	}
	return g.failed
}

// syncAll fsyncs the WAL file of every database file in the data
// directory, then the directory if a file appeared (or was replaced) since
// the last round: a new file's name is on disk only then. A WAL file that
// does not exist was checkpointed into its database file and removed, or
// has not been written yet. Only the round's goroutine touches g.files and
// g.added.
func (g *groupSync) syncAll() error {
	added := dbFilesAdded.Load()
	changed := added != g.added
	var err error
	dbFiles.Range(func(k, _ any) bool {
		file := k.(string)
		if filepath.Dir(file) != g.dir {
			return true
		}
		fresh, serr := g.syncWAL(file + "-wal")
		switch {
		case errors.Is(serr, os.ErrNotExist):
		case serr != nil:
			err = serr
			return false
		case fresh:
			changed = true
		}
		return true
	})
	if err != nil || !changed {
		return err
	}
	d, err := os.Open(g.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := fsyncDir(d); err != nil {
		return err
	}
	g.added = added
	return nil
}

// syncWAL flushes the WAL file at path and reports whether this round
// found it new (first seen, or replaced since the last round). The flush
// goes through a handle kept open from round to round: Linux reports a
// failed write-back to each handle open when it failed, but to a handle
// opened later only if no handle has seen the error yet, and SQLite's own,
// in a checkpoint, may have. A handle opened afresh for each round could
// then flush "successfully" pages the kernel had dropped.
func (g *groupSync) syncWAL(path string) (fresh bool, err error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			g.forget(path)
		}
		return false, err
	}
	w := g.files[path]
	if w == nil || w.ino != inode(st) {
		g.forget(path)
		if w, err = openWALFile(path); err != nil {
			return false, err
		}
		g.files[path] = w
		fresh = true
	}
	return fresh, fsyncFile(w.f)
}

// openWALFile opens the WAL file at path, with the inode of the very file
// opened, so that a file replaced between a round's stat and this open
// shows as changed to the next round.
func openWALFile(path string) (*walFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &walFile{f: f, ino: inode(st)}, nil
}

// forget closes the handle of the WAL file at path, if any.
func (g *groupSync) forget(path string) {
	if w := g.files[path]; w != nil {
		_ = w.f.Close()
		delete(g.files, path)
	}
}

// inode returns a file's inode number.
func inode(st os.FileInfo) uint64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Ino
	}
	return 1
}

// proxy accepts clients on front and connects each to FerretDB at backend,
// passing bytes unchanged both ways; each message from FerretDB goes on
// only once sync says that what it could show is on disk.
type proxy struct {
	front   net.Listener
	backend string
	sync    *groupSync
	logger  *slog.Logger
}

// serve runs until ctx is done. Then it stops accepting, and returns once
// every connection has ended: FerretDB, which stops with the same ctx, gives
// its clients a few seconds and then closes theirs, which ends each one.
func (p *proxy) serve(ctx context.Context) {
	var wg sync.WaitGroup
	defer p.sync.close() // after the connections, whose answers wait on rounds
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { _ = p.front.Close() })
	defer stop()
	delay := 5 * time.Millisecond
	for {
		c, err := p.front.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, say: keep serving the open
			// connections and try again, as net/http does.
			p.logger.Warn("embedded mongodb: accept failed; retrying", "error", err, "in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		wg.Go(func() { p.handle(ctx, c) })
	}
}

// clientCutOff is how long into a stop the proxy closes a client's
// connection: after FerretDB's 3 s for its clients, with a margin.
const clientCutOff = 4 * time.Second

// maxMessage bounds a wire protocol message: MongoDB's maxMessageSizeBytes.
const maxMessage = 48_000_000

// replyBuffer is the proxy's read buffer for FerretDB's answers per
// connection; an answer up to this size is passed on in one write.
const replyBuffer = 64 << 10

// handle copies one client's connection. It returns when either side ends.
func (p *proxy) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	// A client that stops reading its answers would hold this connection,
	// and the server's Close with it, for good: a write to it has no
	// deadline, and FerretDB cuts off only its own side of the proxy (3 s
	// into a stop). So a stop cuts the client off too, a little later.
	cut := context.AfterFunc(ctx, func() {
		time.AfterFunc(clientCutOff, func() { _ = c.Close() })
	})
	defer cut()
	var d net.Dialer
	b, err := d.DialContext(ctx, "tcp", p.backend)
	if err != nil {
		if ctx.Err() == nil {
			p.logger.Warn("embedded mongodb: proxy cannot reach FerretDB", "error", err)
		}
		return
	}
	defer b.Close()
	requests := make(chan struct{})
	go func() {
		defer close(requests)
		_, _ = io.Copy(b, c)
		// The client is done sending: pass that on; FerretDB answers
		// what it has and closes, which ends the loop below.
		if tc, ok := b.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		} else {
			_ = b.Close()
		}
	}()
	// Every wire protocol message starts with its length (int32, little
	// endian, the four bytes included). The wait happens once per message,
	// before its first byte goes on. A message that fits in the buffer (all
	// but large query results) goes on in one write: one segment for the
	// client to read, not a 4-byte header and then the rest.
	r := bufio.NewReaderSize(b, replyBuffer)
	for {
		head, err := r.Peek(4)
		if err != nil {
			break
		}
		n := int(binary.LittleEndian.Uint32(head))
		if n < 16 || n > maxMessage {
			p.logger.Error("embedded mongodb: proxy got a malformed message from FerretDB; closing the connection", "length", n)
			break
		}
		if err := p.sync.wait(); err != nil {
			// The answer cannot be known to be durable: the client
			// sees the connection close, as it would see a crash.
			break
		}
		if n <= replyBuffer {
			msg, err := r.Peek(n)
			if err != nil {
				break
			}
			if _, err := c.Write(msg); err != nil {
				break
			}
			_, _ = r.Discard(n)
			continue
		}
		if _, err := io.CopyN(c, r, int64(n)); err != nil {
			break
		}
	}
	_ = c.Close()
	<-requests
}
