package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Services the system uses on this machine, as make run and make test do.
const (
	defaultRabbitURI = "amqp://guest:guest@127.0.0.1:5672/"
	defaultRedisAddr = "127.0.0.1:6379"
	startRabbit      = "rabbitmq-server -detached"
	startRedis       = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir "${TMPDIR:-/tmp}"`
)

// names are the queues, key prefix and databases of one run, unique to it
// and deleted at its end.
type names struct {
	id          string // bench_<hex>: exchange, queue, MongoDB database
	redisPrefix string
}

func newNames() names {
	id := fmt.Sprintf("bench_%x", time.Now().UnixNano())
	return names{id: id, redisPrefix: id + ":"}
}

func (n names) dlq() string               { return n.id + ".dlq" }
func (n names) rawQueue() string          { return n.id + ".raw" }
func (n names) lambda() string            { return n.id + "_lambda" }
func (n names) lambdaDLQ() string         { return n.id + "_lambda.dlq" }
func (n names) scratchDB() string         { return n.id + "_scratch" }
func (n names) lambdaRedisPrefix() string { return n.redisPrefix + "lambda:" }

func checkServices() error {
	for _, s := range []struct{ name, addr, how string }{
		{"RabbitMQ", "127.0.0.1:5672", startRabbit},
		{"Redis", defaultRedisAddr, startRedis},
	} {
		c, err := net.DialTimeout("tcp", s.addr, 2*time.Second)
		if err != nil {
			return fmt.Errorf("%s is not answering on %s (%v). Start it with: %s", s.name, s.addr, err, s.how)
		}
		c.Close()
	}
	return nil
}

// stack is the running system: one process per role.
type stack struct {
	rms      string
	mongoURI string
	apiURL   string
	procURL  string
	env      map[string]string
	procs    map[string]*proc  // by role
	pprof    map[string]string // PPROF_ADDR by role, with -profile
}

// projectRoles are the project's own processes, whose CPU and memory the
// targets are about; the embedded MongoDB is reported apart.
var projectRoles = []string{"api", "publisher", "processor"}

// startSystem builds the local binary (unless -rms names one), starts the
// embedded MongoDB on an empty data dir, declares the topology with the
// setup role, then starts the api, publisher and processor and waits until
// each answers.
func (b *bench) startSystem(ctx context.Context) error {
	s := &stack{rms: b.opts.RMS, procs: map[string]*proc{}}
	b.stack = s
	// Cleanups run in reverse: the processes stop first, then the run's
	// queues and keys go away.
	b.onCleanup(func(ctx context.Context) {
		deleteQueues(ctx, b.rabbitURI(), b.names.id, b.names.id, b.names.dlq())
		deleteKeys(ctx, b.redisAddr(), b.names.redisPrefix)
	})
	b.onCleanup(func(ctx context.Context) { b.stopSystem(ctx) })
	if s.rms == "" {
		s.rms = filepath.Join(b.dir, "rms")
		b.logf("building %s (go build -tags ferretdb_no_postgresql ./local)", s.rms)
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", "ferretdb_no_postgresql", "-trimpath", "-o", s.rms, "./local")
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build the local binary: %v\n%s", err, out)
		}
	}
	addrs := map[string]string{}
	for _, k := range []string{"EMBEDDED_MONGODB_ADDR", "API_ADDR", "PROCESSOR_ADDR", "PUBLISHER_ADDR", "RECEIVER_ADDR"} {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		addrs[k] = a
	}
	s.mongoURI = "mongodb://" + addrs["EMBEDDED_MONGODB_ADDR"] + "/"
	s.apiURL = "http://" + addrs["API_ADDR"]
	s.procURL = "http://" + addrs["PROCESSOR_ADDR"]
	// Settings the bench must own; every other variable of the caller's
	// environment (PROCESSOR_CONCURRENCY, BATCH_SIZE, LOG_LEVEL, ...)
	// reaches the processes, so that a tuning experiment is one variable.
	s.env = map[string]string{
		"MONGODB_URI":             s.mongoURI,
		"MONGODB_DATABASE":        b.names.id,
		"DATA_DIR":                b.dir,
		"RABBITMQ_URI":            b.rabbitURI(),
		"RABBITMQ_EXCHANGE":       b.names.id,
		"RABBITMQ_QUEUE":          b.names.id,
		"RABBITMQ_DLQ":            b.names.dlq(),
		"REDIS_URI":               b.redisAddr(),
		"REDIS_KEY_PREFIX":        b.names.redisPrefix,
		"WEBHOOK_URL":             b.sink.url,
		"API_KEY":                 "",
		"SCHEDULE_NAME":           "",
		"SCHEDULER_INITIAL_STATE": "started",
	}
	for k, v := range addrs {
		s.env[k] = v
	}
	settings := settingsFromEnvironment(b.getenv, s.env)
	b.rep.set("settings_from_environment", settings)
	if len(settings) > 0 {
		b.rep.title += "; settings from the environment: " + strings.Join(settings, ", ")
	}
	if b.opts.Profile != "" {
		s.pprof = map[string]string{}
		for _, role := range append([]string{"mongodb"}, projectRoles...) {
			a, err := freeAddr()
			if err != nil {
				return err
			}
			s.pprof[role] = a
		}
	}

	// The embedded MongoDB role must start its own server, so it gets no
	// MONGODB_URI.
	mongoEnv := map[string]string{"MONGODB_URI": "", "PPROF_ADDR": s.pprof["mongodb"]}
	p, err := b.startProc("mongodb", mongoEnv)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, p, 60*time.Second, func(ctx context.Context) error { return pingMongo(ctx, s.mongoURI) }); err != nil {
		return err
	}
	b.logf("embedded mongodb ready at %s (pid %d)", s.mongoURI, p.pid())

	// setup declares the exchange, queues and indexes once, so that the
	// three roles do not race to create them.
	setup, err := b.startProc("setup", nil)
	if err != nil {
		return err
	}
	select {
	case <-setup.done:
		if setup.err != nil {
			return fmt.Errorf("rms setup: %v\n%s", setup.err, setup.tail())
		}
	case <-time.After(60 * time.Second):
		return fmt.Errorf("rms setup did not finish within 60s\n%s", setup.tail())
	case <-ctx.Done():
		return ctx.Err()
	}
	delete(s.procs, "setup")

	for _, role := range projectRoles {
		if _, err := b.startProc(role, map[string]string{"PPROF_ADDR": s.pprof[role]}); err != nil {
			return err
		}
	}
	ready := map[string]func(context.Context) error{
		"api":       func(ctx context.Context) error { return httpOK(ctx, s.apiURL+"/status") },
		"processor": func(ctx context.Context) error { return httpOK(ctx, s.procURL+"/status") },
		"publisher": func(ctx context.Context) error { return httpOK(ctx, "http://"+s.env["PUBLISHER_ADDR"]+"/status") },
	}
	for _, role := range projectRoles {
		if err := waitReady(ctx, s.procs[role], 60*time.Second, ready[role]); err != nil {
			return err
		}
	}
	time.Sleep(time.Second)
	for _, role := range projectRoles {
		if err := s.procs[role].exited(); err != nil {
			return err
		}
	}
	b.logf("system up: api %s (pid %d), publisher (pid %d), processor (pid %d)",
		s.apiURL, s.procs["api"].pid(), s.procs["publisher"].pid(), s.procs["processor"].pid())
	return nil
}

// stopSystem stops the project's processes, then the embedded MongoDB.
func (b *bench) stopSystem(ctx context.Context) {
	if b.stack == nil {
		return
	}
	var roles []string
	for _, r := range append([]string{"setup"}, projectRoles...) {
		if b.stack.procs[r] != nil {
			roles = append(roles, r)
		}
	}
	stopAll(ctx, b.stack.procs, roles)
	if p := b.stack.procs["mongodb"]; p != nil {
		stopAll(ctx, b.stack.procs, []string{"mongodb"})
	}
	b.logf("processes stopped")
}

// stopAll stops the processes of roles together: SIGTERM, and SIGKILL to
// those still running 20 s later (one deadline for all, so that stopping
// them does not eat the time the cleanups after it have).
func stopAll(ctx context.Context, procs map[string]*proc, roles []string) {
	for _, r := range roles {
		procs[r].signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, r := range roles {
		procs[r].waitOrKill(ctx, time.Until(deadline))
	}
}

// alive returns an error naming the first process that has exited.
func (s *stack) alive() error {
	for _, role := range append([]string{"mongodb"}, projectRoles...) {
		if p := s.procs[role]; p != nil {
			if err := p.exited(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *bench) rabbitURI() string {
	if v := b.getenv("RABBITMQ_URI"); v != "" {
		return v
	}
	return defaultRabbitURI
}

func (b *bench) redisAddr() string {
	if v := b.getenv("REDIS_URI"); v != "" && !strings.Contains(v, "://") {
		return v
	}
	return defaultRedisAddr
}

// environ is the caller's environment with the stack's settings and extra
// over it (the last of duplicate keys wins in exec.Cmd.Env).
func (b *bench) environ(extra map[string]string) []string {
	env := os.Environ()
	for k, v := range b.stack.env {
		env = append(env, k+"="+v)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// proc is one child process of the run.
type proc struct {
	role string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

func (b *bench) startProc(role string, extra map[string]string) (*proc, error) {
	logPath := filepath.Join(b.dir, role+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.stack.rms, role)
	cmd.Env = b.environ(extra)
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group keeps the terminal's Ctrl-C away from it, so
	// that the bench stops the processes in order; Pdeathsig ends it if the
	// bench itself is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start rms %s: %w", role, err)
	}
	p := &proc{role: role, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	b.stack.procs[role] = p
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// waitOrKill waits up to grace for the process to exit after a signal, then
// kills it.
func (p *proc) waitOrKill(ctx context.Context, grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// exited returns an error if the process has ended.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("rms %s exited (%v); the end of its log:\n%s", p.role, p.err, p.tail())
	default:
		return nil
	}
}

// tail returns the last lines of the process's log.
func (p *proc) tail() string {
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// waitReady polls check until it succeeds, the process exits or timeout
// passes.
func waitReady(ctx context.Context, p *proc, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.exited(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rms %s not ready after %s: %v\n%s", p.role, timeout, err, p.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, url string) error {
	resp, err := get(ctx, url)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// get GETs url and returns the response if it answered 200 OK.
func get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s answered %d", url, resp.StatusCode)
	}
	return resp, nil
}

func pingMongo(ctx context.Context, uri string) error {
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(time.Second))
	if err != nil {
		return err
	}
	defer func() { _ = c.Disconnect(context.WithoutCancel(ctx)) }()
	return c.Ping(ctx, nil)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// moduleRoot is the directory of go.mod, found upwards from the working
// directory (make runs the bench from the repository root).
func moduleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// deleteQueues removes the exchange and queues a run declared.
func deleteQueues(ctx context.Context, uri, exchange string, queues ...string) {
	conn, err := amqp.DialConfig(uri, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	for _, q := range queues {
		if ctx.Err() != nil {
			return
		}
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	if exchange != "" {
		_ = ch.ExchangeDelete(exchange, false, false)
	}
}

// deleteKeys removes every Redis key under prefix.
func deleteKeys(ctx context.Context, addr, prefix string) {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	flush := func() {
		if len(batch) > 0 {
			_ = c.Unlink(ctx, batch...).Err()
			batch = batch[:0]
		}
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			flush()
		}
	}
	flush()
	if err := iter.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return
	}
}
