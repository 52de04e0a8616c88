// Package lambdarie runs a Lambda function's bootstrap under the AWS Lambda
// Runtime Interface Emulator (aws-lambda-rie) as a plain process on this
// machine: the emulator serves the Lambda Runtime API to the bootstrap and
// takes invocations over HTTP, as it does inside `sam local invoke`'s
// container. The tests of internal/lambdatest and `make invoke` use it to run
// the real built functions against the local services.
//
// What the emulator does that matters here (measured with the version
// mk/invoke.mk pins):
//
//   - It starts the bootstrap only at the first invocation, so a cold start
//     is part of that invocation's time.
//   - Its REPORT line's "Init Duration" is not the function's init: it times
//     an asynchronous call that returns at once (about 0.3 ms whatever the
//     function does). The real figure is its own log line
//     "INIT REPORT(durationMs: N)" (at log level info), from starting the
//     bootstrap to the bootstrap's first request for an event; InitDuration
//     reads that one.
//   - A handler's error comes back as 200 with Lambda's
//     {"errorMessage","errorType"} document, a panic as 502 with that
//     document, a bootstrap that exits (a failed cold start) as 502 with no
//     body, and a timeout as 200 with the text "Task timed out after N.00
//     seconds". Invoke turns each of these into an *InvokeError.
//   - It passes its own environment on to the function, so the function sees
//     exactly Options.Env.
//   - Its Runtime API listens on 127.0.0.1:9001 unless told otherwise; Start
//     gives each emulator its own port, so several can run at once.
package lambdarie

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// InvocationsPath is where the emulator takes invocations, as Lambda's
// Invoke API does.
const InvocationsPath = "/2015-03-31/functions/function/invocations"

// startTimeout bounds the wait for the emulator to accept connections when
// the caller's context has no earlier deadline. It listens within a few
// milliseconds of starting.
const startTimeout = 10 * time.Second

// Options configure an emulator.
type Options struct {
	// RIE is the path of the aws-lambda-rie binary.
	RIE string
	// Bootstrap is the path of the function's executable.
	Bootstrap string
	// Env is the function's environment, as "KEY=value" entries. The
	// emulator gets only these plus PATH and HOME (when Env does not set
	// them), and hands them on to the function.
	Env []string
	// Timeout is the function's timeout (AWS_LAMBDA_FUNCTION_TIMEOUT, whole
	// seconds, rounded up). Zero leaves the emulator's default, 300 s.
	Timeout time.Duration
}

// Emulator is a running aws-lambda-rie with one function.
type Emulator struct {
	cmd     *exec.Cmd
	addr    string
	logPath string
	client  *http.Client

	done    chan struct{} // closed when the emulator process has exited
	waitErr error

	invokeMu sync.Mutex // the emulator runs one invocation at a time

	closeOnce sync.Once
	closeMu   sync.Mutex
	logs      []byte // the logs, kept once Close removed the file
	closed    bool
}

// Start runs the emulator with opts' bootstrap on a free loopback port and
// returns once it accepts connections. ctx bounds the start only: the
// emulator runs until Close.
func Start(ctx context.Context, opts Options) (*Emulator, error) {
	for _, p := range []struct{ what, path string }{{"aws-lambda-rie", opts.RIE}, {"bootstrap", opts.Bootstrap}} {
		if p.path == "" {
			return nil, fmt.Errorf("lambdarie: the %s path is empty", p.what)
		}
		if fi, err := os.Stat(p.path); err != nil || fi.IsDir() {
			return nil, fmt.Errorf("lambdarie: %s %q is not a file", p.what, p.path)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	// Another process can take a port between our probe and the emulator's
	// bind; the emulator then exits at once, and a new pair of ports is
	// tried.
	var lastErr error
	for range 3 {
		e, retry, err := start(ctx, opts)
		if err == nil {
			return e, nil
		}
		lastErr = err
		if !retry {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, opts Options) (e *Emulator, retry bool, err error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, false, fmt.Errorf("lambdarie: find free ports: %w", err)
	}
	addr, apiAddr := ports[0], ports[1]
	logFile, err := os.CreateTemp("", "lambdarie-*.log")
	if err != nil {
		return nil, false, fmt.Errorf("lambdarie: create log file: %w", err)
	}
	defer logFile.Close() // the child has its own copy of the descriptor

	// Absolute paths: the emulator runs in the bootstrap's directory.
	bootstrap, err := filepath.Abs(opts.Bootstrap)
	if err != nil {
		return nil, false, fmt.Errorf("lambdarie: bootstrap path: %w", err)
	}
	riePath, err := filepath.Abs(opts.RIE)
	if err != nil {
		return nil, false, fmt.Errorf("lambdarie: aws-lambda-rie path: %w", err)
	}
	// Flags go before the bootstrap: the emulator hands everything after
	// the first argument it does not know to the bootstrap. --log-level is
	// explicit because the emulator otherwise reads LOG_LEVEL, the
	// function's own setting, and its info lines carry the init report.
	cmd := exec.Command(riePath,
		"--log-level", "info",
		"--runtime-interface-emulator-address", addr,
		"--runtime-api-address", apiAddr,
		bootstrap)
	cmd.Dir = filepath.Dir(bootstrap)
	cmd.Env = environment(opts)
	// A file, not a pipe: what the emulator writes before it answers an
	// invocation is in the file by the time the answer arrives, so Logs and
	// InitDuration see it with no copying goroutine to wait for.
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		os.Remove(logFile.Name())
		return nil, false, fmt.Errorf("lambdarie: start %s: %w", riePath, err)
	}
	e = &Emulator{
		cmd:     cmd,
		addr:    addr,
		logPath: logFile.Name(),
		client:  &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		done:    make(chan struct{}),
	}
	go func() {
		e.waitErr = cmd.Wait()
		close(e.done)
	}()

	if err := e.waitListening(ctx); err != nil {
		logs := e.Logs()
		e.Close()
		return nil, strings.Contains(logs, "address already in use"),
			fmt.Errorf("lambdarie: %w; its output:\n%s", err, logs)
	}
	return e, false, nil
}

// environment returns the emulator's environment: opts.Env, PATH and HOME
// of this process when opts.Env lacks them, and the function timeout.
func environment(opts Options) []string {
	env := append([]string(nil), opts.Env...)
	has := func(k string) bool {
		for _, kv := range env {
			if strings.HasPrefix(kv, k+"=") {
				return true
			}
		}
		return false
	}
	for _, k := range []string{"PATH", "HOME"} {
		if v, ok := os.LookupEnv(k); ok && !has(k) {
			env = append(env, k+"="+v)
		}
	}
	if opts.Timeout > 0 {
		secs := int64((opts.Timeout + time.Second - 1) / time.Second)
		// Last wins: exec.Cmd keeps the last value of a repeated key.
		env = append(env, "AWS_LAMBDA_FUNCTION_TIMEOUT="+strconv.FormatInt(secs, 10))
	}
	return env
}

func (e *Emulator) waitListening(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", e.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-e.done:
			return fmt.Errorf("aws-lambda-rie exited before it listened on %s (%v)", e.addr, e.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("aws-lambda-rie did not listen on %s: %w", e.addr, ctx.Err())
		case <-tick.C:
		}
	}
}

// freePorts returns n loopback addresses whose ports were free a moment ago.
func freePorts(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}

// URL returns the emulator's invocation URL (for curl, say).
func (e *Emulator) URL() string { return "http://" + e.addr + InvocationsPath }

// InvokeError is an invocation that failed: the handler returned an error,
// panicked, timed out, or the bootstrap exited.
type InvokeError struct {
	// StatusCode is the emulator's HTTP status: 200 for a handler error or
	// a timeout, 502 for a panic or an exit.
	StatusCode int
	// Type and Message are Lambda's errorType and errorMessage.
	Type    string
	Message string
}

func (e *InvokeError) Error() string {
	return fmt.Sprintf("function failed (%s): %s", e.Type, e.Message)
}

// Document returns the failure as Lambda's error document,
// {"errorMessage":...,"errorType":...}.
func (e *InvokeError) Document() []byte {
	b, _ := json.Marshal(struct {
		Message string `json:"errorMessage"`
		Type    string `json:"errorType"`
	}{e.Message, e.Type})
	return b
}

var timedOut = regexp.MustCompile(`^Task timed out after [0-9.]+ seconds$`)

// Invoke runs one invocation with event as its payload and returns the
// function's response as the emulator answered it. A failed invocation
// returns the answer (possibly empty) with an *InvokeError. Calls are
// serialized: the emulator runs one invocation at a time.
func (e *Emulator) Invoke(ctx context.Context, event []byte) ([]byte, error) {
	e.invokeMu.Lock()
	defer e.invokeMu.Unlock()
	logStart := e.logSize()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL(), bytes.NewReader(event))
	if err != nil {
		return nil, fmt.Errorf("lambdarie: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		select {
		case <-e.done:
			return nil, fmt.Errorf("lambdarie: invoke: the emulator exited (%v): %w", e.waitErr, err)
		default:
		}
		return nil, fmt.Errorf("lambdarie: invoke: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("lambdarie: read the invocation's answer: %w", err)
	}
	if ie := classify(resp.StatusCode, body); ie != nil {
		if ie.Message == "" {
			ie.Type, ie.Message = e.failureCause(logStart)
		}
		return body, ie
	}
	return body, nil
}

// classify recognizes the emulator's ways of reporting a failure.
func classify(status int, body []byte) *InvokeError {
	trimmed := bytes.TrimSpace(body)
	if status == http.StatusOK && timedOut.Match(trimmed) {
		return &InvokeError{StatusCode: status, Type: "Sandbox.Timedout", Message: string(trimmed)}
	}
	var doc map[string]json.RawMessage
	isErrDoc := json.Unmarshal(trimmed, &doc) == nil && doc["errorMessage"] != nil
	if isErrDoc {
		// Only Lambda's own fields: a response that merely has an
		// errorMessage among other fields is the function's answer.
		for k := range doc {
			if k != "errorMessage" && k != "errorType" && k != "stackTrace" {
				isErrDoc = false
			}
		}
	}
	if isErrDoc {
		ie := &InvokeError{StatusCode: status}
		_ = json.Unmarshal(doc["errorMessage"], &ie.Message)
		_ = json.Unmarshal(doc["errorType"], &ie.Type)
		return ie
	}
	if status == http.StatusOK {
		return nil
	}
	ie := &InvokeError{StatusCode: status, Type: "Runtime.Unknown"}
	if len(trimmed) > 0 {
		ie.Message = fmt.Sprintf("the emulator answered %d: %s", status, trimmed)
	}
	return ie
}

// runtimeFailure matches the emulator's log of a bootstrap that failed:
// "First fatal error stored in appctx: Runtime.ExitError".
var runtimeFailure = regexp.MustCompile(`First fatal error stored in appctx: (\S+)`)

// failureCause explains a failure the emulator answered with no body, from
// what it logged since offset: Lambda's errorType (Runtime.ExitError for a
// bootstrap that exited) and a message.
func (e *Emulator) failureCause(offset int64) (errType, msg string) {
	logs := e.Logs()
	if offset <= int64(len(logs)) {
		logs = logs[offset:]
	}
	errType = "Runtime.Unknown"
	if m := runtimeFailure.FindAllStringSubmatch(logs, -1); m != nil {
		errType = m[len(m)-1][1]
	}
	return errType, "the function's process failed without a response; see its logs"
}

// Logs returns everything the emulator and the function printed so far:
// the function's stdout and stderr (its structured logs), the emulator's
// START/END/REPORT lines and its own log.
func (e *Emulator) Logs() string {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	if e.closed {
		return string(e.logs)
	}
	b, _ := os.ReadFile(e.logPath)
	return string(b)
}

func (e *Emulator) logSize() int64 {
	fi, err := os.Stat(e.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

var (
	initReport     = regexp.MustCompile(`INIT REPORT\(durationMs: ([0-9.]+)\)`)
	reportInitLine = regexp.MustCompile(`REPORT RequestId: \S+\s+Init Duration: ([0-9.]+) ms`)
)

// InitDuration returns the function's cold-start init time: the first
// "INIT REPORT(durationMs: N)" the emulator logged, from starting the
// bootstrap to its first request for an event. false: no cold start yet.
// Without that line (another emulator version), it falls back to the REPORT
// line's "Init Duration", which this version fills with a meaningless
// fraction of a millisecond.
func (e *Emulator) InitDuration() (time.Duration, bool) {
	logs := e.Logs()
	m := initReport.FindStringSubmatch(logs)
	if m == nil {
		m = reportInitLine.FindStringSubmatch(logs)
	}
	if m == nil {
		return 0, false
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(ms * float64(time.Millisecond)), true
}

// Close stops the emulator and the function's process, and waits for the
// emulator to exit. The logs stay readable.
func (e *Emulator) Close() error {
	e.closeOnce.Do(func() {
		// The emulator starts the bootstrap in a process group of its own,
		// so killing the emulator does not reach it. The bootstrap goes
		// first: killed after the emulator, it would log the loss of its
		// Runtime API. (It would also exit by itself then.)
		children := childPIDs(e.cmd.Process.Pid)
		for _, pid := range children {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		_ = e.cmd.Process.Kill()
		<-e.done
		waitGone(children, 2*time.Second)
		b, _ := os.ReadFile(e.logPath)
		e.closeMu.Lock()
		e.logs, e.closed = b, true
		e.closeMu.Unlock()
		os.Remove(e.logPath)
	})
	return nil
}

// childPIDs lists the children of pid (Linux; nil elsewhere).
func childPIDs(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// waitGone waits until none of pids is running (gone, or a zombie), or for
// at most d.
func waitGone(pids []int, d time.Duration) {
	deadline := time.Now().Add(d)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				break
			}
			// The state follows the parenthesized command name.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X' {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// ErrNoModule is returned by ModuleRoot outside a Go module.
var ErrNoModule = errors.New("lambdarie: no go.mod in this directory or above")
