package chaos

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles the local binary (./local, with the embedded MongoDB) into
// dir and returns its path. race builds it with the race detector.
func Build(dir string, race bool) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find the go command: %w", err)
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "rms")
	args := []string{"build", "-tags", "ferretdb_no_postgresql", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command(gobin, append(args, "./local")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return bin, nil
}

// Exit is a process's end that the harness did not cause.
type Exit struct {
	Role string
	At   time.Time
	Err  string
	// Tail is the end of the process's log.
	Tail string
}

// Proc is one supervised OS process: a role of the local binary, or the
// private redis-server. The harness kills it with -9 and starts it again;
// if it ends by itself, the supervisor records that and restarts it after
// a second, as a process manager would.
type Proc struct {
	Name string
	bin  string
	args []string
	env  []string
	log  string // path of its combined stdout and stderr

	mu          sync.Mutex
	cmd         *exec.Cmd
	done        chan struct{}
	incarnation int
	stopping    bool // exits from now on are expected
	closed      bool
	onExit      func(Exit)
}

// NewProc returns a process that is not started yet.
func NewProc(name, bin string, args, env []string, logPath string, onExit func(Exit)) *Proc {
	return &Proc{Name: name, bin: bin, args: args, env: env, log: logPath, onExit: onExit}
}

// LogPath is the file with every incarnation's output.
func (p *Proc) LogPath() string { return p.log }

// Start starts a new incarnation.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *Proc) startLocked() error {
	if p.closed {
		return errors.New("process closed")
	}
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is already running", p.Name)
		}
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.incarnation++
	fmt.Fprintf(f, "=== chaos: %s start #%d at %s ===\n", p.Name, p.incarnation, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	// The processes die with the test binary even if it is killed itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd, p.done, p.stopping = cmd, make(chan struct{}), false
	go p.wait(cmd, p.done, f)
	return nil
}

func (p *Proc) wait(cmd *exec.Cmd, done chan struct{}, f *os.File) {
	err := cmd.Wait()
	fmt.Fprintf(f, "=== chaos: %s exited at %s: %v ===\n", p.Name, time.Now().Format(time.RFC3339Nano), err)
	f.Close()
	close(done)
	p.mu.Lock()
	expected := p.stopping || p.closed || p.cmd != cmd
	p.mu.Unlock()
	if expected {
		return
	}
	if p.onExit != nil {
		p.onExit(Exit{Role: p.Name, At: time.Now(), Err: fmt.Sprint(err), Tail: tail(p.log, 4)})
	}
	time.Sleep(time.Second)
	p.mu.Lock()
	if !p.closed && !p.stopping && p.cmd == cmd {
		_ = p.startLocked()
	}
	p.mu.Unlock()
}

// Kill kills the running incarnation with SIGKILL and waits for it to end.
func (p *Proc) Kill() {
	if done := p.signal(syscall.SIGKILL); done != nil {
		<-done
	}
}

// Quit sends SIGQUIT (a Go program prints every goroutine's stack and
// exits) and waits up to 10 s for the process to end.
func (p *Proc) Quit() {
	done := p.signal(syscall.SIGQUIT)
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.signal(syscall.SIGKILL)
		<-done
	}
}

// signal marks the running incarnation as stopping on purpose and sends it
// sig. It returns the channel closed when that incarnation ends, or nil if
// none runs.
func (p *Proc) signal(sig syscall.Signal) <-chan struct{} {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.stopping = true
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	return done
}

// Restart starts the process again after a Kill.
func (p *Proc) Restart() error { return p.Start() }

// Close ends the process for good: SIGTERM, then SIGKILL after grace.
func (p *Proc) Close(grace time.Duration) {
	p.mu.Lock()
	p.closed = true
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// Grep returns up to max lines of the process's log that contain every one
// of words.
func (p *Proc) Grep(max int, words ...string) []string {
	f, err := os.Open(p.log)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && len(out) < max {
		line := sc.Bytes()
		ok := true
		for _, w := range words {
			if !bytes.Contains(line, []byte(w)) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p.Name+": "+string(line))
		}
	}
	return out
}

// GrepAfter returns, for each line of the log that contains word, that
// line and the n lines after it, as one string.
func (p *Proc) GrepAfter(n int, word string) []string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return nil
	}
	lines := strings.Split(string(b), "\n")
	var out []string
	for i, l := range lines {
		if strings.Contains(l, word) {
			out = append(out, p.Name+": "+strings.Join(lines[i:min(len(lines), i+n+1)], "\n"))
		}
	}
	return out
}

// tail returns the last n lines of the file at path, leaving out the
// configuration each start logs and cutting long lines.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.Contains(l, `"msg":"starting"`) {
			continue
		}
		if len(l) > 400 {
			l = l[:400] + "..."
		}
		lines = append(lines, "    "+l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitUntil polls cond every 50 ms until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) bool {
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}
