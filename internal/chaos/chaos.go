// Package chaos runs the local system as separate OS processes (the rms
// binary's mongodb, api, publisher and processor roles), puts load on it,
// injects faults at random moments (kill -9 of a role or of all of them, a
// broker outage through a TCP proxy, the loss of a private Redis, a webhook
// outage) and checks what the README promises: nothing accepted is lost,
// the webhook sees a message twice only in the documented crash-or-timeout
// window, every FAILED message is notified on the dead-letter queue, and
// every retry backs off. docs/chaos.md describes the rules.
package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Options configure a run. Zero values take the defaults of the quick test.
type Options struct {
	// Messages posted, by Clients clients, at Rate messages/s in total.
	Messages int
	Clients  int
	Rate     float64
	// Seed drives the fault schedule, the pauses and the webhook; 0 picks
	// one (printed, so that a run can be repeated).
	Seed uint64
	// Faults are the kinds to inject, shuffled and spread at random over
	// the load. Random, if positive, adds that many kinds drawn from Pool
	// (default AllFaults).
	Faults []string
	Random int
	Pool   []string
	// Race builds the binary with the race detector.
	Race    bool
	Webhook WebhookBehaviour
	// Env overrides the system's environment.
	Env map[string]string
	// SettleTimeout bounds the wait, after the load and the faults, for
	// every accepted message to end SENT or FAILED.
	SettleTimeout time.Duration
	// KeepLogs, if set, is a directory the processes' logs are copied to.
	KeepLogs string
	// SendAtBurst, if positive, schedules every message for the same
	// moment, that long after the run starts: a burst of due work.
	SendAtBurst time.Duration
	// OutageMin and OutageMax bound how long a broker cut or a Redis loss
	// lasts (default 2-5 s).
	OutageMin, OutageMax time.Duration
}

func (o *Options) setDefaults() {
	if o.Messages == 0 {
		o.Messages = 300
	}
	if o.Clients == 0 {
		o.Clients = 16
	}
	if o.Rate == 0 {
		o.Rate = 25
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Webhook == (WebhookBehaviour{}) {
		o.Webhook = WebhookBehaviour{ServerErrors: 0.10, TooMany: 0.04, Timeouts: 0.03, LateSuccesses: 0.01, PermanentSuffix: "99"}
	}
	if o.Webhook.HoldFor == 0 {
		o.Webhook.HoldFor = 3 * time.Second
	}
	if o.SettleTimeout == 0 {
		o.SettleTimeout = 2 * time.Minute
	}
	if o.OutageMin == 0 {
		o.OutageMin = 2 * time.Second
	}
	if o.OutageMax < o.OutageMin {
		o.OutageMax = max(o.OutageMin, 5*time.Second)
	}
}

// Timings are the system's settings for a run: fast, and with a webhook
// timeout short enough for the webhook's slow answers to time out.
var Timings = map[string]string{
	"PUBLISH_INTERVAL":      "200ms",
	"RETRY_BASE_DELAY":      "200ms",
	"RETRY_MAX_DELAY":       "2s",
	"MAX_RETRIES":           "4",
	"WEBHOOK_TIMEOUT":       "1s",
	"STALE_DURATION":        "15s", // must exceed 2*WEBHOOK_TIMEOUT+10s
	"BREAKER_FAILURE_RATIO": "0.6",
	"BREAKER_MIN_REQUESTS":  "20",
	"BREAKER_WINDOW":        "5s",
	"BREAKER_COOLDOWN":      "2s",
	"LOG_LEVEL":             "info",
	"LOG_FORMAT":            "json",
}

// system is the running processes of one run.
type system struct {
	t        testing.TB
	dir      string
	env      map[string]string
	api      string
	mongoURI string
	webhook  *Webhook
	proxy    *Proxy
	redis    *Proc
	roles    map[string]*Proc // mongodb, processor, publisher, api
	rng      *rand.Rand
	rngMu    sync.Mutex
	opts     Options

	exitsMu sync.Mutex
	exits   []Exit
}

// Run starts the system, loads it, injects the faults and returns the
// verdict. Every process is stopped and every temporary file removed when
// t ends, whatever happens.
func Run(t testing.TB, o Options) Summary {
	t.Helper()
	o.setDefaults()
	began := time.Now()
	t.Logf("chaos seed %d (repeat with -chaos.seed=%d): %d messages at %.0f/s, faults %v + %d random",
		o.Seed, o.Seed, o.Messages, o.Rate, o.Faults, o.Random)
	s := start(t, o)

	// The fault schedule: kinds shuffled, moments drawn over the load.
	kinds := append([]string(nil), o.Faults...)
	pool := o.Pool
	if len(pool) == 0 {
		pool = AllFaults
	}
	for range o.Random {
		kinds = append(kinds, pool[s.intn(len(pool))])
	}
	s.rngMu.Lock()
	s.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	s.rngMu.Unlock()
	loadFor := time.Duration(float64(o.Messages) / o.Rate * float64(time.Second))
	at := make([]time.Duration, len(kinds))
	for i := range at {
		at[i] = 2*time.Second + time.Duration(s.float()*float64(max(loadFor-2*time.Second, time.Second)))
	}
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runName := testenv.Name(t)
	loadStart := time.Now()
	load := Load{
		API: s.api, N: o.Messages, Clients: o.Clients, Rate: o.Rate, KeyBase: runName,
		ToFor:  func(i int) string { return fmt.Sprintf("+90555%07d", i) },
		GiveUp: 2 * time.Minute,
		SendAt: func(int) *time.Time {
			if o.SendAtBurst <= 0 {
				return nil
			}
			at := loadStart.Add(o.SendAtBurst)
			return &at
		},
		Deadline: time.Now().Add(loadFor + 2*time.Minute),
	}
	var posts []Post
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		posts = load.Run(ctx)
	}()
	var faults []Fault
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		for i, k := range kinds {
			if d := time.Until(loadStart.Add(at[i])); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			f := s.inject(ctx, k)
			t.Logf("fault %s at %s, restored at %s", f.Kind, f.At.Format("15:04:05.000"), f.Until.Format("15:04:05.000"))
			faults = append(faults, f)
		}
	}()
	// Bounded: the load gives up on a message after GiveUp, and each
	// fault lasts seconds.
	<-loadDone
	<-faultsDone
	t.Logf("load done in %s, %d faults done; waiting for every accepted message to end SENT or FAILED", time.Since(loadStart).Round(time.Second), len(faults))

	var ids []string
	for _, p := range posts {
		if p.ID != "" {
			ids = append(ids, p.ID)
		}
	}
	final := map[string]message.Message{}
	stuck := s.settle(ids, final, o.SettleTimeout)
	if len(stuck) > 0 {
		// A stuck system. Restart every role, as an operator would, and see
		// whether the messages then finish; with -chaos.logs, each role
		// first prints its goroutines (SIGQUIT) into its log.
		for _, role := range []string{"mongodb", "api", "publisher", "processor"} {
			if o.KeepLogs != "" {
				s.roles[role].Quit()
			} else {
				s.roles[role].Kill()
			}
		}
		t.Logf("%d messages stuck: every role restarted (goroutine dumps in the kept logs: %v)", len(stuck), o.KeepLogs != "")
		s.restart(s.roles["mongodb"])
		s.mongoUp(30 * time.Second)
		for _, role := range []string{"processor", "publisher", "api"} {
			s.restart(s.roles[role])
		}
		s.httpUp(s.api+"/status", 60*time.Second)
		s.settle(stuck, final, max(o.SettleTimeout/2, 2*time.Minute))
	}
	s.quiet()
	// The delivery logs as they ended; an id the API cannot answer for
	// keeps its last known state.
	fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	got, missing := s.fetchAll(fctx, ids)
	fcancel()
	for id, m := range got {
		final[id] = m
	}
	for id := range missing {
		delete(final, id)
	}
	in := Input{
		Posts: posts, Final: final, Stored: s.countStored(), Calls: s.webhook.Calls(), Faults: faults,
		DeadLetters: s.drainDLQ(), PermanentSuffix: o.Webhook.PermanentSuffix, Exits: s.unexpectedExits(),
		Retry: message.RetryPolicy{BaseDelay: s.duration("RETRY_BASE_DELAY"), MaxDelay: s.duration("RETRY_MAX_DELAY")},
	}
	sum := Analyze(in)
	sum.Seed = o.Seed
	sum.Stuck = len(stuck)
	for _, role := range []string{"mongodb", "api", "publisher", "processor"} {
		for _, l := range s.roles[role].GrepAfter(25, "WARNING: DATA RACE") {
			sum.DataRaces = append(sum.DataRaces, l)
		}
	}
	sum.Elapsed = time.Since(began)
	t.Log("\n" + sum.Table())
	if f := sum.Findings(15); f != "" {
		t.Log("\n" + f)
	}
	if ev := s.evidence(sum, final, in.Calls); ev != "" {
		t.Log("\n" + ev)
	}
	if o.KeepLogs != "" {
		s.keepLogs(filepath.Join(o.KeepLogs, strings.ReplaceAll(t.Name(), "/", "_")))
	}
	return sum
}

// start builds the binary and starts the private Redis, the broker proxy,
// the webhook and the four roles, and waits for the API.
func start(t testing.TB, o Options) *system {
	t.Helper()
	s := &system{t: t, dir: t.TempDir(), roles: map[string]*Proc{}, rng: rand.New(rand.NewPCG(o.Seed, o.Seed>>1|1)), opts: o}
	if err := os.MkdirAll(filepath.Join(s.dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := Build(s.dir, o.Race)
	if err != nil {
		t.Fatalf("build the local binary: %v", err)
	}

	s.webhook = NewWebhook(o.Webhook, o.Seed)
	t.Cleanup(s.webhook.Close)
	s.proxy, err = NewProxy("127.0.0.1:5672")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.proxy.Close)

	redisAddr := testenv.FreeAddr(t)
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	redisBin := "redis-server"
	s.redis = NewProc("redis", redisBin, []string{"--port", redisPort, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.dir}, baseEnv(), filepath.Join(s.dir, "logs", "redis.log"), s.exited)
	if err := s.redis.Start(); err != nil {
		t.Fatalf("start a private redis-server (is it installed? apt-get install redis-server): %v", err)
	}
	t.Cleanup(func() { s.redis.Close(5 * time.Second) })
	if !s.redisUp(redisAddr, 10*time.Second) {
		t.Fatalf("private redis-server on %s did not answer:\n%s", redisAddr, tail(s.redis.LogPath(), 20))
	}

	mongoAddr := testenv.FreeAddr(t)
	overrides := map[string]string{
		"RABBITMQ_URI": "amqp://guest:guest@" + s.proxy.Addr() + "/",
		"REDIS_URI":    redisAddr,
		"WEBHOOK_URL":  s.webhook.URL,
	}
	for k, v := range Timings {
		overrides[k] = v
	}
	for k, v := range o.Env {
		overrides[k] = v
	}
	s.env = testenv.Env(t, overrides)
	s.env["EMBEDDED_MONGODB_ADDR"] = mongoAddr
	s.mongoURI = "mongodb://" + mongoAddr + "/"
	s.api = "http://" + s.env["API_ADDR"]

	for _, role := range []string{"mongodb", "processor", "publisher", "api"} {
		env := map[string]string{}
		for k, v := range s.env {
			env[k] = v
		}
		if role != "mongodb" {
			env["MONGODB_URI"] = s.mongoURI
		}
		p := NewProc(role, bin, []string{role}, append(baseEnv(), flatten(env)...), filepath.Join(s.dir, "logs", role+".log"), s.exited)
		s.roles[role] = p
	}
	// Registered after testenv.Env's queue deletion, so run before it.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range s.roles {
			wg.Add(1)
			go func() { defer wg.Done(); p.Close(10 * time.Second) }()
		}
		wg.Wait()
	})
	if err := s.roles["mongodb"].Start(); err != nil {
		t.Fatal(err)
	}
	if !s.mongoUp(30 * time.Second) {
		t.Fatalf("the mongodb role did not answer on %s:\n%s", mongoAddr, tail(s.roles["mongodb"].LogPath(), 20))
	}
	for _, role := range []string{"processor", "publisher", "api"} {
		if err := s.roles[role].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{s.api + "/status", "http://" + s.env["PROCESSOR_ADDR"] + "/status"} {
		if !s.httpUp(u, 60*time.Second) {
			t.Fatalf("%s did not answer 200 within 60s.\napi:\n%s\nprocessor:\n%s", u,
				tail(s.roles["api"].LogPath(), 20), tail(s.roles["processor"].LogPath(), 20))
		}
	}
	return s
}

// baseEnv is the little of the test's environment a process needs; the
// rest (a developer's WEBHOOK_URL, say) must not leak into the system.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GORACE"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func flatten(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func (s *system) exited(e Exit) {
	s.exitsMu.Lock()
	s.exits = append(s.exits, e)
	s.exitsMu.Unlock()
	s.t.Logf("UNEXPECTED EXIT of %s at %s: %s", e.Role, e.At.Format("15:04:05.000"), e.Err)
}

func (s *system) unexpectedExits() []Exit {
	s.exitsMu.Lock()
	defer s.exitsMu.Unlock()
	return append([]Exit(nil), s.exits...)
}

func (s *system) intn(n int) int {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.IntN(n)
}

func (s *system) float() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

// between returns a random duration in [lo, hi].
func (s *system) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(s.float()*float64(hi-lo))
}

func (s *system) duration(name string) time.Duration {
	d, err := time.ParseDuration(s.env[name])
	if err != nil {
		s.t.Fatalf("%s: %v", name, err)
	}
	return d
}

// inject strikes one fault and restores the service.
func (s *system) inject(ctx context.Context, kind string) Fault {
	f := Fault{Kind: kind}
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch kind {
	case KillProcessor, KillPublisher, KillAPI:
		p := s.roles[strings.TrimPrefix(kind, "kill-")]
		f.At = time.Now()
		p.Kill()
		sleep(s.between(500*time.Millisecond, 2*time.Second))
		s.restart(p)
	case KillAll:
		f.At = time.Now()
		var wg sync.WaitGroup
		for _, p := range s.roles {
			wg.Add(1)
			go func() { defer wg.Done(); p.Kill() }()
		}
		wg.Wait()
		sleep(s.between(500*time.Millisecond, 2*time.Second))
		s.restart(s.roles["mongodb"])
		if !s.mongoUp(30 * time.Second) {
			s.t.Logf("the mongodb role did not answer within 30s of its restart")
		}
		for _, r := range []string{"processor", "publisher", "api"} {
			s.restart(s.roles[r])
		}
	case CutBroker:
		d := s.between(s.opts.OutageMin, s.opts.OutageMax)
		f.At = time.Now()
		s.proxy.Cut(d)
		sleep(d)
	case LoseRedis:
		f.At = time.Now()
		s.redis.Kill()
		sleep(s.between(s.opts.OutageMin, s.opts.OutageMax))
		s.restart(s.redis)
		if !s.redisUp(s.env["REDIS_URI"], 10*time.Second) {
			s.t.Logf("the private redis did not answer within 10s of its restart")
		}
	case WebhookOutage:
		d := s.between(2*time.Second, 4*time.Second)
		f.At = time.Now()
		s.webhook.Outage(d)
		sleep(d)
	default:
		s.t.Errorf("unknown fault kind %q", kind)
	}
	f.Until = time.Now()
	return f
}

func (s *system) restart(p *Proc) {
	if err := p.Restart(); err != nil {
		s.t.Errorf("restart %s: %v", p.Name, err)
	}
}

func (s *system) redisUp(addr string, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return waitUntil(ctx, func() bool {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return false
		}
		b := make([]byte, 7)
		n, _ := io.ReadFull(c, b)
		return string(b[:n]) == "+PONG\r\n"
	})
}

func (s *system) mongoUp(within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return waitUntil(ctx, func() bool {
		c, err := mongo.Connect(options.Client().ApplyURI(s.mongoURI).SetServerSelectionTimeout(time.Second))
		if err != nil {
			return false
		}
		defer func() { _ = c.Disconnect(context.Background()) }()
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		return c.Ping(pctx, nil) == nil
	})
}

func (s *system) httpUp(url string, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return waitUntil(ctx, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

var apiClient = &http.Client{Timeout: 10 * time.Second}

// getMessage returns GET /messages/{id}; found is false on a 404. A
// failure (the API restarting) is tried again twice.
func (s *system) getMessage(ctx context.Context, id string) (m message.Message, found bool, err error) {
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.api+"/messages/"+id, nil)
		var resp *http.Response
		resp, err = apiClient.Do(req)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			err = json.Unmarshal(b, &m)
			return m, err == nil, err
		case http.StatusNotFound:
			return m, false, nil
		}
		err = fmt.Errorf("GET /messages/%s answered %d: %s", id, resp.StatusCode, b)
	}
	if err == nil {
		err = ctx.Err()
	}
	return m, false, err
}

// fetchAll gets every id, eight at a time, until ctx ends. It returns the
// messages found and the ids the API said it does not know; an id whose GET
// failed is in neither. After a GET fails (the API is down or stuck), the
// rest of the round is skipped.
func (s *system) fetchAll(ctx context.Context, ids []string) (map[string]message.Message, map[string]bool) {
	out := make(map[string]message.Message, len(ids))
	missing := map[string]bool{}
	var mu sync.Mutex
	var failures int
	var lastErr error
	work := make(chan string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				mu.Lock()
				skip := failures > 0
				mu.Unlock()
				if skip || ctx.Err() != nil {
					continue
				}
				m, found, err := s.getMessage(ctx, id)
				mu.Lock()
				switch {
				case err != nil:
					failures++
					lastErr = err
				case found:
					out[id] = m
				default:
					missing[id] = true
				}
				mu.Unlock()
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	if failures > 0 && ctx.Err() == nil {
		s.t.Logf("GET /messages/{id} failing, round cut short: %v", lastErr)
	}
	return out, missing
}

// settle waits until every id is SENT or FAILED, or timeout passes; then it
// prints the stragglers. final holds the latest answer for each id; pending
// lists the ids not final yet.
func (s *system) settle(ids []string, final map[string]message.Message, timeout time.Duration) (pending []string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pending = append([]string(nil), ids...)
	for {
		got, _ := s.fetchAll(ctx, pending)
		var still []string
		for _, id := range pending {
			m, ok := got[id]
			if ok {
				final[id] = m
			}
			if !ok || !m.Status.Final() {
				still = append(still, id)
			}
		}
		pending = still
		if len(pending) == 0 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if len(pending) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d messages not SENT or FAILED after %s:\n", len(pending), timeout)
	calls := s.webhook.Calls()
	for i, id := range pending {
		if i == 20 {
			fmt.Fprintf(&b, "... and %d more\n", len(pending)-20)
			break
		}
		b.WriteString(s.describe(id, final, calls))
	}
	s.t.Log(b.String())
	return pending
}

// describe renders what is known of id: its status, attempts, delivery log,
// webhook calls and the log lines that name it.
func (s *system) describe(id string, final map[string]message.Message, calls map[string][]Call) string {
	var b strings.Builder
	m, ok := final[id]
	if !ok {
		fmt.Fprintf(&b, "- %s: not found by GET /messages/{id}\n", id)
	} else {
		fmt.Fprintf(&b, "- %s: %s attempts=%d lastError=%q failureReason=%q nextAttemptAt=%v updatedAt=%s\n",
			id, m.Status, m.Attempts, m.LastError, m.FailureReason, m.NextAttemptAt, m.UpdatedAt.Format("15:04:05.000"))
		for _, d := range m.Deliveries {
			fmt.Fprintf(&b, "    delivery %s attempt=%d %s status=%d error=%q %dms\n",
				d.At.Format("15:04:05.000"), d.Attempt, d.Outcome, d.StatusCode, d.Error, d.DurationMS)
		}
	}
	fmt.Fprintf(&b, "    webhook calls: %s\n", describeCalls(calls[id]))
	for _, role := range []string{"api", "publisher", "processor"} {
		for _, l := range s.roles[role].Grep(12, id) {
			fmt.Fprintf(&b, "    %s\n", l)
		}
	}
	return b.String()
}

// evidence describes the ids behind each problem.
func (s *system) evidence(sum Summary, final map[string]message.Message, calls map[string][]Call) string {
	var b strings.Builder
	for _, l := range []struct {
		title string
		items []string
	}{{"lost", sum.Lost}, {"unexplained duplicate", sum.Unexplained}, {"suspicious duplicate", sum.Suspicious},
		{"concurrent calls", sum.Concurrent}, {"FAILED without notification", sum.FailedNotNotified},
		{"retry violation", sum.RetryViolations}, {"SENT without an accepted call", sum.SentWithoutAcceptance}} {
		for i, it := range l.items {
			if i == 3 {
				break
			}
			id, _, _ := strings.Cut(it, " ")
			id = strings.TrimSuffix(id, ":")
			fmt.Fprintf(&b, "evidence for %s %s\n", l.title, id)
			b.WriteString(s.describe(id, final, calls))
		}
	}
	return b.String()
}

// quiet waits until the main queue is empty and the webhook got no call for
// two seconds (bounded by 30 s), so that a late duplicate is counted.
func (s *system) quiet() {
	deadline := time.Now().Add(30 * time.Second)
	last, since := s.webhook.Total(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		if n := s.webhook.Total(); n != last {
			last, since = n, time.Now()
			continue
		}
		if time.Since(since) >= 2*time.Second && s.queueDepth(s.env["RABBITMQ_QUEUE"]) == 0 {
			return
		}
	}
}

func (s *system) queueDepth(q string) int {
	conn, err := amqp.Dial(testenv.RabbitURI)
	if err != nil {
		return -1
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return -1
	}
	defer ch.Close()
	qi, err := ch.QueueDeclarePassive(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	if err != nil {
		return -1
	}
	return qi.Messages
}

// countStored counts the messages GET /messages lists, following cursors.
func (s *system) countStored() int {
	n, cursor := 0, ""
	for {
		resp, err := apiClient.Get(fmt.Sprintf("%s/messages?limit=500&cursor=%s", s.api, cursor))
		if err != nil {
			s.t.Logf("list messages: %v", err)
			return -1
		}
		var page message.Page
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			s.t.Logf("list messages answered %d: %v", resp.StatusCode, err)
			return -1
		}
		n += len(page.Items)
		if page.NextCursor == "" {
			return n
		}
		cursor = page.NextCursor
	}
}

// drainDLQ takes every notification off the dead-letter queue.
func (s *system) drainDLQ() []message.DeadLetter {
	var out []message.DeadLetter
	for _, b := range testenv.Drain(s.t, s.env["RABBITMQ_DLQ"]) {
		var n message.DeadLetter
		if err := json.Unmarshal(b, &n); err != nil {
			s.t.Logf("unreadable DLQ notification %q: %v", b, err)
			continue
		}
		out = append(out, n)
	}
	return out
}

func (s *system) keepLogs(dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Logf("keep logs: %v", err)
		return
	}
	entries, _ := os.ReadDir(filepath.Join(s.dir, "logs"))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.dir, "logs", e.Name()))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
		}
		if err != nil {
			s.t.Logf("keep log %s: %v", e.Name(), err)
		}
	}
	s.t.Logf("process logs kept in %s", dir)
}
