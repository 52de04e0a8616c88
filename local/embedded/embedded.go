// Package embedded runs an in-process MongoDB wire-protocol server for local
// mode: FerretDB v1 with its SQLite backend, so the project runs with no
// MongoDB installed. It speaks enough of MongoDB for shared/mongostore, whose
// comments list what FerretDB does not do (atomic conditional updates, TTL
// indexes, index use for anything but _id equality).
//
// Building with -tags ferretdb_no_postgresql leaves FerretDB's PostgreSQL
// backend out of the binary; this package compiles with and without it.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// startTimeout bounds the wait for the first successful ping when the
// caller's context has no earlier deadline. Start plus ping takes a few
// milliseconds on this machine; the margin is for a cold disk.
const startTimeout = 15 * time.Second

// Config configures the embedded server.
type Config struct {
	// Addr is the TCP listen address, e.g. 127.0.0.1:27018, or 127.0.0.1:0
	// for any free port (URI then reports the real one).
	Addr string
	// Dir is the data directory; it is created if missing.
	Dir string
	// Sync is "full" (the default: no answer reaches a client before every
	// commit made before it is on disk; see groupSync) or "normal" (no
	// fsync: a commit survives a crash of the process, as with kill -9, but
	// the last ones may be lost if the machine itself loses power).
	Sync string
	// Logger receives this package's messages. FerretDB gets a copy filtered
	// to Error level: at Warn it logs every error response it sends,
	// duplicate-key errors included, which the stores expect routinely.
	Logger *slog.Logger
}

// Server is a running embedded server.
type Server struct {
	uri    string
	cancel context.CancelFunc
	done   chan struct{} // FerretDB has stopped
	ids    *idIndexer
	wg     sync.WaitGroup
	// stopped is closed once the server is done with its data directory
	// and has let go of its lock.
	stopped chan struct{}
}

// ErrAddrInUse is returned by Start when something else listens on the
// address.
var ErrAddrInUse = errors.New("address already in use")

// ErrDirInUse is returned by Start when another server has the data
// directory.
var ErrDirInUse = errors.New("in use")

// Start starts the server and returns once it answers a ping. The server
// runs until ctx is done or Close is called.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		return nil, errors.New("embedded mongodb: listen address is empty")
	}
	if cfg.Dir == "" {
		return nil, errors.New("embedded mongodb: data directory is empty")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("embedded mongodb: data directory %q: %w", cfg.Dir, err)
	}
	// FerretDB passes the directory to SQLite inside a file: URI without
	// escaping it: with a '?' in the path the files land in another
	// directory (measured), where nothing here would find or fsync them.
	if strings.ContainsAny(dir, "?#%") {
		return nil, fmt.Errorf("embedded mongodb: data directory %q: the characters ? # %% cannot be used in it (FerretDB puts the path in a URI unescaped)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded mongodb: create data directory: %w", err)
	}
	// SQLite names its files by their real path. Through a symbolic link
	// the group commit would not know them for this directory's, and would
	// fsync none of them.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("embedded mongodb: data directory %q: %w", cfg.Dir, err)
	}
	if strings.ContainsAny(dir, "?#%") {
		return nil, fmt.Errorf("embedded mongodb: data directory %q (really %q): the characters ? # %% cannot be used in it (FerretDB puts the path in a URI unescaped)", cfg.Dir, dir)
	}

	// FerretDB wants a SQLite URI naming a directory: the trailing slash is
	// required. url.URL escapes characters such as spaces in the path.
	//
	// SQLite's own synchronous=full would fsync the WAL inside every
	// commit, holding the one write lock all the while: measured under
	// make bench, writers then waited about 0.4 ms each, twice per message.
	// So SQLite runs with normal (no fsync at commit) in both modes, and
	// for "full" the server answers clients through a proxy that sends an
	// answer only once the commits made before it are on disk, with one
	// fsync for all of them (groupSync): group commit, as databases do it.
	q := url.Values{}
	q.Add("_pragma", "synchronous(normal)")
	switch cfg.Sync {
	case "":
		cfg.Sync = "full"
	case "full", "normal":
	default:
		return nil, fmt.Errorf("embedded mongodb: sync %q is neither full nor normal", cfg.Sync)
	}
	installBusyHandler()
	hooked := checkBusyHandler() // the commit hooks come with the busy handler
	if !hooked {
		logger.Warn("embedded mongodb: could not install the SQLite busy handler; concurrent writes wait up to 100 ms for each other (see local/embedded/busy.go)")
	}
	inUse := fmt.Errorf("embedded mongodb: %s: %w (set EMBEDDED_MONGODB_ADDR to another address, or 127.0.0.1:0 for any free port)", cfg.Addr, ErrAddrInUse)
	if cfg.Sync != "normal" && !hooked {
		return nil, errors.New("embedded mongodb: cannot count SQLite commits (the hooks did not install), so sync=full cannot tell when they are on disk; use EMBEDDED_MONGODB_SYNC=normal")
	}
	// The address is taken here in both modes: for full, the proxy serves
	// it; for normal, it is only tried, because ferretdb.New failing to
	// listen leaks the backend it opened, whose resource tracker then
	// panics when the garbage collector finds it (measured).
	front, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, inUse
		}
		return nil, fmt.Errorf("embedded mongodb: listen on %s: %w", cfg.Addr, err)
	}
	// The directory after the address: processes started together race
	// for both, and a loser should learn first of the address, to wait
	// for the winner to answer there.
	lock, err := lockDir(dir)
	if err != nil {
		_ = front.Close()
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			_ = lock.Close()
		}
	}()
	listen := cfg.Addr
	if cfg.Sync == "normal" {
		_ = front.Close()
		front = nil
	} else {
		// FerretDB itself listens on a loopback port of its own, which
		// only the proxy uses.
		listen = "127.0.0.1:0"
	}
	sqliteURL := (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir) + "/", RawQuery: q.Encode()}).String()
	fdb, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    slog.New(levelFilter{h: logger.With("component", "ferretdb").Handler(), min: slog.LevelError}),
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
		// Telemetry: ferretdb.New disables it itself (and locks it off) for
		// embedded use; there is no option to set.
	})
	if err != nil {
		if front != nil {
			_ = front.Close()
		}
		// ferretdb.New formats the listen error with %s, so errors.Is
		// cannot see the errno through it; the text is all there is.
		if errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use") {
			return nil, inUse
		}
		return nil, fmt.Errorf("embedded mongodb: start on %s with data in %s: %w", cfg.Addr, dir, err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	s := &Server{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		// Run always returns nil; it closes the listener, the connections
		// and the SQLite databases before it returns.
		_ = fdb.Run(runCtx)
	}()
	// The listener is bound inside ferretdb.New, so the address is known now.
	s.uri = fdb.MongoDBURI()
	if front != nil {
		u, err := url.Parse(s.uri)
		if err != nil {
			cancel()
			<-s.done
			_ = front.Close()
			return nil, fmt.Errorf("embedded mongodb: FerretDB's URI: %w", err)
		}
		p := &proxy{front: front, backend: u.Host, sync: newGroupSync(dir, logger), logger: logger}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			p.serve(runCtx)
		}()
		u.Host = front.Addr().String()
		s.uri = u.String()
	}

	if err := ping(ctx, s.uri, dir, cfg.Sync); err != nil {
		cancel()
		<-s.done
		s.wg.Wait() // the proxy, if any, has closed its listener
		return nil, fmt.Errorf("embedded mongodb: started on %s but did not answer: %w", s.uri, err)
	}
	s.ids = &idIndexer{dir: dir, logger: logger}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.ids.run(runCtx, time.Second)
	}()
	// From here on the lock goes with the server: it is let go once
	// FerretDB, the proxy (holding WAL files open) and the id indexer
	// (opening the database files itself) are all done with the directory,
	// whether Close or the end of ctx stopped them. Only then may another
	// server open it.
	started = true
	s.stopped = make(chan struct{})
	go func() {
		<-s.done
		s.wg.Wait()
		_ = lock.Close()
		close(s.stopped)
	}()
	logger.Info("embedded mongodb started", "uri", s.uri, "dir", dir)
	return s, nil
}

// lockName is the file in the data directory whose lock marks it in use.
// FerretDB takes only files ending in .sqlite for databases.
const lockName = "rms-embedded.lock"

// lockDir takes the data directory for this process, with an exclusive
// lock on a file in it that the kernel drops when the process ends however
// it ends, and writes the process's PID in the file for the error of the
// next one. Two servers on one directory do not work together: FerretDB
// keeps what it knows of the databases in memory, so each misses the
// other's collections and writes (measured: one counted none of the
// other's documents, and its inserts failed with disk I/O errors), and
// each one's group commit knows only its own commits.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded mongodb: data directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("embedded mongodb: data directory %s is %w by another embedded MongoDB (process %s): "+
				"point this process at that one with its EMBEDDED_MONGODB_ADDR, or give it another DATA_DIR", dir, ErrDirInUse, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("embedded mongodb: lock data directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// ping connects with the driver and pings until the server answers or the
// deadline passes; then it records dir and sync in the server (see
// writeMarker).
func ping(ctx context.Context, uri, dir, sync string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetAppName("embedded-ping"))
	if err != nil {
		return err
	}
	defer func() { _ = client.Disconnect(context.WithoutCancel(ctx)) }()
	if err := client.Ping(ctx, nil); err != nil {
		return err
	}
	return writeMarker(ctx, client, dir, sync)
}

// IndexIDs gives every collection created so far the _id index that
// FerretDB's own lookups can use (see idIndexer). The server does this by
// itself every second; call it to have it done now, after creating
// collections and before a burst of work.
func (s *Server) IndexIDs(ctx context.Context) error { return s.ids.sweep(ctx) }

// URI returns the mongodb:// URI of the server, with the port it really
// listens on.
func (s *Server) URI() string { return s.uri }

// Close stops the server and waits until it has closed its connections and
// data files, or until ctx is done. FerretDB gives clients still connected
// 3 seconds to leave before it cuts them off, so disconnect every client
// (close the stores) first for a stop in milliseconds.
func (s *Server) Close(ctx context.Context) error {
	s.cancel()
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded mongodb: wait for shutdown: %w", ctx.Err())
	}
}

// levelFilter passes on records at min or above to h.
//
// FerretDB adds attributes to its logger for every command and every SQL
// statement, and a JSON handler formats them as soon as they are added,
// although almost nothing reaches min: that took about 4% of the embedded
// MongoDB's CPU under make bench. So the WithAttrs and WithGroup calls are
// kept, in order, in with, and applied to h only when a record is handled.
type levelFilter struct {
	h    slog.Handler
	min  slog.Level
	with []func(slog.Handler) slog.Handler
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.h.Enabled(ctx, l)
}

func (f levelFilter) Handle(ctx context.Context, r slog.Record) error {
	h := f.h
	for _, w := range f.with {
		h = w(h)
	}
	return h.Handle(ctx, r)
}

func (f levelFilter) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return f
	}
	return f.then(func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })
}

func (f levelFilter) WithGroup(name string) slog.Handler {
	if name == "" {
		return f
	}
	return f.then(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}

// then returns f with w added to its with, in a new array: loggers derived
// from one logger must not share what is added to the others.
func (f levelFilter) then(w func(slog.Handler) slog.Handler) levelFilter {
	f.with = append(slices.Clip(f.with), w)
	return f
}
