package lambdarie_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/lambdarie"
)

var rie, echo string

// TestMain installs the emulator (make bin/aws-lambda-rie) and builds the
// test function once.
func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lambdarie tests:", err)
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
	root, err := lambdarie.ModuleRoot(".")
	if err != nil {
		return 0, err
	}
	if rie, err = lambdarie.InstallRIE(ctx, root); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "lambdarie-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if echo, err = lambdarie.BuildBootstrap(ctx, dir, "./testdata/echo"); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

func startEcho(t *testing.T, opts lambdarie.Options) *lambdarie.Emulator {
	t.Helper()
	opts.RIE, opts.Bootstrap = rie, echo
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := lambdarie.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		if t.Failed() {
			t.Logf("emulator logs:\n%s", e.Logs())
		}
	})
	return e
}

func invoke(t *testing.T, e *lambdarie.Emulator, event string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return e.Invoke(ctx, []byte(event))
}

type echoResponse struct {
	Value string   `json:"value"`
	Env   []string `json:"env"`
	PID   int      `json:"pid"`
}

func TestInvokeColdAndWarm(t *testing.T) {
	e := startEcho(t, lambdarie.Options{Env: []string{"ECHO_SETTING=1"}})
	if _, ok := e.InitDuration(); ok {
		t.Fatal("an init duration before the first invocation: the emulator starts the bootstrap only then")
	}
	var first echoResponse
	for i, want := range []string{"cold", "warm"} {
		body, err := invoke(t, e, `{"do":"echo","value":"`+want+`"}`)
		if err != nil {
			t.Fatalf("invocation %d: %v", i, err)
		}
		var got echoResponse
		if err := json.Unmarshal(body, &got); err != nil || got.Value != want {
			t.Fatalf("invocation %d answered %s (%v), want value %q", i, body, err, want)
		}
		if i == 0 {
			first = got
		} else if got.PID != first.PID {
			t.Errorf("the warm invocation ran in a new process (%d, then %d)", first.PID, got.PID)
		}
	}
	d, ok := e.InitDuration()
	if !ok || d <= 0 || d > 10*time.Second {
		t.Fatalf("init duration %v, %v; logs:\n%s", d, ok, e.Logs())
	}
	t.Logf("cold start of the test function: init %v", d)
	if logs := e.Logs(); strings.Count(logs, "REPORT RequestId:") != 2 {
		t.Errorf("want two REPORT lines in the logs:\n%s", logs)
	}
}

func TestFunctionSeesOnlyItsEnvironment(t *testing.T) {
	t.Setenv("LAMBDARIE_TEST_LEAK", "x")
	e := startEcho(t, lambdarie.Options{Env: []string{"ECHO_SETTING=1"}, Timeout: 7 * time.Second})
	body, err := invoke(t, e, `{"do":"env"}`)
	if err != nil {
		t.Fatal(err)
	}
	var got echoResponse
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ECHO_SETTING", "PATH", "HOME", "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_FUNCTION_TIMEOUT"} {
		if !slices.Contains(got.Env, name) {
			t.Errorf("the function does not see %s: %v", name, got.Env)
		}
	}
	if slices.Contains(got.Env, "LAMBDARIE_TEST_LEAK") {
		t.Errorf("the function sees a variable of the calling process: %v", got.Env)
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		name, event string
		env         []string
		timeout     time.Duration
		status      int
		errType     string
		message     string
	}{
		{name: "handler error", event: `{"do":"error","value":"no such thing"}`, status: 200, errType: "errorString", message: "no such thing"},
		{name: "panic", event: `{"do":"panic","value":"boom"}`, status: 502, errType: "string", message: "boom"},
		{name: "timeout", event: `{"do":"sleep"}`, timeout: time.Second, status: 200, errType: "Sandbox.Timedout", message: "Task timed out after 1.00 seconds"},
		{name: "cold start exits", event: `{"do":"echo"}`, env: []string{"ECHO_FAIL_INIT=1"}, status: 502, errType: "Runtime.ExitError", message: "failed without a response"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := startEcho(t, lambdarie.Options{Env: tc.env, Timeout: tc.timeout})
			_, err := invoke(t, e, tc.event)
			var ie *lambdarie.InvokeError
			if !errors.As(err, &ie) {
				t.Fatalf("got %v, want an *InvokeError", err)
			}
			if ie.StatusCode != tc.status || ie.Type != tc.errType || !strings.Contains(ie.Message, tc.message) {
				t.Errorf("got %d %q %q, want %d %q containing %q", ie.StatusCode, ie.Type, ie.Message, tc.status, tc.errType, tc.message)
			}
			var doc map[string]string
			if err := json.Unmarshal(ie.Document(), &doc); err != nil || doc["errorType"] != ie.Type {
				t.Errorf("error document %s: %v", ie.Document(), err)
			}
		})
	}
}

func TestCloseStopsTheFunction(t *testing.T) {
	e := startEcho(t, lambdarie.Options{})
	body, err := invoke(t, e, `{"do":"echo","value":"x"}`)
	if err != nil {
		t.Fatal(err)
	}
	var got echoResponse
	if err := json.Unmarshal(body, &got); err != nil || got.PID == 0 {
		t.Fatalf("answer %s: %v", body, err)
	}
	e.Close()
	if running(got.PID) {
		t.Errorf("the bootstrap (pid %d) still runs after Close", got.PID)
	}
	if !strings.Contains(e.Logs(), "START RequestId:") {
		t.Errorf("the logs are gone after Close: %q", e.Logs())
	}
	if _, err := invoke(t, e, `{}`); err == nil {
		t.Error("an invocation after Close succeeded")
	}
}

// running reports whether pid is a live process (not gone, not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := lambdarie.Start(ctx, lambdarie.Options{RIE: rie, Bootstrap: "/nonexistent/bootstrap"}); err == nil {
		t.Error("Start with a missing bootstrap succeeded")
	}
	if _, err := lambdarie.Start(ctx, lambdarie.Options{RIE: "", Bootstrap: echo}); err == nil {
		t.Error("Start without an emulator path succeeded")
	}
}
