package deploytest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/redistest"
	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
)

// makeEnv is the test's environment without the variables named, nor those
// of a make the test runs under.
func makeEnv(drop ...string) []string {
	drop = append(drop, "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, d := range drop {
			if name == d {
				keep = false
			}
		}
		if keep {
			env = append(env, kv)
		}
	}
	return env
}

// makeDry returns what `make -n target args...` would run in the repository.
func makeDry(t *testing.T, env []string, target string, args ...string) string {
	t.Helper()
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Fatal("make is not installed: install it (apt-get install make) to check the Makefile")
	}
	cmd := exec.Command(mk, append([]string{"-n", "--no-print-directory", "-C", testenv.RepoRoot(t), target}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %s: %v\n%s", target, err, out)
	}
	return string(out)
}

// TestMakeCleanKeepsTheData: `make clean` removes build output only; the
// embedded MongoDB's data (every accepted message) goes only with `make
// clean-data`, which deletes DATA_DIR as the binary reads it (unset or
// empty: ./.data).
func TestMakeCleanKeepsTheData(t *testing.T) {
	env := makeEnv("DATA_DIR")
	custom := filepath.Join(t.TempDir(), "data")

	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"default", env, nil},
		{"DATA_DIR in the environment", append(env, "DATA_DIR="+custom), nil},
		{"DATA_DIR on the command line", env, []string{"DATA_DIR=" + custom}},
	} {
		out := makeDry(t, c.env, "clean", c.args...)
		if strings.Contains(out, ".data") || strings.Contains(out, custom) {
			t.Errorf("%s: make clean would delete the data directory:\n%s", c.name, out)
		}
		if !strings.Contains(out, "rm -rf bin build .aws-sam") {
			t.Errorf("%s: make clean no longer removes the build output:\n%s", c.name, out)
		}
	}

	if out := makeDry(t, env, "clean-data"); !strings.Contains(out, "rm -rf -- './.data'") {
		t.Errorf("make clean-data does not delete ./.data:\n%s", out)
	}
	if out := makeDry(t, append(env, "DATA_DIR="), "clean-data"); !strings.Contains(out, "rm -rf -- './.data'") {
		t.Errorf("make clean-data with an empty DATA_DIR (the binary's ./.data) does not delete ./.data:\n%s", out)
	}
	if out := makeDry(t, append(env, "DATA_DIR="+custom), "clean-data"); !strings.Contains(out, "rm -rf -- '"+custom+"'") || strings.Contains(out, ".data") {
		t.Errorf("make clean-data does not delete DATA_DIR=%s (and only it):\n%s", custom, out)
	}

	// For real, on a directory of the test's own.
	if err := os.MkdirAll(filepath.Join(custom, "mongodb"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(custom, "mongodb", "messages.sqlite"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "--no-print-directory", "-C", testenv.RepoRoot(t), "clean-data", "DATA_DIR="+custom)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make clean-data DATA_DIR=%s: %v\n%s", custom, err, out)
	}
	if _, err := os.Stat(custom); !os.IsNotExist(err) {
		t.Errorf("make clean-data left %s (stat: %v)", custom, err)
	}

	// make help shows the warning.
	help := exec.Command("make", "--no-print-directory", "-C", testenv.RepoRoot(t), "help")
	help.Env = env
	out, err := help.CombinedOutput()
	if err != nil {
		t.Fatalf("make help: %v\n%s", err, out)
	}
	var line string
	for l := range strings.Lines(string(out)) {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "clean-data" {
			line = l
		}
	}
	if !strings.Contains(line, "every stored message") {
		t.Errorf("make help: clean-data does not warn that it deletes every stored message: %q", line)
	}
}

// TestCheckServicesNamesDockerInfra: when the local RabbitMQ and Redis do
// not answer, scripts/check-services.sh says how to start each natively and
// with `make docker-infra`. The script runs in a network namespace of its
// own (unshare), where nothing answers.
func TestCheckServicesNamesDockerInfra(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("unshare is not installed: install util-linux to check scripts/check-services.sh with no service answering")
	}
	script := filepath.Join(testenv.RepoRoot(t), "scripts", "check-services.sh")
	cmd := exec.Command(unshare, "-rn", "bash", script)
	cmd.Env = makeEnv("RABBITMQ_URI", "REDIS_URI")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	out := stderr.String()
	if strings.HasPrefix(out, "unshare:") {
		t.Fatalf("unshare -rn cannot make a network namespace here (user namespaces off?): %s", out)
	}
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("check-services.sh with nothing answering: exit %d (%v), want 1\nstdout: %s\nstderr: %s", code, err, stdout.String(), out)
	}
	rabbit := strings.Index(out, "RabbitMQ is not answering on 127.0.0.1:5672")
	redis := strings.Index(out, "Redis is not answering on 127.0.0.1:6379")
	if rabbit < 0 || redis < rabbit {
		t.Fatalf("check-services.sh does not report RabbitMQ, then Redis, as not answering:\n%s", out)
	}
	for _, c := range []struct{ name, text, native string }{
		{"RabbitMQ", out[rabbit:redis], "rabbitmq-server -detached"},
		{"Redis", out[redis:], "redis-server --daemonize yes"},
	} {
		if !strings.Contains(c.text, c.native) {
			t.Errorf("%s: the hint does not say how to start it natively (%s):\n%s", c.name, c.native, c.text)
		}
		if !strings.Contains(c.text, "make docker-infra") {
			t.Errorf("%s: the hint does not mention the Docker alternative, make docker-infra:\n%s", c.name, c.text)
		}
	}
	mk, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "mk", "docker.mk"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^docker-infra:`).Match(mk) {
		t.Error("the hint names make docker-infra, but mk/docker.mk has no such target")
	}
}

// TestCheckServicesNamesMissingTools: with --tools (as make test runs it),
// scripts/check-services.sh fails when a tool some tests run is missing,
// and names each with where it comes from. Here none is on PATH; the
// services answer.
func TestCheckServicesNamesMissingTools(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(testenv.RepoRoot(t), "scripts", "check-services.sh")
	cmd := exec.Command(bash, script, "--tools")
	cmd.Env = append(makeEnv("RABBITMQ_URI", "REDIS_URI", "PATH"), "PATH="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("check-services.sh --tools with no tool on PATH: exit %d (%v), want 1\n%s", code, err, stderr.String())
	}
	for _, want := range []string{"rabbitmqctl is not on PATH", "redis-server is not on PATH", "unshare is not on PATH"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("check-services.sh --tools does not say %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "not answering") {
		t.Errorf("check-services.sh --tools reports a service down, but they answer:\n%s", stderr.String())
	}
}

// redisStartCommands returns the Redis start command that
// scripts/check-services.sh prints, the one its --start path runs, and the
// one the README shows.
func redisStartCommands(t *testing.T) (printed, started, readme string) {
	t.Helper()
	root := testenv.RepoRoot(t)
	script, err := os.ReadFile(filepath.Join(root, "scripts", "check-services.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^\s*echo '\s*(redis-server [^']*)' >&2$`).FindSubmatch(script); m != nil {
		printed = string(m[1])
	}
	if m := regexp.MustCompile(`(?m)^\s*(redis-server --daemonize.*?) >/dev/null 2>&1 \|\| true$`).FindSubmatch(script); m != nil {
		started = string(m[1])
	}
	doc, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile("(?m)^(redis-server --daemonize.*)$").FindSubmatch(doc); m != nil {
		readme = string(m[1])
	}
	if printed == "" || started == "" || readme == "" {
		t.Fatalf("Redis start command not found: printed by check-services.sh %q, run by its --start %q, in the README %q", printed, started, readme)
	}
	return printed, started, readme
}

// TestRedisStartCommandIsPortable: the Redis start command the script prints,
// runs with --start and the README shows is one command, and it needs no
// directory that may be missing or unwritable (/var/lib/redis on macOS or for
// a non-root user): it works with TMPDIR set or unset.
func TestRedisStartCommandIsPortable(t *testing.T) {
	printed, started, readme := redisStartCommands(t)
	if printed != started || printed != readme || printed != redistest.Start {
		t.Errorf("the Redis start commands differ:\n printed by check-services.sh: %s\n run by its --start:           %s\n in the README:                %s\n told by the tests:            %s", printed, started, readme, redistest.Start)
	}
	if !strings.Contains(printed, `--dir "${TMPDIR:-/tmp}"`) {
		t.Errorf("the Redis start command does not keep its --dir in the temporary directory: %s", printed)
	}
	if strings.Contains(printed, "/var/lib") {
		t.Errorf("the Redis start command needs /var/lib, missing on macOS and unwritable for non-root users: %s", printed)
	}
	for _, want := range []string{`--save ""`, "--appendonly no", "--port 6379", "--daemonize yes"} {
		if !strings.Contains(printed, want) {
			t.Fatalf("the Redis start command has no %s: %s", want, printed)
		}
	}

	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed: install it (apt-get install redis-server) to check the start command")
	}
	tmp, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ tmpdir, wantDir string }{{tmp, tmp}, {"", "/tmp"}} {
		// The same command on a free port, in the foreground, so that the
		// test can stop it.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		line := strings.Replace(printed, "--port 6379", "--port "+strconv.Itoa(port), 1)
		line = strings.Replace(line, "--daemonize yes", "--daemonize no", 1)
		line = strings.Replace(line, "redis-server ", redisServer+" ", 1)
		cmd := exec.Command("bash", "-c", "exec "+line)
		cmd.Env = makeEnv("TMPDIR")
		if c.tmpdir != "" {
			cmd.Env = append(cmd.Env, "TMPDIR="+c.tmpdir)
		}
		var logs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		dir, err := redisConfigDir(port, exited)
		_ = cmd.Process.Kill()
		<-exited
		if err != nil {
			t.Errorf("TMPDIR=%q: %s: %v\n%s", c.tmpdir, line, err, logs.String())
			continue
		}
		if want, _ := filepath.EvalSymlinks(c.wantDir); dir != want && dir != c.wantDir {
			t.Errorf("TMPDIR=%q: Redis runs in %q, want %q", c.tmpdir, dir, c.wantDir)
		}
	}
}

// redisConfigDir waits for a Redis on 127.0.0.1:port and returns its dir.
func redisConfigDir(port int, exited <-chan error) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			return "", fmt.Errorf("redis-server exited: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err != nil {
			if time.Now().After(deadline) {
				return "", fmt.Errorf("no answer on port %d: %v", port, err)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$3\r\ndir\r\n")); err != nil {
			return "", err
		}
		// *2 $3 dir $<n> <dir>
		r := bufio.NewReader(c)
		var lines []string
		for len(lines) < 5 {
			l, err := r.ReadString('\n')
			if err != nil {
				return "", fmt.Errorf("CONFIG GET dir: %v (read %q)", err, lines)
			}
			lines = append(lines, strings.TrimRight(l, "\r\n"))
		}
		if lines[0] != "*2" || lines[2] != "dir" {
			return "", fmt.Errorf("CONFIG GET dir answered %q", lines)
		}
		return lines[4], nil
	}
}

// TestReadmeScheduleExampleIsPortable: the README's example of a sendAt a
// minute ahead works with GNU date (Linux) and falls back to BSD date
// (macOS), as scripts/seed.sh does.
func TestReadmeScheduleExampleIsPortable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	subst := regexp.MustCompile(`\$\(date [^)]*\)`)
	found := 0
	for _, m := range subst.FindAllString(string(doc), -1) {
		if !strings.Contains(m, "date -u -d") {
			continue
		}
		found++
		if !strings.Contains(m, "|| date -u -v") {
			t.Errorf("README: %s is GNU date only; add the BSD fallback (|| date -u -v+1M ...), as scripts/seed.sh has", m)
			continue
		}
		out, err := exec.Command("bash", "-c", "echo "+m).Output()
		if err != nil {
			t.Errorf("README: %s: %v", m, err)
			continue
		}
		got, err := time.Parse(time.RFC3339, strings.TrimSpace(string(out)))
		if err != nil {
			t.Errorf("README: %s gives %q, not an RFC 3339 time: %v", m, out, err)
		} else if d := time.Until(got); d < 50*time.Second || d > 70*time.Second {
			t.Errorf("README: %s gives %s, %s from now, want about a minute", m, got, d)
		}
	}
	if found == 0 {
		t.Error("README: no example with date -u -d found (the scheduled-message example moved?)")
	}
}
