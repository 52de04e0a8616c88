// Package testenv gives tests the real services they run against: the
// local RabbitMQ and Redis, and one embedded MongoDB per test binary. Every
// test gets its own names (queues, key prefix, database), so tests never see
// each other's data. A missing service fails the test with how to start it;
// nothing is ever skipped.
package testenv

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/redistest"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

// Addresses of the services on a developer's machine and in CI.
const (
	RabbitURI = "amqp://guest:guest@127.0.0.1:5672/"
	RedisAddr = redistest.Addr
)

const (
	startRabbit = "rabbitmq-server -detached"
	startRedis  = redistest.Start
)

// RequireServices fails t unless RabbitMQ and Redis answer.
func RequireServices(t testing.TB) {
	t.Helper()
	for _, s := range []struct{ name, addr, how string }{
		{"RabbitMQ", "127.0.0.1:5672", startRabbit},
		{"Redis", RedisAddr, startRedis},
	} {
		c, err := net.DialTimeout("tcp", s.addr, 2*time.Second)
		if err != nil {
			t.Fatalf("%s is not answering on %s (%v). Start it with: %s", s.name, s.addr, err, s.how)
		}
		c.Close()
	}
}

var (
	mongoOnce sync.Once
	mongoURI  string
	mongoErr  error
	mongoSrv  *embedded.Server
	mongoDir  string
)

// Main runs the tests of a package that uses MongoURI or App, and exits
// with their result: call it from TestMain.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs m's tests, then stops the embedded MongoDB they shared, if one
// was started, and removes its data.
func Run(m *testing.M) int {
	code := m.Run()
	if mongoSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := mongoSrv.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "testenv: stop the embedded mongodb:", err)
		}
		cancel()
	}
	if mongoDir != "" {
		_ = os.RemoveAll(mongoDir)
	}
	return code
}

// MongoURI returns the URI of the embedded MongoDB shared by the tests of
// this binary, starting it on first use. The package's TestMain should call
// Main, which stops it at the end.
func MongoURI(t testing.TB) string {
	t.Helper()
	mongoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rms-test-mongodb-")
		if err != nil {
			mongoErr = err
			return
		}
		mongoDir = dir
		quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		srv, err := embedded.Start(context.Background(), embedded.Config{Addr: "127.0.0.1:0", Dir: dir, Logger: quiet})
		if err != nil {
			mongoErr = err
			return
		}
		mongoSrv, mongoURI = srv, srv.URI()
	})
	if mongoErr != nil {
		t.Fatalf("start the embedded mongodb: %v", mongoErr)
	}
	return mongoURI
}

// Name returns a name unique to this test and run, safe for queues,
// databases and key prefixes.
func Name(t testing.TB) string {
	n := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '_'
	}, t.Name())
	if len(n) > 30 {
		n = n[:30]
	}
	return fmt.Sprintf("t_%s_%d", n, time.Now().UnixNano()%1e9)
}

// FreePortsFrom and FreePortsTo bound the ports FreeAddr hands out: below the
// kernel's ephemeral range (32768-60999 on Linux), from which every
// listener on port 0 and every outgoing connection takes its port, so
// that none of those can take one between FreeAddr's check and the test's
// bind; and below MongoDB's 27017 and the embedded one's 27018, so that a
// make run started meanwhile finds its port free.
const FreePortsFrom, FreePortsTo = 20000, 27000

// portLocks holds open the lock file of each port FreeAddr handed out in
// this process: go test runs packages side by side, and a lock on the file
// keeps the port from every other test process until this one exits (the
// kernel then drops it), and from a second call in this one.
var portLocks struct {
	sync.Mutex
	files   []*os.File
	dirMade bool // the lock files' directory exists
}

// PortLockFile is the file whose lock reserves port for a test process.
func PortLockFile(port int) string {
	return filepath.Join(os.TempDir(), "rms-test-ports", strconv.Itoa(port))
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago and that no other call, in this process or another test process,
// returned.
func FreeAddr(t testing.TB) string {
	t.Helper()
	portLocks.Lock()
	defer portLocks.Unlock()
	if !portLocks.dirMade {
		dir := filepath.Dir(PortLockFile(0))
		if err := os.MkdirAll(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		// Shared by every user's tests, as /tmp is: the umask would leave
		// it writable by its creator alone. (Another user's chmod fails,
		// and need not succeed: the creator's did.)
		_ = os.Chmod(dir, 0o777|os.ModeSticky)
		portLocks.dirMade = true
	}
	n := FreePortsTo - FreePortsFrom
	start := rand.IntN(n)
	for i := range n {
		port := FreePortsFrom + (start+i)%n
		// Read-only is enough for a lock, and opens another user's file.
		f, err := os.OpenFile(PortLockFile(port), os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			_ = f.Close()
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			_ = f.Close() // in use by something else; closing drops the lock
			continue
		}
		_ = ln.Close()
		portLocks.files = append(portLocks.files, f)
		return addr
	}
	t.Fatalf("no free port in %d-%d", FreePortsFrom, FreePortsTo)
	return ""
}

// Env returns the environment of a system isolated for this test: its own
// database, queues, Redis key prefix and ports, and fast timings. Entries
// in extra override it. The queues, and the keys under the key prefix it
// chose, are deleted when the test ends.
func Env(t testing.TB, extra map[string]string) map[string]string {
	t.Helper()
	RequireServices(t)
	name := Name(t)
	env := map[string]string{
		"MONGODB_DATABASE":      name,
		"DATA_DIR":              t.TempDir(),
		"EMBEDDED_MONGODB_ADDR": FreeAddr(t),
		"RABBITMQ_URI":          RabbitURI,
		"RABBITMQ_EXCHANGE":     name,
		"RABBITMQ_QUEUE":        name,
		"RABBITMQ_DLQ":          name + ".dlq",
		"REDIS_URI":             RedisAddr,
		"REDIS_KEY_PREFIX":      name + ":",
		"API_ADDR":              FreeAddr(t),
		"PROCESSOR_ADDR":        FreeAddr(t),
		"PUBLISHER_ADDR":        FreeAddr(t),
		"RECEIVER_ADDR":         FreeAddr(t),
		"PUBLISH_INTERVAL":      "200ms",
		"RETRY_BASE_DELAY":      "200ms",
		"RETRY_MAX_DELAY":       "2s",
		"WEBHOOK_TIMEOUT":       "2s",
		// Long enough that a slow run (the race detector on a busy
		// machine) never sees a message as stale by accident; tests of
		// the stale sweep set their own.
		"STALE_DURATION": "10m",
		"LOG_LEVEL":      "warn",
	}
	for k, v := range extra {
		env[k] = v
	}
	t.Cleanup(func() {
		DeleteQueues(t, env["RABBITMQ_EXCHANGE"], env["RABBITMQ_QUEUE"], env["RABBITMQ_DLQ"])
		if env["REDIS_KEY_PREFIX"] == name+":" {
			if err := redistest.DeleteKeys(env["REDIS_KEY_PREFIX"]); err != nil {
				t.Logf("delete the test's keys: %v", err)
			}
		}
	})
	return env
}

// WaitFor polls cond until it holds, failing t if it does not within d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", d, what)
		}
	}
}

// Config loads the configuration of env.
func Config(t testing.TB, env map[string]string) config.Config {
	t.Helper()
	c, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// DeleteQueues removes an exchange and queues a test declared.
func DeleteQueues(t testing.TB, exchange string, queues ...string) {
	conn, err := amqp.Dial(RabbitURI)
	if err != nil {
		t.Logf("delete test queues: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	if exchange != "" {
		_ = ch.ExchangeDelete(exchange, false, false)
	}
}

// QueueDepth returns the number of ready messages in queue.
func QueueDepth(t testing.TB, queue string) int {
	t.Helper()
	ch, done := channel(t)
	defer done()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// Drain takes every ready message off queue and returns the bodies.
func Drain(t testing.TB, queue string) [][]byte {
	t.Helper()
	ch, done := channel(t)
	defer done()
	var out [][]byte
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		if !ok {
			return out
		}
		out = append(out, d.Body)
	}
}

// RepoRoot returns the repository root: the nearest directory above the
// test's working directory that holds go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory: cannot find the repository root")
		}
		dir = parent
	}
}

// channel opens a channel on a new connection to the test broker; done
// closes the connection. The helpers close it before they return: tests
// poll them, and a connection left open per poll until the test ends
// loads the broker every package shares.
func channel(t testing.TB) (ch *amqp.Channel, done func()) {
	t.Helper()
	conn, err := amqp.Dial(RabbitURI)
	if err != nil {
		t.Fatalf("connect to RabbitMQ at %s: %v (start it with: %s)", RabbitURI, err, startRabbit)
	}
	ch, err = conn.Channel()
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	return ch, func() { _ = conn.Close() }
}

// Tally counts observed events, from many goroutines; Record fits the
// Observe hooks.
type Tally struct {
	mu sync.Mutex
	n  map[string]int
}

// Record counts k events named event.
func (t *Tally) Record(event string, k int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	t.n[event] += k
}

// Counts returns the counts so far.
func (t *Tally) Counts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.n)
}
