package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func start(t *testing.T, dir string) *embedded.Server {
	t.Helper()
	srv, err := embedded.Start(t.Context(), embedded.Config{Addr: "127.0.0.1:0", Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatalf("start embedded mongodb: %v", err)
	}
	// Registered before any client's cleanup, so it runs after them: a
	// server with no clients left stops at once.
	t.Cleanup(func() {
		if err := srv.Close(context.Background()); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return srv
}

func connect(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatalf("connect %s: %v", uri, err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client
}

func TestDataSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()

	srv := start(t, dir)
	client := connect(t, srv.URI())
	if !strings.HasPrefix(srv.URI(), "mongodb://127.0.0.1:") || strings.HasSuffix(srv.URI(), ":0/") {
		t.Fatalf("URI() = %q, want mongodb://127.0.0.1:<real port>/", srv.URI())
	}
	coll := client.Database("embedded_test").Collection("things")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 42}}); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var got struct {
		N int `bson:"n"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil || got.N != 42 {
		t.Fatalf("find before restart: n=%d err=%v", got.N, err)
	}
	// With its clients gone the server stops at once; FerretDB would give a
	// connected client 3 seconds.
	if err := client.Disconnect(ctx); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	closeCtx, cancel := context.WithTimeout(ctx, 2500*time.Millisecond) // under FerretDB's 3 s
	defer cancel()
	if err := srv.Close(closeCtx); err != nil {
		t.Fatalf("close with no clients connected: %v", err)
	}

	srv = start(t, dir)
	coll = connect(t, srv.URI()).Database("embedded_test").Collection("things")
	got.N = 0
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil || got.N != 42 {
		t.Fatalf("find after restart: n=%d err=%v", got.N, err)
	}
}

func TestAddressInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()

	// Both modes: behind the proxy (full) the listen error is the proxy's;
	// without it (normal), FerretDB's, which keeps only the error's text.
	for _, sync := range []string{"full", "normal"} {
		_, err = embedded.Start(t.Context(), embedded.Config{Addr: l.Addr().String(), Dir: t.TempDir(), Sync: sync, Logger: quiet})
		if !errors.Is(err, embedded.ErrAddrInUse) {
			t.Fatalf("sync %s: Start on a busy address: %v, want ErrAddrInUse", sync, err)
		}
		for _, want := range []string{l.Addr().String(), "in use", "EMBEDDED_MONGODB_ADDR"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	}
}

func TestStartStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	srv, err := embedded.Start(ctx, embedded.Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Logger: quiet})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	cancel()
	closeCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := srv.Close(closeCtx); err != nil {
		t.Fatalf("close after cancel: %v", err)
	}
}

func TestSyncSetting(t *testing.T) {
	ctx := context.Background()
	if _, err := embedded.Start(ctx, embedded.Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Sync: "sometimes"}); err == nil {
		t.Fatal("an unknown sync setting must be refused")
	}
	if _, err := embedded.Start(ctx, embedded.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(t.TempDir(), "a?b")}); err == nil {
		t.Fatal("a data directory with a '?' must be refused: FerretDB would put the files elsewhere")
	}
	srv, err := embedded.Start(ctx, embedded.Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSecondServerOnOneDirectoryIsRefused: a second server on a data
// directory in use is refused, naming the process that holds it, rather
// than serving its own view of the databases, which misses the first
// one's writes; once the first has stopped, the directory is free again.
func TestSecondServerOnOneDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	first, err := embedded.Start(t.Context(), embedded.Config{Addr: "127.0.0.1:0", Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	second, err := embedded.Start(t.Context(), embedded.Config{Addr: "127.0.0.1:0", Dir: dir, Logger: quiet})
	if err == nil {
		_ = second.Close(context.Background())
		_ = first.Close(context.Background())
		t.Fatal("a second server started on a data directory in use")
	}
	if want := fmt.Sprintf("in use by another embedded MongoDB (process %d)", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error = %v, want it to say %q", err, want)
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	start(t, dir)
}
