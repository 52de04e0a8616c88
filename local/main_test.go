package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// sink is a webhook that counts deliveries per webhook-id.
type sink struct {
	mu    sync.Mutex
	seen  map[string]int
	total int
}

func newSink(t *testing.T) (*sink, string) {
	s := &sink{seen: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ ID, To, Content string }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.ID != r.Header.Get("webhook-id") {
			http.Error(w, "bad delivery", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.seen[body.ID]++
		s.total++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"message":"Accepted","messageId":"wh-%s"}`, body.ID)
	}))
	t.Cleanup(srv.Close)
	return s, srv.URL + "/webhook"
}

func (s *sink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// startSystem runs the program as `make run` does and waits for its API.
func startSystem(t *testing.T, env map[string]string) (api string, stop func()) {
	t.Helper()
	api, _, stop = startSystemLogged(t, env)
	return api, stop
}

// startSystemLogged is startSystem, keeping the program's log in out.
func startSystemLogged(t *testing.T, env map[string]string) (api string, out *logbuf.Buffer, stop func()) {
	t.Helper()
	return startRole(t, "all", env, &logbuf.Buffer{})
}

// startRole runs the program in role, logging to out, and waits for its API.
// stop ends it and checks that it ended cleanly; it runs at the test's end
// too, whatever happened, and only once.
func startRole(t *testing.T, role string, env map[string]string, out *logbuf.Buffer) (api string, _ *logbuf.Buffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var runErr error
	go func() {
		defer close(finished)
		runErr = run(ctx, []string{role}, func(k string) string { return env[k] }, out, io.Discard)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-finished:
				if runErr != nil {
					t.Errorf("run returned %v", runErr)
				}
			case <-time.After(60 * time.Second):
				t.Error("system did not shut down within 60s")
			}
		})
	}
	t.Cleanup(stop)
	api = "http://" + env["API_ADDR"]
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(api + "/status")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-finished:
			t.Fatalf("system exited early: %v\n%s", runErr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("system did not become ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return api, out, stop
}

// TestUsage: help prints the usage and succeeds; an unknown role, or the
// mongodb role with an external MongoDB configured, fails saying why.
func TestUsage(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "help"} {
		var out, errOut bytes.Buffer
		if err := run(context.Background(), []string{arg}, func(string) string { return "" }, &out, &errOut); err != nil || !strings.Contains(out.String(), "usage: rms") {
			t.Errorf("rms %s: %v, stdout %q", arg, err, out.String())
		}
	}
	var errOut bytes.Buffer
	if err := run(context.Background(), []string{"apii"}, func(string) string { return "" }, io.Discard, &errOut); err == nil || !strings.Contains(errOut.String(), "usage: rms") {
		t.Errorf("rms apii: %v, stderr %q", err, errOut.String())
	}
	env := map[string]string{"MONGODB_URI": "mongodb://127.0.0.1:1/"}
	if err := run(context.Background(), []string{"mongodb"}, func(k string) string { return env[k] }, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "MONGODB_URI") {
		t.Errorf("rms mongodb with MONGODB_URI set: %v, want an error naming MONGODB_URI", err)
	}
}

// TestStartupErrorEndsTheProcess: an error after a listener is up (here the
// demo receiver, then a profiler address that cannot be used) ends run with
// that error instead of waiting for a shutdown that never comes.
func TestStartupErrorEndsTheProcess(t *testing.T) {
	env := map[string]string{"RECEIVER_ADDR": "127.0.0.1:0", "PPROF_ADDR": "127.0.0.1:notaport"}
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"processor"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") {
			t.Fatalf("run: %v, want the PPROF_ADDR error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return 10 s after a startup error")
	}
}

// TestMisconfiguredDependencyEndsTheStart: a setting that waiting for the
// dependency will not fix (a password the broker or MongoDB refuses) ends
// the start after three tries with an error naming the variable, instead of
// two minutes of "dependencies not ready".
func TestMisconfiguredDependencyEndsTheStart(t *testing.T) {
	mongoURI, err := url.Parse(testenv.MongoURI(t))
	if err != nil {
		t.Fatal(err)
	}
	mongoURI.User = url.UserPassword("rms", "Wrong-Secret")
	for _, tc := range []struct {
		variable, uri, refusal string
	}{
		{variable: "RABBITMQ_URI", uri: "amqp://guest:Wrong-Secret@127.0.0.1:5672/", refusal: "403"},
		// The embedded MongoDB refuses the driver's SCRAM login outright.
		{variable: "MONGODB_URI", uri: mongoURI.String(), refusal: "AuthenticationFailed"},
	} {
		t.Run(tc.variable, func(t *testing.T) {
			env := testenv.Env(t, map[string]string{tc.variable: tc.uri})
			done := make(chan error, 1)
			go func() {
				done <- run(context.Background(), []string{"publisher"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.variable) || !strings.Contains(err.Error(), tc.refusal) {
					t.Fatalf("run: %v, want the refusal (%s), naming %s", err, tc.refusal, tc.variable)
				}
				if strings.Contains(err.Error(), "Wrong-Secret") {
					t.Fatalf("the error quotes the password: %v", err)
				}
			case <-time.After(90 * time.Second): // three tries, not two minutes of them
				t.Fatal("run still waiting 90 s after its password was refused")
			}
		})
	}
}

// TestStopWhileWaitingForADependencyIsNoError: Ctrl-C while a process
// waits for its broker to come up ends it cleanly (exit status 0).
func TestStopWhileWaitingForADependencyIsNoError(t *testing.T) {
	env := testenv.Env(t, map[string]string{"RABBITMQ_URI": "amqp://guest:guest@" + testenv.FreeAddr(t) + "/"})
	ctx, cancel := context.WithCancel(context.Background())
	out := &logbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"publisher"}, func(k string) string { return env[k] }, out, io.Discard)
	}()
	testenv.WaitFor(t, 30*time.Second, "the process waiting for its broker", func() bool {
		return strings.Contains(out.String(), "dependencies not ready")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run stopped while waiting: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30 s after it was stopped")
	}
}

// TestPartFailingWhileTheStartWaitsIsReported: a part already running
// (here the profiler's server) that fails while the process waits for its
// broker ends the start with that part's error, not with the exit status 0
// of a stop.
func TestPartFailingWhileTheStartWaitsIsReported(t *testing.T) {
	pprofAddr := testenv.FreeAddr(t)
	env := testenv.Env(t, map[string]string{
		"RABBITMQ_URI": "amqp://guest:guest@" + testenv.FreeAddr(t) + "/",
		"PPROF_ADDR":   pprofAddr,
	})
	breakListener := make(chan struct{})
	listen = func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil || addr != pprofAddr {
			return ln, err
		}
		return &breakingListener{Listener: ln, broken: breakListener}, nil
	}
	t.Cleanup(func() { listen = net.Listen })
	out := &logbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"publisher"}, func(k string) string { return env[k] }, out, io.Discard)
	}()
	testenv.WaitFor(t, 30*time.Second, "the process waiting for its broker", func() bool {
		return strings.Contains(out.String(), "dependencies not ready")
	})
	close(breakListener)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listener broke") {
			t.Fatalf("run: %v, want the profiler server's error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return 30 s after one of its parts failed")
	}
}

// breakingListener's Accept fails for good once broken is closed.
type breakingListener struct {
	net.Listener
	broken chan struct{}
}

func (l *breakingListener) Accept() (net.Conn, error) {
	<-l.broken
	return nil, errors.New("listener broke")
}

// TestRolesStartedTogetherShareOneMongoDB: roles started together (bin/rms
// mongodb & bin/rms api & ...) all find no embedded MongoDB and race to
// start one. A role that loses waits for the winner's instead of exiting,
// and starts its own if the winner dies before it answers.
func TestRolesStartedTogetherShareOneMongoDB(t *testing.T) {
	for _, winnerDies := range []bool{false, true} {
		t.Run(fmt.Sprintf("winner dies %v", winnerDies), func(t *testing.T) {
			env := testenv.Env(t, map[string]string{"LOG_LEVEL": "info"})
			// The winner, still starting: it holds the address, and
			// nothing answers there until it forwards to a real server.
			ln, err := net.Listen("tcp", env["EMBEDDED_MONGODB_ADDR"])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			var backend atomic.Value // string: the address to forward to, once up
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go forward(c, backend.Load())
				}
			}()
			out := &logbuf.Buffer{}
			waiting := make(chan struct{})
			go func() {
				defer close(waiting)
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					if strings.Contains(out.String(), "another process is starting the embedded mongodb") {
						return
					}
				}
			}()
			dir := filepath.Join(env["DATA_DIR"], "mongodb")
			winner := make(chan error, 1)
			var srv *embedded.Server
			go func() {
				<-waiting
				if winnerDies {
					ln.Close()
					winner <- nil
					return
				}
				var err error
				if srv, err = embedded.Start(context.Background(), embedded.Config{Addr: "127.0.0.1:0", Dir: dir}); err == nil {
					backend.Store(strings.TrimSuffix(strings.TrimPrefix(srv.URI(), "mongodb://"), "/"))
				}
				winner <- err
			}()
			t.Cleanup(func() { // after the api's stop
				if err := <-winner; err != nil {
					t.Errorf("start the winner's mongodb: %v", err)
				} else if srv != nil {
					srv.Close(context.Background())
				}
			})
			_, _, stop := startRole(t, "api", env, out)
			stop()
			want := "using the embedded mongodb already running"
			if winnerDies {
				want = "embedded mongodb started"
			}
			if !strings.Contains(out.String(), "waiting for it") || !strings.Contains(out.String(), want) {
				t.Errorf("the api did not wait, then log %q:\n%s", want, out.String())
			}
		})
	}
}

// refusal runs role with env and returns the error it ends with, failing
// the test if it ends without one or still runs 30 s later (then it is
// stopped).
func refusal(t *testing.T, role string, env map[string]string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{role}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("%s ended without an error, want a refusal", role)
		}
		return err
	case <-time.After(30 * time.Second):
		cancel()
		<-done
		t.Fatalf("%s still runs 30 s after it started, want a refusal", role)
		return nil
	}
}

// TestRoleWaitsForTheServerThatHoldsItsDirectory: a role that finds its
// address free but its DATA_DIR held by another process's embedded
// MongoDB (with EMBEDDED_MONGODB_SYNC=normal a winner of the start race
// binds the address last) waits for that server to answer, instead of
// exiting or starting a second one on the directory.
func TestRoleWaitsForTheServerThatHoldsItsDirectory(t *testing.T) {
	env := testenv.Env(t, map[string]string{"LOG_LEVEL": "info"})
	srv, err := embedded.Start(context.Background(), embedded.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(env["DATA_DIR"], "mongodb")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) }) // after the api's stop
	out := &logbuf.Buffer{}
	ctx, end := context.WithCancel(context.Background())
	served := make(chan struct{})
	t.Cleanup(func() { end(); <-served })
	go func() {
		defer close(served)
		for !strings.Contains(out.String(), "another process is starting the embedded mongodb") {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		// The server now answers at the role's address. The role, trying
		// to start its own, binds it for a moment every 200 ms.
		var ln net.Listener
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if ln, err = net.Listen("tcp", env["EMBEDDED_MONGODB_ADDR"]); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Error(err)
			return
		}
		stopListening := context.AfterFunc(ctx, func() { ln.Close() })
		defer stopListening()
		backend := strings.TrimSuffix(strings.TrimPrefix(srv.URI(), "mongodb://"), "/")
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go forward(c, backend)
		}
	}()
	_, _, stop := startRole(t, "api", env, out)
	stop()
	if !strings.Contains(out.String(), "waiting for it") || !strings.Contains(out.String(), "using the embedded mongodb already running") {
		t.Errorf("the api did not wait for the server holding its directory, then use it:\n%s", out.String())
	}
}

// TestRunningMongoDBWithoutFsyncIsRefused: a role whose
// EMBEDDED_MONGODB_SYNC is full does not use a running embedded MongoDB
// started with normal, whose acknowledged writes a power cut can take
// back; a role set to normal uses it.
func TestRunningMongoDBWithoutFsyncIsRefused(t *testing.T) {
	env := testenv.Env(t, map[string]string{"LOG_LEVEL": "info"})
	srv, err := embedded.Start(context.Background(), embedded.Config{
		Addr: env["EMBEDDED_MONGODB_ADDR"], Dir: filepath.Join(env["DATA_DIR"], "mongodb"), Sync: "normal",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	if err := refusal(t, "api", env); !strings.Contains(err.Error(), "EMBEDDED_MONGODB_SYNC=normal") {
		t.Fatalf("run: %v, want a refusal naming EMBEDDED_MONGODB_SYNC", err)
	}
	env["EMBEDDED_MONGODB_SYNC"] = "normal"
	out := &logbuf.Buffer{}
	_, _, stop := startRole(t, "api", env, out)
	stop()
	if !strings.Contains(out.String(), "using the embedded mongodb already running") {
		t.Errorf("a role set to normal did not use the running server:\n%s", out)
	}
}

// TestRunningMongoDBWithAnotherDataDirIsRefused: a role that finds an
// embedded MongoDB already answering at its address uses it only if it
// keeps its data in the role's DATA_DIR; one started with another
// directory (another checkout, another DATA_DIR) is refused with an error
// naming both, instead of serving another directory's messages. A server
// that does not say where its data is is used, with a warning.
func TestRunningMongoDBWithAnotherDataDirIsRefused(t *testing.T) {
	env := testenv.Env(t, map[string]string{"LOG_LEVEL": "info"})
	other := t.TempDir()
	srv, err := embedded.Start(context.Background(), embedded.Config{Addr: env["EMBEDDED_MONGODB_ADDR"], Dir: other})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	if err := refusal(t, "api", env); !strings.Contains(err.Error(), "DATA_DIR") || !strings.Contains(err.Error(), other) ||
		!strings.Contains(err.Error(), filepath.Join(env["DATA_DIR"], "mongodb")) {
		t.Fatalf("run: %v, want a refusal naming DATA_DIR and both directories", err)
	}

	// Without the server's word on its directory, the role uses it.
	client, err := mongo.Connect(options.Client().ApplyURI(srv.URI()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	if err := client.Database("rms_embedded").Drop(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := &logbuf.Buffer{}
	_, _, stop := startRole(t, "api", env, out)
	stop()
	if !strings.Contains(out.String(), "does not say where it keeps its data") {
		t.Errorf("no warning that the server's directory is unknown:\n%s", out)
	}
}

// TestRoleWaitsForAServerToNameItsDirectory: a server answers a moment
// before it records where its data is, and a copied directory names its
// old place until then. A role that finds another directory named asks
// again for a while before it refuses, and uses the server once it names
// the role's DATA_DIR.
func TestRoleWaitsForAServerToNameItsDirectory(t *testing.T) {
	env := testenv.Env(t, map[string]string{"LOG_LEVEL": "info"})
	srv, err := embedded.Start(context.Background(), embedded.Config{Addr: env["EMBEDDED_MONGODB_ADDR"], Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(context.Background()) })
	client, err := mongo.Connect(options.Client().ApplyURI(srv.URI()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	want, err := filepath.Abs(filepath.Join(env["DATA_DIR"], "mongodb"))
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(500*time.Millisecond, func() {
		_, err := client.Database("rms_embedded").Collection("server").UpdateOne(context.Background(),
			bson.D{{Key: "_id", Value: "server"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "dataDir", Value: want}}}})
		if err != nil {
			t.Error(err)
		}
	})
	out := &logbuf.Buffer{}
	_, _, stop := startRole(t, "api", env, out)
	stop()
	if !strings.Contains(out.String(), "using the embedded mongodb already running") {
		t.Errorf("the api did not use the server once it named its DATA_DIR:\n%s", out)
	}
}

// forward copies between c and the server at backend (a host:port string),
// or closes c while backend is not set.
func forward(c net.Conn, backend any) {
	defer c.Close()
	addr, _ := backend.(string)
	if addr == "" {
		return
	}
	b, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer b.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
	<-done
}

// TestShutdownFinishesDeliveriesInFlight: a stop (SIGINT, SIGTERM) during
// a webhook call lets the call finish and its outcome be recorded. The
// embedded MongoDB, cut off by the stop signal, used to close under the
// processor 3 s into the drain: the answer was lost and the message went
// back to the queue.
func TestShutdownFinishesDeliveriesInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var calls sync.Map
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, again := calls.LoadOrStore(r.Header.Get("webhook-id"), true); !again {
			close(entered)
		}
		<-release
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(hook.Close)
	var releaseOnce sync.Once
	releaseCall := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseCall) // before hook.Close, which waits for the call
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": hook.URL, "WEBHOOK_TIMEOUT": "20s"})
	api, out, stop := startSystemLogged(t, env)
	resp, b := do(t, "POST", api+"/messages", `{"to":"+905551111111","content":"slow"}`, map[string]string{"Content-Type": "application/json"})
	var m message.Message
	if err := json.Unmarshal(b, &m); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST answered %d: %v %s", resp.StatusCode, err, b)
	}
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the webhook was not called")
	}
	logged := len(out.String()) // the start-up's lines (503s while it starts) are not the shutdown's
	stopped := make(chan struct{})
	go func() {
		stop()
		close(stopped)
	}()
	// Longer than the 3 s FerretDB gives its clients once it is stopped.
	time.Sleep(4 * time.Second)
	releaseCall()
	<-stopped
	if during := out.String()[logged:]; strings.Contains(during, `"level":"ERROR"`) {
		t.Errorf("errors logged during the shutdown:\n%s", during)
	}

	api, stop = startSystem(t, env)
	defer stop()
	if m = getMessage(t, api, m.ID); m.Status != message.StatusSent || m.Attempts != 1 {
		t.Fatalf("after the restart: %+v, want SENT after one attempt", m)
	}
}

// TestWebhookRateLimitDrainsABacklog: with an outbound limit, a backlog
// five times what fits in one inline wait (10/s for 2 s) is delivered
// in full, each message once, and no faster than the limit allows. The
// messages that do not fit are deferred; were their refused tokens taken
// anyway, the limiter's schedule would run ahead of every deferred message
// and delivery would stop.
func TestWebhookRateLimitDrainsABacklog(t *testing.T) {
	const n, rate, burst = 100, 10, 1
	hook, url := newSink(t)
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": url,
		"WEBHOOK_RATE_LIMIT": strconv.Itoa(rate), "WEBHOOK_RATE_BURST": strconv.Itoa(burst)})
	api, stop := startSystem(t, env)
	defer stop()
	start := time.Now()
	for i := range n {
		body := fmt.Sprintf(`{"to":"+90555%07d","content":"limited %d"}`, i, i)
		if resp, b := do(t, "POST", api+"/messages", body, map[string]string{"Content-Type": "application/json"}); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST answered %d: %s", resp.StatusCode, b)
		}
	}
	// At the limit they take 10 s; deferrals add the relay's pace.
	waitFor(t, time.Minute, func() bool { return hook.distinct() >= n }, func() string {
		return fmt.Sprintf("webhook saw %d of %d messages", hook.distinct(), n)
	})
	if took, least := time.Since(start), time.Duration(n-burst)*time.Second/rate; took < least {
		t.Errorf("%d deliveries took %s, faster than the limit allows (%s)", n, took, least)
	}
	time.Sleep(time.Second)
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.total != n {
		t.Errorf("webhook received %d deliveries of %d messages, want each once", hook.total, n)
	}
	// The limit's work shows on GET /metrics: deliveries waited in place,
	// and the messages that did not fit were put back in the outbox.
	_, b := do(t, "GET", api+"/metrics", "", nil)
	for _, action := range []string{"waited", "deferred"} {
		m := regexp.MustCompile(`rms_rate_limited_total\{action="` + action + `",limit="webhook"\} (\d+)`).FindSubmatch(b)
		if m == nil || string(m[1]) == "0" {
			t.Errorf("/metrics counts no delivery %s by the rate limit:\n%s", action, b)
		}
	}
}

// TestEndToEnd posts 500 messages concurrently and checks that the webhook
// received each exactly once and that every message ends SENT.
func TestEndToEnd(t *testing.T) {
	const n = 500
	hook, url := newSink(t)
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": url})
	api, stop := startSystem(t, env)
	defer stop()

	ids := make(chan string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				body := fmt.Sprintf(`{"to":"+90555%07d","content":"message %d"}`, i, i)
				resp, err := http.Post(api+"/messages", "application/json", bytes.NewBufferString(body))
				if err != nil {
					errs <- err
					continue
				}
				var m message.Message
				err = json.NewDecoder(resp.Body).Decode(&m)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted || err != nil || resp.Header.Get("Location") != "/messages/"+m.ID {
					errs <- fmt.Errorf("POST answered %d %v location %q", resp.StatusCode, err, resp.Header.Get("Location"))
					continue
				}
				ids <- m.ID
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Fatal(err)
	}
	accepted := map[string]bool{}
	for id := range ids {
		accepted[id] = true
	}
	if len(accepted) != n {
		t.Fatalf("accepted %d distinct messages, want %d", len(accepted), n)
	}

	waitFor(t, 3*time.Minute, func() bool { return hook.distinct() >= n }, func() string {
		return fmt.Sprintf("webhook saw %d of %d messages", hook.distinct(), n)
	})
	// Give a duplicate, if any, the chance to arrive before counting.
	time.Sleep(time.Second)
	hook.mu.Lock()
	for id, c := range hook.seen {
		if !accepted[id] {
			t.Errorf("webhook received unknown id %s", id)
		}
		if c != 1 {
			t.Errorf("webhook received %s %d times", id, c)
		}
	}
	hook.mu.Unlock()

	var sent []message.Message
	waitFor(t, time.Minute, func() bool {
		sent = listAll(t, api, "SENT", nil)
		return len(sent) == n
	}, func() string { return fmt.Sprintf("%d of %d messages SENT", len(sent), n) })
	for _, m := range sent {
		if !accepted[m.ID] || m.Attempts != 1 || m.SentAt == nil || m.WebhookMessageID != "wh-"+m.ID {
			t.Fatalf("unexpected SENT message %+v", m)
		}
	}

	// The counts are on GET /metrics, in the Prometheus text format. A
	// delivery is counted just after its outcome is written, so the last
	// ones may come a moment after the list shows them SENT.
	want := []string{
		`rms_messages_total{event="accepted"} 500`,
		`rms_messages_total{event="delivered"} 500`,
		`rms_outbox_backlog 0`,
		`rms_circuit_breaker_state 0`,
		`rms_latency_seconds_count{kind="delivery"} 500`,
	}
	var b []byte
	waitFor(t, 10*time.Second, func() bool {
		_, b = do(t, "GET", api+"/metrics", "", nil)
		for _, w := range want {
			if !bytes.Contains(b, []byte(w)) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("/metrics lacks one of %q:\n%s", want, b) })
}

// listAll follows the cursor through every page of GET /messages?status=.
func listAll(t *testing.T, api, status string, header map[string]string) []message.Message {
	t.Helper()
	var all []message.Message
	cursor := ""
	for {
		resp, b := do(t, "GET", fmt.Sprintf("%s/messages?status=%s&limit=200&cursor=%s", api, status, cursor), "", header)
		var page message.Page
		err := json.Unmarshal(b, &page)
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET /messages answered %d: %v %s", resp.StatusCode, err, b)
		}
		all = append(all, page.Items...)
		if page.NextCursor == "" {
			return all
		}
		cursor = page.NextCursor
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", timeout, msg())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSecondSignalStopsAtOnce: the first SIGTERM (or Ctrl-C) ends the
// run's context and says that a second one stops at once; the second ends
// the process though its stop has not finished. The process is this test
// binary again, run as signalHelper, which never finishes its stop.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "RMS_SIGNAL_HELPER=1")
	stderr := &logbuf.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	testenv.WaitFor(t, 30*time.Second, "the helper ready", func() bool { return strings.Contains(stderr.String(), "ready") })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the notice on stderr", func() bool { return strings.Contains(stderr.String(), "Ctrl-C again") })
	select {
	case err := <-exited:
		t.Fatalf("the helper exited on the first signal: %v\n%s", err, stderr)
	case <-time.After(200 * time.Millisecond):
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("the helper ended with %v, want killed by the second SIGTERM", err)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the second SIGTERM did not end the process")
	}
}

// TestStopWithoutASignalSaysNothing: a process that ends on its own (rms
// setup) prints no notice of a stop.
func TestStopWithoutASignalSaysNothing(t *testing.T) {
	out := &logbuf.Buffer{}
	ctx, stop := stopOnSignal(out)
	stop()
	<-ctx.Done()
	// The notice can only come from stopOnSignal's goroutine, so once it
	// has returned the output is final; a fixed sleep could check it
	// before the goroutine had even run. Goroutines of package main are
	// named by their import path, which ends in local.
	testenv.WaitFor(t, 10*time.Second, "stopOnSignal's goroutine to return", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "local.stopOnSignal.func")
	})
	if out.String() != "" {
		t.Fatalf("notice without a signal: %q", out)
	}
}

// TestMain runs the signal helper when TestSecondSignalStopsAtOnce starts
// this binary as one, and the tests otherwise, through testenv so that the
// embedded MongoDB they share is stopped and its data removed at the end.
func TestMain(m *testing.M) {
	if os.Getenv("RMS_SIGNAL_HELPER") == "1" {
		signalHelper()
	}
	testenv.Main(m)
}

// signalHelper is the process TestSecondSignalStopsAtOnce signals: a run
// whose stop never finishes.
func signalHelper() {
	ctx, stop := stopOnSignal(os.Stderr)
	defer stop()
	fmt.Fprintln(os.Stderr, "ready")
	<-ctx.Done()
	time.Sleep(time.Hour) // deliveries in flight that never finish
}

// TestSlowBodyIsCutOff: a client that sends its headers and then trickles
// its body (or sends none) loses the connection after the server's read
// timeout, instead of holding it, and a goroutine, for good.
func TestSlowBodyIsCutOff(t *testing.T) {
	defer func(d time.Duration) { serverReadTimeout = d }(serverReadTimeout)
	serverReadTimeout = time.Second
	env := testenv.Env(t, nil)
	api, stop := startSystem(t, env)
	defer stop()
	conn, err := net.Dial("tcp", strings.TrimPrefix(api, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = io.ReadAll(conn) // whatever the server answers, then its close
	if err != nil {
		t.Fatalf("connection still open %s after the body stalled: %v", time.Since(start).Round(time.Millisecond), err)
	}
}

// TestPublisherAloneServesItsStatusAndMetrics: the publisher role run in a
// process of its own (as compose runs it) reports its health and the
// messages it published on PUBLISHER_ADDR, since no other process has
// those counts.
func TestPublisherAloneServesItsStatusAndMetrics(t *testing.T) {
	env := testenv.Env(t, nil)
	api, _, stopAPI := startRole(t, "api", env, &logbuf.Buffer{})
	defer stopAPI()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"publisher"}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("publisher: %v", err)
		}
	}()
	pub := "http://" + env["PUBLISHER_ADDR"]
	get := func(path string) (int, string) {
		resp, err := http.Get(pub + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.WaitFor(t, 60*time.Second, "the publisher's status", func() bool {
		code, _ := get("/status")
		return code == http.StatusOK
	})

	// A scheduled message takes no fast path: the publisher publishes it.
	body := fmt.Sprintf(`{"to":"+905551111111","content":"later","sendAt":%q}`, time.Now().Add(2*time.Second).UTC().Format(time.RFC3339Nano))
	resp, err := http.Post(api+"/messages", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST answered %d", resp.StatusCode)
	}
	testenv.WaitFor(t, 30*time.Second, "the publisher's metrics to count the message", func() bool {
		_, metrics := get("/metrics")
		return strings.Contains(metrics, `rms_messages_total{event="published"} 1`)
	})
	// With no processor running, the message waits in the queue; the
	// relay's passes are reported, none failed.
	_, metrics := get("/metrics")
	for _, want := range []string{
		fmt.Sprintf(`rms_queue_messages_ready{queue=%q} 1`, env["RABBITMQ_QUEUE"]),
		fmt.Sprintf(`rms_queue_messages_ready{queue=%q} 0`, env["RABBITMQ_DLQ"]),
		fmt.Sprintf(`rms_queue_consumers{queue=%q} 0`, env["RABBITMQ_QUEUE"]),
		"rms_relay_pass_failures_total 0",
		"rms_relay_last_pass_timestamp_seconds ",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("the publisher's metrics lack %q:\n%s", want, metrics)
		}
	}
	code, status := get("/status")
	var report struct {
		Service    string
		Status     string
		LastPassAt *time.Time
	}
	if err := json.Unmarshal([]byte(status), &report); err != nil || code != http.StatusOK {
		t.Fatalf("GET /status: %d %s (%v)", code, status, err)
	}
	if report.Service != "publisher" || report.Status != "ok" || report.LastPassAt == nil || time.Since(*report.LastPassAt) > time.Minute {
		t.Fatalf("GET /status = %s, want the publisher ok with a recent lastPassAt", status)
	}
}
