package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	sqlite3 "modernc.org/sqlite/lib"
)

// fsyncGate replaces fsyncFile for a test: until armed it passes calls
// through; once armed, calls on files under dir wait until open is called,
// then fail with err or go through.
type fsyncGate struct {
	dir string

	mu      sync.Mutex
	armed   bool
	release chan struct{}
	err     error
	calls   []string
}

func installFsyncGate(t *testing.T, dir string) *fsyncGate {
	t.Helper()
	g := &fsyncGate{dir: dir, release: make(chan struct{})}
	realFile, realDir := fsyncFile, fsyncDir
	gated := func(real func(*os.File) error) func(*os.File) error {
		return func(f *os.File) error {
			path := f.Name()
			g.mu.Lock()
			armed, release, err := g.armed, g.release, g.err
			if armed && strings.HasPrefix(path, g.dir) {
				g.calls = append(g.calls, filepath.Base(path))
			}
			g.mu.Unlock()
			if armed && strings.HasPrefix(path, g.dir) {
				<-release
				if err != nil {
					return err
				}
			}
			return real(f)
		}
	}
	fsyncFile, fsyncDir = gated(realFile), gated(realDir)
	t.Cleanup(func() { fsyncFile, fsyncDir = realFile, realDir })
	return g
}

func (g *fsyncGate) arm(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.err = true, err
}

func (g *fsyncGate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.release)
}

func (g *fsyncGate) synced() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

func startFull(t *testing.T, dir string) (*Server, *mongo.Collection) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := Start(t.Context(), Config{Addr: "127.0.0.1:0", Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	})
	client, err := mongo.Connect(options.Client().ApplyURI(srv.URI()).SetRetryWrites(false).SetTimeout(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	coll := client.Database("t").Collection("c")
	if _, err := coll.InsertOne(t.Context(), bson.D{{Key: "_id", Value: "first"}}); err != nil {
		t.Fatal(err)
	}
	return srv, coll
}

// TestFullSyncAnswersAfterFsync: with sync=full, an insert is acknowledged
// only after the fsync that follows its commit, and that fsync covers the
// WAL file the commit went to and, since the insert created a database (a
// new file), the directory.
//
// The data directory may be reached through a symbolic link: SQLite names
// its files by their real path, which must still be recognised as the
// directory's.
func TestFullSyncAnswersAfterFsync(t *testing.T) {
	t.Run("directory", func(t *testing.T) {
		// Characters that are special to filepath.Glob must not hide the WAL.
		dir := filepath.Join(t.TempDir(), "data [x]*")
		answersAfterFsync(t, dir, dir)
	})
	t.Run("symbolic link", func(t *testing.T) {
		real, err := filepath.EvalSymlinks(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		real = filepath.Join(real, "data")
		if err := os.Mkdir(real, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		answersAfterFsync(t, link, real)
	})
}

// answersAfterFsync starts a server on dir, whose files are in realDir.
func answersAfterFsync(t *testing.T, dir, realDir string) {
	gate := installFsyncGate(t, realDir)
	_, coll := startFull(t, dir)

	gate.arm(nil)
	done := make(chan error, 1)
	go func() {
		other := coll.Database().Client().Database("t2").Collection("c")
		_, err := other.InsertOne(context.Background(), bson.D{{Key: "_id", Value: "second"}})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the insert was acknowledged before its commit was synced (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	gate.open()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the insert was not acknowledged after the fsync")
	}
	calls := gate.synced()
	var wal, dirSynced bool
	for _, c := range calls {
		wal = wal || c == "t2.sqlite-wal"
		dirSynced = dirSynced || c == filepath.Base(realDir)
	}
	if !wal || !dirSynced {
		t.Fatalf("fsync calls %q: want the WAL file and the directory", calls)
	}
}

// TestFullSyncFailureIsSticky: once an fsync has failed, no answer goes out
// any more, even if later fsyncs succeed.
func TestFullSyncFailureIsSticky(t *testing.T) {
	dir := t.TempDir()
	gate := installFsyncGate(t, dir)
	_, coll := startFull(t, dir)

	gate.arm(errors.New("injected EIO"))
	gate.open()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "lost"}}); err == nil {
		t.Fatal("an insert whose fsync failed was acknowledged")
	}
	gate.arm(nil)
	ctx2, cancel2 := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel2()
	if err := coll.FindOne(ctx2, bson.D{{Key: "_id", Value: "first"}}).Err(); err == nil {
		t.Fatal("the server answered after a failed fsync")
	}
}

// TestCheckpointIOErrorFailsTheServer: an I/O error of SQLite's own
// checkpoint, which fsyncs through SQLite's handles, fails the server of
// that directory as a failed fsync of its own does: the next write is not
// acknowledged. A server of another directory goes on.
func TestCheckpointIOErrorFailsTheServer(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	_, coll := startFull(t, dir)
	_, fine := startFull(t, other)
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkpointErrs.Delete(real) })
	checkpointFailed(real, sqlite3.SQLITE_IOERR_FSYNC)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "after"}}); err == nil {
		t.Fatal("a write was acknowledged after a checkpoint's I/O error")
	}
	if _, err := fine.InsertOne(ctx, bson.D{{Key: "_id", Value: "after"}}); err != nil {
		t.Fatalf("the server of another directory: %v", err)
	}
}

// TestFullSyncKeepsItsWALHandles: each round flushes a WAL file through
// the handle the first round opened, not one opened afresh, which Linux
// would not tell of a write-back error another handle (SQLite's) had seen.
func TestFullSyncKeepsItsWALHandles(t *testing.T) {
	dir := t.TempDir()
	realDir, err := filepath.EvalSymlinks(dir) // SQLite names its files so
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handles := map[string]map[*os.File]bool{}
	real := fsyncFile
	fsyncFile = func(f *os.File) error {
		mu.Lock()
		if handles[f.Name()] == nil {
			handles[f.Name()] = map[*os.File]bool{}
		}
		handles[f.Name()][f] = true
		mu.Unlock()
		return real(f)
	}
	t.Cleanup(func() { fsyncFile = real })
	_, coll := startFull(t, dir)
	for i := range 5 {
		if _, err := coll.InsertOne(t.Context(), bson.D{{Key: "_id", Value: i}}); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	wals := 0
	for name, hs := range handles {
		if !strings.HasSuffix(name, "-wal") || !strings.HasPrefix(name, realDir) {
			continue
		}
		wals++
		if len(hs) != 1 {
			t.Errorf("%s flushed through %d handles, want one kept open", filepath.Base(name), len(hs))
		}
	}
	if wals == 0 {
		t.Fatalf("no WAL file under %s was flushed: %v", dir, handles)
	}
}

// TestNormalSyncDoesNotWait: with sync=normal, answers do not wait for an
// fsync.
func TestNormalSyncDoesNotWait(t *testing.T) {
	dir := t.TempDir()
	gate := installFsyncGate(t, dir)
	gate.arm(nil) // never opened: any fsync of the proxy would hang
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := Start(t.Context(), Config{Addr: "127.0.0.1:0", Dir: dir, Sync: "normal", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close(context.Background()) }()
	client, err := mongo.Connect(options.Client().ApplyURI(srv.URI()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := client.Database("t").Collection("c").InsertOne(ctx, bson.D{{Key: "x", Value: 1}}); err != nil {
		t.Fatal(err)
	}
}

// TestWALHookCheckpoints: the WAL hook replaces SQLite's automatic
// checkpoint, so it must checkpoint too, or the WAL file grows forever.
func TestWALHookCheckpoints(t *testing.T) {
	dir := t.TempDir()
	_, coll := startFull(t, dir)
	ctx := t.Context()
	for i := range 1500 {
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "n", Value: i}, {Key: "pad", Value: strings.Repeat("x", 512)}}); err != nil {
			t.Fatal(err)
		}
	}
	wals, _ := filepath.Glob(filepath.Join(dir, "*.sqlite-wal"))
	if len(wals) == 0 {
		t.Fatal("no WAL file")
	}
	for _, w := range wals {
		st, err := os.Stat(w)
		if err != nil {
			t.Fatal(err)
		}
		// 1,500 commits of at least two 4 KiB pages each would make a WAL
		// of over 12 MB without checkpoints; with them it stays near
		// walAutocheckpoint pages.
		if st.Size() > 2*walAutocheckpoint*4096 {
			t.Fatalf("%s is %d bytes: the WAL is not being checkpointed", filepath.Base(w), st.Size())
		}
	}
}

// TestWaitCoversCommitsInFlight: a commit is visible to other connections
// before SQLite's WAL hook counts it, so an answer given while a commit is
// in flight must wait for an fsync that begins after it, even though every
// counted commit is on disk already.
func TestWaitCoversCommitsInFlight(t *testing.T) {
	dir := t.TempDir()
	gate := installFsyncGate(t, dir)
	gate.arm(nil)
	gate.open()
	g := newGroupSync(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	g.synced.Store(commits.Load())

	if err := g.wait(); err != nil {
		t.Fatal(err)
	}
	if calls := gate.synced(); len(calls) != 0 {
		t.Fatalf("nothing to sync, but fsync was called on %q", calls)
	}

	inflight.Add(1)
	defer inflight.Add(-1)
	if err := g.wait(); err != nil {
		t.Fatal(err)
	}
	if calls := gate.synced(); len(calls) == 0 {
		t.Fatal("a commit was in flight, but the answer went out without an fsync")
	}
}

// TestProxyPassesRepliesOfEverySize: answers below, at and above the
// proxy's buffer (written at once, or streamed) reach the client intact.
func TestProxyPassesRepliesOfEverySize(t *testing.T) {
	_, coll := startFull(t, t.TempDir())
	sizes := []int{1, replyBuffer - 200, replyBuffer, replyBuffer + 1000, 3 * replyBuffer}
	for i, n := range sizes {
		body := strings.Repeat(string(rune('a'+i)), n)
		if _, err := coll.InsertOne(t.Context(), bson.D{{Key: "_id", Value: i}, {Key: "body", Value: body}}); err != nil {
			t.Fatalf("insert %d bytes: %v", n, err)
		}
	}
	for i, n := range sizes {
		var got struct {
			Body string `bson:"body"`
		}
		if err := coll.FindOne(t.Context(), bson.D{{Key: "_id", Value: i}}).Decode(&got); err != nil {
			t.Fatalf("find the %d-byte document: %v", n, err)
		}
		if want := strings.Repeat(string(rune('a'+i)), n); got.Body != want {
			t.Fatalf("the %d-byte document came back as %d bytes", n, len(got.Body))
		}
	}
	// All of them in one answer, several times the buffer.
	cur, err := coll.Find(t.Context(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var all []bson.M
	if err := cur.All(t.Context(), &all); err != nil {
		t.Fatal(err)
	}
	if len(all) != len(sizes)+1 { // and startFull's "first"
		t.Fatalf("found %d documents, want %d", len(all), len(sizes)+1)
	}
}

// TestCommitsThatWriteNothingEnd: a write transaction that changes nothing
// (a DELETE of rows already gone, as FerretDB runs when two clients race
// for one document) commits without writing to the WAL, so no WAL hook ends
// it. It must end all the same, or every answer would wait for an fsync
// round until the connection's next real commit. Commits that write end as
// before, in explicit transactions too.
func TestCommitsThatWriteNothingEnd(t *testing.T) {
	installBusyHandler()
	ctx := t.Context()
	db := openWAL(t, "noop.db")
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before := inflight.Load()
	for _, tc := range []struct {
		stmts  []string
		writes bool
	}{
		{[]string{`CREATE TABLE t (n INTEGER)`}, true},
		{[]string{`DELETE FROM t WHERE n = 1`}, false},
		{[]string{`BEGIN IMMEDIATE`, `COMMIT`}, false},
		{[]string{`INSERT INTO t VALUES (1)`}, true},
		{[]string{`BEGIN IMMEDIATE`, `DELETE FROM t WHERE n = 2`, `COMMIT`}, false},
		{[]string{`BEGIN IMMEDIATE`, `UPDATE t SET n = 3 WHERE n = 1`, `COMMIT`}, true},
		{[]string{`UPDATE t SET n = 4 WHERE n = 99`}, false},
	} {
		committed, ended := commits.Load(), walEnded.Load()
		for _, stmt := range tc.stmts {
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		if n := inflight.Load(); n != before {
			t.Errorf("after %q: %d commits in flight, want %d", tc.stmts, n, before)
		}
		if counted := commits.Load() > committed; counted != tc.writes {
			t.Errorf("after %q: a commit counted: %v, want %v", tc.stmts, counted, tc.writes)
		}
		// A commit that wrote is ended by the WAL hook, after the fsync
		// round can see it counted, never before by the statement's end.
		if byWAL := walEnded.Load() > ended; byWAL != tc.writes {
			t.Errorf("after %q: the WAL hook ended the commit: %v, want %v", tc.stmts, byWAL, tc.writes)
		}
	}
}

// opMsg is an OP_MSG wire message with one body section.
func opMsg(id int32, doc bson.D) []byte {
	body, _ := bson.Marshal(doc)
	msg := make([]byte, 21, 21+len(body))
	binary.LittleEndian.PutUint32(msg[0:], uint32(21+len(body)))
	binary.LittleEndian.PutUint32(msg[4:], uint32(id))
	binary.LittleEndian.PutUint32(msg[12:], 2013) // OP_MSG; flags 0; section kind 0
	return append(msg, body...)
}

// TestStopCutsOffAClientThatDoesNotRead: a client that sends queries and
// never reads the answers does not hold the server's Close, which returns
// once the proxy cuts it off.
func TestStopCutsOffAClientThatDoesNotRead(t *testing.T) {
	srv, coll := startFull(t, t.TempDir())
	big := strings.Repeat("x", 1<<20)
	if _, err := coll.InsertOne(t.Context(), bson.D{{Key: "_id", Value: "big"}, {Key: "b", Value: big}}); err != nil {
		t.Fatal(err)
	}
	_ = coll.Database().Client().Disconnect(context.Background())
	u, err := url.Parse(srv.URI())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Each answer holds the 1 MiB document: far more than the sockets
	// buffer, so the proxy's writes to this client block.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := int32(1); i < 200; i++ {
			if _, err := c.Write(opMsg(i, bson.D{{Key: "find", Value: "c"}, {Key: "filter", Value: bson.D{}}, {Key: "$db", Value: "t"}})); err != nil {
				return
			}
		}
	}()
	time.Sleep(2 * time.Second) // for the answers to fill the sockets
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Second)
	defer cancel()
	begin := time.Now()
	if err := srv.Close(ctx); err != nil {
		t.Fatalf("Close with a client that does not read its answers: %v", err)
	}
	// Sooner than the cut-off, the client held nothing: the test tested
	// nothing.
	if took := time.Since(begin); took < clientCutOff-time.Second {
		t.Fatalf("Close took %s: the client's answers never filled the sockets", took)
	}
	c.Close()
	<-sent
}
