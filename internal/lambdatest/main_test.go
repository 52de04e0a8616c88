package lambdatest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/lambdarie"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
)

// modulePath is this module's path; the functions are built by import path.
const modulePath = "github.com/Furkan-Gulsen/reliable_messaging_system"

// functionTimeout is every function's timeout under the emulator: far more
// than any invocation here takes, far less than the test binary's timeout.
const functionTimeout = 30 * time.Second

var (
	root       string            // the module root
	rie        string            // aws-lambda-rie
	bootstraps map[string]string // function name -> bootstrap path
)

// TestMain installs the emulator (make bin/aws-lambda-rie, a no-op when it
// is there) and builds the three bootstraps once, in parallel.
func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lambdatest:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	// The builds are not race builds and share nothing with the test
	// binaries': on a cold cache, beside the other packages' builds on two
	// CPUs, they have taken 6 minutes. Within go test's -timeout (30m).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var err error
	if root, err = lambdarie.ModuleRoot("."); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "rms-lambdatest-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)

	names := []string{"api", "publisher", "processor"}
	paths := make([]string, len(names))
	errs := make([]error, len(names)+1)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			paths[i], errs[i] = lambdarie.BuildBootstrap(ctx, filepath.Join(dir, name), modulePath+"/functions/"+name)
		})
	}
	wg.Go(func() { rie, errs[len(names)] = lambdarie.InstallRIE(ctx, root) })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	bootstraps = map[string]string{}
	for i, name := range names {
		bootstraps[name] = paths[i]
	}
	return testenv.Run(m), nil
}

// function is one Lambda function running under its own emulator.
type function struct {
	t            *testing.T
	name         string
	emu          *lambdarie.Emulator
	coldReported bool
}

// startFunction runs the named function with env (testenv.Env's, which
// must hold MONGODB_URI: testenv.App sets it) as its whole configuration.
func startFunction(t *testing.T, name string, env map[string]string) *function {
	t.Helper()
	if env["MONGODB_URI"] == "" {
		env["MONGODB_URI"] = testenv.MongoURI(t)
	}
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	slices.Sort(list)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	emu, err := lambdarie.Start(ctx, lambdarie.Options{RIE: rie, Bootstrap: bootstraps[name], Env: list, Timeout: functionTimeout})
	if err != nil {
		t.Fatalf("start the %s function: %v", name, err)
	}
	f := &function{t: t, name: name, emu: emu}
	t.Cleanup(func() {
		emu.Close()
		if t.Failed() {
			t.Logf("%s function logs:\n%s", name, emu.Logs())
		}
	})
	return f
}

// invokeFile invokes the function with the fixture events/<file> and
// returns its response; a failed invocation fails the test.
func (f *function) invokeFile(file string) []byte {
	f.t.Helper()
	body, err := f.invoke(readEvent(f.t, file))
	if err != nil {
		f.t.Fatalf("invoke %s with %s: %v (answer %s)", f.name, file, err, body)
	}
	return body
}

// invoke invokes the function with event. The first invocation is the cold
// start: its init time, as the emulator reports it, goes to the test log.
func (f *function) invoke(event []byte) ([]byte, error) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), functionTimeout+15*time.Second)
	defer cancel()
	start := time.Now()
	body, err := f.emu.Invoke(ctx, event)
	if !f.coldReported {
		f.coldReported = true
		if d, ok := f.emu.InitDuration(); ok {
			f.t.Logf("%s cold start: init %v (the emulator's INIT REPORT); first invocation %v in all",
				f.name, d.Round(10*time.Microsecond), time.Since(start).Round(10*time.Microsecond))
		} else {
			f.t.Errorf("%s: the emulator reported no init duration; logs:\n%s", f.name, f.emu.Logs())
		}
	}
	return body, err
}

func readEvent(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "events", file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// proxyResponse decodes an API Gateway proxy response.
func proxyResponse(t *testing.T, body []byte) events.APIGatewayProxyResponse {
	t.Helper()
	var r events.APIGatewayProxyResponse
	if err := json.Unmarshal(body, &r); err != nil || r.StatusCode == 0 {
		t.Fatalf("not an API Gateway proxy response (%v): %s", err, body)
	}
	return r
}

// header returns a response header, from headers or multiValueHeaders.
func header(r events.APIGatewayProxyResponse, name string) string {
	for k, v := range r.Headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	for k, v := range r.MultiValueHeaders {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// decodeBody decodes a proxy response's JSON body into v, after checking
// its status.
func decodeBody(t *testing.T, r events.APIGatewayProxyResponse, status int, v any) {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", r.StatusCode, status, r.Body)
	}
	if r.IsBase64Encoded {
		t.Fatalf("body is base64-encoded: %s", r.Body)
	}
	if err := json.Unmarshal([]byte(r.Body), v); err != nil {
		t.Fatalf("body %q: %v", r.Body, err)
	}
}

// drainAtLeast takes messages off queue until it has n or timeout passes.
func drainAtLeast(t *testing.T, queue string, n int, timeout time.Duration) [][]byte {
	t.Helper()
	var out [][]byte
	deadline := time.Now().Add(timeout)
	for {
		out = append(out, testenv.Drain(t, queue)...)
		if len(out) >= n || time.Now().After(deadline) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// webhook is a test webhook that counts deliveries per webhook-id and
// answers like the seed's webhook.
type webhook struct {
	mu    sync.Mutex
	calls map[string]int
}

func (w *webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("webhook-id")
	w.mu.Lock()
	if w.calls == nil {
		w.calls = map[string]int{}
	}
	w.calls[id]++
	w.mu.Unlock()
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(rw, `{"message":"Accepted","messageId":"wh-%s"}`, id)
}

func (w *webhook) counts() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for k, v := range w.calls {
		out[k] = v
	}
	return out
}
