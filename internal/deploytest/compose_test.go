package deploytest

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

// composeOwnServices are the compose services that run the project's own
// image, each with the local binary's role of the same name.
var composeOwnServices = []string{"setup", "api", "publisher", "processor", "receiver"}

// composeInfra maps each infrastructure service to the image it must run and
// the client its health check must use.
var composeInfra = map[string]struct{ image, probe string }{
	"mongodb":  {"mongo:", "mongosh"},
	"rabbitmq": {"rabbitmq:", "rabbitmq-diagnostics"},
	"redis":    {"redis:", "redis-cli"},
}

// composeLongRunning are the services that must come back after a crash.
var composeLongRunning = []string{"mongodb", "rabbitmq", "redis", "api", "publisher", "processor", "receiver"}

// composeLoad loads local/compose.yaml as `docker compose -f
// local/compose.yaml` would, with env as the whole environment (no .env
// file, nothing from the process), so the file's defaults apply. Loading
// validates the file against the compose specification.
func composeLoad(t *testing.T, env map[string]string, overrides ...string) *types.Project {
	t.Helper()
	root := testenv.RepoRoot(t)
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	files := []string{filepath.Join(root, "local", "compose.yaml")}
	for _, o := range overrides {
		files = append(files, filepath.Join(root, "local", o))
	}
	opts, err := cli.NewProjectOptions(
		files,
		cli.WithWorkingDirectory(filepath.Join(root, "local")),
		cli.WithEnv(list),
	)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("local/compose.yaml does not load (docker compose would reject it too): %v", err)
	}
	return p
}

// composeService returns the named service or stops the test.
func composeService(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("local/compose.yaml: no service %q (services: %v)", name, p.ServiceNames())
	}
	return s
}

// composeGetenv returns a getenv over the service's environment, the way the
// container sees it.
func composeGetenv(s types.ServiceConfig) func(string) string {
	return func(name string) string {
		if v := s.Environment[name]; v != nil {
			return *v
		}
		return ""
	}
}

// composeHost returns the host part of a URL, a host:port or a bare host.
func composeHost(value string) string {
	if strings.Contains(value, "://") {
		if u, err := url.Parse(value); err == nil {
			return u.Hostname()
		}
		return ""
	}
	if h, _, err := net.SplitHostPort(value); err == nil {
		return h
	}
	return value
}

// composePort returns the port of a host:port, or 0.
func composePort(addr string) uint32 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// composeIsLoopback says whether host only reaches the container itself.
func composeIsLoopback(host string) bool {
	h := strings.ToLower(strings.Trim(host, "[]"))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func TestComposeProject(t *testing.T) {
	p := composeLoad(t, nil)
	root := testenv.RepoRoot(t)

	t.Run("services", func(t *testing.T) {
		want := append(slices.Clone(composeOwnServices), "mongodb", "rabbitmq", "redis")
		for _, name := range want {
			composeService(t, p, name)
		}
	})

	t.Run("own image and roles", func(t *testing.T) {
		var image string
		for _, name := range composeOwnServices {
			s := composeService(t, p, name)
			// One service builds the image: Compose builds every target
			// at once with bake, and two exporting one tag collide on a
			// first build. The others run it, never pulling it.
			switch {
			case name == "setup" && s.Build == nil:
				t.Errorf("service %s: no build section; it must build the repository's Dockerfile (build: {context: .., dockerfile: Dockerfile})", name)
			case name == "setup":
				if s.Build.Context != root {
					t.Errorf("service %s: build context is %q, want the repository root %q", name, s.Build.Context, root)
				}
				if df := s.Build.Dockerfile; df != "Dockerfile" && df != filepath.Join(root, "Dockerfile") {
					t.Errorf("service %s: build dockerfile is %q, want Dockerfile", name, df)
				}
				if s.PullPolicy != types.PullPolicyBuild {
					t.Errorf("service %s: pull_policy %q, want %q (the image is built, never pulled)", name, s.PullPolicy, types.PullPolicyBuild)
				}
			case s.Build != nil:
				t.Errorf("service %s: a build section of its own; only setup builds the shared image (two builds exporting one tag collide)", name)
			case s.PullPolicy != types.PullPolicyNever:
				t.Errorf("service %s: pull_policy %q, want %q (it runs the image setup builds; no registry has it)", name, s.PullPolicy, types.PullPolicyNever)
			}
			if s.Image == "" {
				t.Errorf("service %s: no image name; the built image needs one so that every role shares it", name)
			}
			if image == "" {
				image = s.Image
			} else if s.Image != image {
				t.Errorf("service %s: image %q, but the other roles use %q: every role must run the same image", name, s.Image, image)
			}
			if len(s.Entrypoint) != 0 {
				t.Errorf("service %s: entrypoint %q overrides the image's /rms", name, s.Entrypoint)
			}
			if !slices.Equal(s.Command, types.ShellCommand{name}) {
				t.Errorf("service %s: command %q, want [%q] (the local binary's role)", name, s.Command, name)
			}
		}
	})

	t.Run("real infrastructure", func(t *testing.T) {
		for name, want := range composeInfra {
			s := composeService(t, p, name)
			if !strings.HasPrefix(s.Image, want.image) {
				t.Errorf("service %s: image %q, want %s...", name, s.Image, want.image)
			}
			if s.Build != nil {
				t.Errorf("service %s: has a build section; it must run the upstream %s image", name, want.image)
			}
		}
	})

	t.Run("needed settings are set and reach other containers", func(t *testing.T) {
		needs := map[string][]string{
			// setup connects to everything the publisher does, and nothing
			// else; it serves nothing.
			"setup": slices.DeleteFunc(slices.Clone(config.Needs["publisher"]), func(v string) bool { return v == "PUBLISHER_ADDR" }),
		}
		for role, vars := range config.Needs {
			if !strings.HasPrefix(role, "lambda:") {
				needs[role] = vars
			}
		}
		for role, vars := range needs {
			s := composeService(t, p, role)
			getenv := composeGetenv(s)
			for _, name := range vars {
				v := getenv(name)
				if v == "" {
					t.Errorf("service %s: %s is not set; config.Needs says a %s container must set it (its default only fits one machine)", role, name, role)
					continue
				}
				if h := composeHost(v); composeIsLoopback(h) {
					t.Errorf("service %s: %s=%s uses %s, which inside a container is the container itself", role, name, v, h)
				}
			}
			// Hosts in the URIs must be services of this project, so that a
			// typo fails here rather than as a DNS error in the container.
			for _, name := range []string{"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "WEBHOOK_URL"} {
				v := getenv(name)
				if v == "" || !slices.Contains(vars, name) {
					continue
				}
				h := composeHost(v)
				if net.ParseIP(h) == nil {
					if _, ok := p.Services[h]; !ok {
						t.Errorf("service %s: %s=%s names host %q, which is no service of local/compose.yaml (services: %v)", role, name, v, h, p.ServiceNames())
					}
				}
			}
		}
	})

	t.Run("every role's environment is a valid configuration", func(t *testing.T) {
		loaded := map[string]config.Config{}
		for _, name := range composeOwnServices {
			s := composeService(t, p, name)
			cfg, err := config.Load(composeGetenv(s))
			if err != nil {
				t.Errorf("service %s: its environment does not load: %v", name, err)
				continue
			}
			if name != "receiver" && cfg.MongoURI == "" {
				t.Errorf("service %s: MONGODB_URI is empty, so it would start an embedded MongoDB of its own instead of using the mongodb service", name)
			}
			loaded[name] = cfg
		}
		// The roles share one database, one broker topology and one Redis
		// namespace; a difference would split the system in two.
		type shared struct {
			Mongo, Database, Rabbit, Exchange, Queue, DLQ, Redis, Prefix string
			RedisDB                                                      int
		}
		var first string
		var want shared
		for _, name := range []string{"setup", "api", "publisher", "processor"} {
			cfg, ok := loaded[name]
			if !ok {
				continue
			}
			got := shared{cfg.MongoURI, cfg.MongoDatabase, cfg.RabbitURI, cfg.Exchange, cfg.Queue, cfg.DeadLetterQueue, cfg.RedisURI, cfg.RedisKeyPrefix, cfg.RedisDB}
			if first == "" {
				first, want = name, got
				continue
			}
			if got != want {
				t.Errorf("service %s: shared settings %+v differ from service %s's %+v", name, got, first, want)
			}
		}
		// Each HTTP role listens on all interfaces, on the port it publishes.
		for name, addr := range map[string]string{
			"api":       loaded["api"].APIAddr,
			"processor": loaded["processor"].ProcessorAddr,
			"publisher": loaded["publisher"].PublisherAddr,
			"receiver":  loaded["receiver"].ReceiverAddr,
		} {
			if _, ok := loaded[name]; !ok {
				continue
			}
			if h := composeHost(addr); composeIsLoopback(h) {
				t.Errorf("service %s: listens on %s, unreachable from outside its container", name, addr)
			}
			port := composePort(addr)
			s := composeService(t, p, name)
			if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == port }) {
				t.Errorf("service %s: listens on %s but publishes no port with target %d (ports: %+v)", name, addr, port, s.Ports)
			}
		}
		if cfg, ok := loaded["processor"]; ok && cfg.WebhookURL != "" {
			u, _ := url.Parse(cfg.WebhookURL)
			if u.Hostname() == "receiver" && u.Port() != strconv.Itoa(int(composePort(loaded["receiver"].ReceiverAddr))) {
				t.Errorf("processor: WEBHOOK_URL=%s, but the receiver listens on %s", cfg.WebhookURL, loaded["receiver"].ReceiverAddr)
			}
		}
	})

	t.Run("ports are published on loopback only", func(t *testing.T) {
		for _, name := range p.ServiceNames() {
			for _, pc := range p.Services[name].Ports {
				if pc.HostIP != "127.0.0.1" {
					t.Errorf("service %s: port %d is published on %q; publish it as \"127.0.0.1:%s:%d\" so that it is not reachable from the network", name, pc.Target, pc.HostIP, pc.Published, pc.Target)
				}
			}
		}
		s := composeService(t, p, "rabbitmq")
		if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == 15672 && pc.Published == "15672" }) {
			t.Errorf("service rabbitmq: the management UI (15672) is not published on 127.0.0.1:15672 (ports: %+v)", s.Ports)
		}
	})

	t.Run("infrastructure health checks", func(t *testing.T) {
		for name, want := range composeInfra {
			hc := composeService(t, p, name).HealthCheck
			switch {
			case hc == nil || hc.Disable || len(hc.Test) == 0 || hc.Test[0] == "NONE":
				t.Errorf("service %s: no health check; the project's services wait for it to be healthy", name)
			case !strings.Contains(strings.Join(hc.Test, " "), want.probe):
				t.Errorf("service %s: health check %q does not use %s", name, hc.Test, want.probe)
			}
		}
	})

	t.Run("start order", func(t *testing.T) {
		wantDeps := map[string]map[string]string{
			"setup": {"mongodb": types.ServiceConditionHealthy, "rabbitmq": types.ServiceConditionHealthy, "redis": types.ServiceConditionHealthy},
		}
		for _, name := range []string{"api", "publisher", "processor"} {
			wantDeps[name] = map[string]string{
				"mongodb": types.ServiceConditionHealthy, "rabbitmq": types.ServiceConditionHealthy, "redis": types.ServiceConditionHealthy,
				"setup": types.ServiceConditionCompletedSuccessfully,
			}
		}
		for name, deps := range wantDeps {
			s := composeService(t, p, name)
			for dep, cond := range deps {
				got, ok := s.DependsOn[dep]
				if !ok {
					t.Errorf("service %s: does not depend on %s (want condition %s)", name, dep, cond)
					continue
				}
				if got.Condition != cond {
					t.Errorf("service %s: depends on %s with condition %q, want %q", name, dep, got.Condition, cond)
				}
			}
		}
	})

	t.Run("restarts, shutdown and data", func(t *testing.T) {
		for _, name := range composeLongRunning {
			if r := composeService(t, p, name).Restart; r != types.RestartPolicyUnlessStopped {
				t.Errorf("service %s: restart %q, want %q", name, r, types.RestartPolicyUnlessStopped)
			}
		}
		if r := composeService(t, p, "setup").Restart; r != "" && r != types.RestartPolicyNo {
			t.Errorf("service setup: restart %q; it runs once, so it must be \"no\"", r)
		}
		// HTTP servers get 15s to finish their requests, and the processor
		// drains deliveries for WEBHOOK_TIMEOUT + 5s: docker's default 10s
		// would kill them in the middle.
		for _, name := range []string{"api", "publisher", "processor"} {
			g := composeService(t, p, name).StopGracePeriod
			if g == nil || time.Duration(*g) < 20*time.Second {
				t.Errorf("service %s: stop_grace_period %v, want at least 20s for a graceful shutdown", name, g)
			}
		}
		for name, target := range map[string]string{"mongodb": "/data/db", "rabbitmq": "/var/lib/rabbitmq"} {
			s := composeService(t, p, name)
			if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Type == types.VolumeTypeVolume && v.Target == target }) {
				t.Errorf("service %s: no named volume at %s; its data would be lost with the container", name, target)
			}
		}
		if h := composeService(t, p, "rabbitmq").Hostname; h == "" {
			t.Error("service rabbitmq: no fixed hostname; RabbitMQ keeps its data under rabbit@<hostname>, so a new container would not find its queues")
		}
	})

	t.Run("structured logs", func(t *testing.T) {
		for _, name := range composeOwnServices {
			if got := composeGetenv(composeService(t, p, name))("LOG_FORMAT"); got != "json" {
				t.Errorf("service %s: LOG_FORMAT=%q, want json", name, got)
			}
		}
	})
}

// TestComposeOverrides checks which settings follow the user's environment:
// the webhook and the API key do, the service addresses do not (a
// MONGODB_URI exported for `make run` points at 127.0.0.1).
func TestComposeOverrides(t *testing.T) {
	const (
		hook   = "https://hooks.example.com/rms"
		key    = "compose-test-key"
		secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="
	)
	p := composeLoad(t, map[string]string{
		"WEBHOOK_URL":    hook,
		"API_KEY":        key,
		"WEBHOOK_SECRET": secret,
		"MONGODB_URI":    "mongodb://127.0.0.1:27017",
		"RABBITMQ_URI":   "amqp://guest:guest@127.0.0.1:5672/",
		"REDIS_URI":      "127.0.0.1:6379",
	})
	for _, c := range []struct{ service, name, want string }{
		{"processor", "WEBHOOK_URL", hook},
		{"processor", "WEBHOOK_SECRET", secret},
		{"receiver", "WEBHOOK_SECRET", secret},
		{"api", "API_KEY", key},
	} {
		if got := composeGetenv(composeService(t, p, c.service))(c.name); got != c.want {
			t.Errorf("service %s: with %s=%s in the environment, it gets %q", c.service, c.name, c.want, got)
		}
	}
	for _, name := range []string{"setup", "api", "publisher", "processor"} {
		getenv := composeGetenv(composeService(t, p, name))
		for _, v := range []string{"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI"} {
			if h := composeHost(getenv(v)); composeIsLoopback(h) {
				t.Errorf("service %s: %s follows the user's environment (%s); it must stay on the compose service", name, v, getenv(v))
			}
		}
	}
}

// composeInstruction is one Dockerfile instruction, continuation lines joined.
type composeInstruction struct {
	cmd  string // upper case: FROM, RUN, USER...
	args string
}

// composeDockerfile reads the Dockerfile's stages.
func composeDockerfile(t *testing.T) [][]composeInstruction {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatalf("read Dockerfile: %v", err)
	}
	var stages [][]composeInstruction
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := composeInstruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %s before the first FROM", in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: %d stage(s), want a build stage and a runtime stage", len(stages))
	}
	return stages
}

func TestComposeDockerfile(t *testing.T) {
	stages := composeDockerfile(t)
	build, final := stages[0], stages[len(stages)-1]
	all := func(stage []composeInstruction, cmd string) []string {
		var out []string
		for _, in := range stage {
			if in.cmd == cmd {
				out = append(out, in.args)
			}
		}
		return out
	}

	if from := build[0].args; !strings.Contains(from, "golang:1.26") {
		t.Errorf("Dockerfile: build stage FROM %q, want golang:1.26 (go.mod's Go)", from)
	}
	runs := strings.Join(all(build, "RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-tags ferretdb_no_postgresql", "-trimpath", "./local", "--mount=type=cache,target=/go/pkg/mod"} {
		if !strings.Contains(runs, want) {
			t.Errorf("Dockerfile: the build stage's RUN lines lack %q", want)
		}
	}

	base := final[0].args
	users := all(final, "USER")
	if len(users) == 0 {
		t.Error("Dockerfile: the runtime stage sets no USER; it would run as root")
	} else {
		u, _, _ := strings.Cut(users[len(users)-1], ":")
		if u == "root" || u == "0" {
			t.Errorf("Dockerfile: the runtime stage runs as USER %s, want a non-root user", users[len(users)-1])
		}
	}
	// distroless/static and /base ship the CA bundle; any other base must
	// install ca-certificates, or TLS to the webhook cannot be verified.
	shipsCA := strings.Contains(base, "distroless/static") || strings.Contains(base, "distroless/base") ||
		strings.Contains(strings.Join(all(final, "RUN"), "\n"), "ca-certificates") ||
		slices.ContainsFunc(all(final, "COPY"), func(s string) bool { return strings.Contains(s, "ca-certificates") })
	if !shipsCA {
		t.Errorf("Dockerfile: the runtime stage (FROM %s) neither ships nor installs ca-certificates", base)
	}
	if e := all(final, "ENTRYPOINT"); len(e) == 0 || e[len(e)-1] != `["/rms"]` {
		t.Errorf("Dockerfile: ENTRYPOINT %q, want [\"/rms\"]", e)
	}
	if c := all(final, "CMD"); len(c) == 0 || c[len(c)-1] != `["all"]` {
		t.Errorf("Dockerfile: CMD %q, want [\"all\"]", c)
	}
	exposed := strings.Fields(strings.Join(all(final, "EXPOSE"), " "))
	for _, port := range []string{"8080", "8081", "8090"} {
		if !slices.Contains(exposed, port) {
			t.Errorf("Dockerfile: does not EXPOSE %s (exposes %v)", port, exposed)
		}
	}
	env := strings.Join(all(final, "ENV"), " ")
	if !strings.Contains(env, "DATA_DIR=") {
		t.Error("Dockerfile: the runtime stage sets no DATA_DIR; the embedded MongoDB would write under the working directory")
	}

	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatalf("read .dockerignore: %v", err)
	}
	ignored := strings.Fields(string(b))
	for _, want := range []string{".git", ".data", "bin", "build", ".aws-sam"} {
		if !slices.Contains(ignored, want) && !slices.Contains(ignored, "/"+want) {
			t.Errorf(".dockerignore: %s is not excluded from the build context", want)
		}
	}
}

func TestComposeSeedScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is not installed: install it (apt-get install bash) to check scripts/seed.sh")
	}
	script := filepath.Join(testenv.RepoRoot(t), "scripts", "seed.sh")
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n scripts/seed.sh: %v\n%s", err, out)
	}
}

// TestComposeInfra: local/compose.infra.yaml (make docker-infra) publishes
// MongoDB, RabbitMQ and Redis on their usual ports, on loopback only, each
// once, so that make run finds them where it looks by default.
func TestComposeInfra(t *testing.T) {
	p := composeLoad(t, nil, "compose.infra.yaml")
	for service, port := range map[string]uint32{"mongodb": 27017, "rabbitmq": 5672, "redis": 6379} {
		seen := map[uint32]int{}
		found := false
		for _, pc := range composeService(t, p, service).Ports {
			published, _ := strconv.ParseUint(pc.Published, 10, 16)
			seen[uint32(published)]++
			if pc.Target == port && uint32(published) == port {
				found = true
				if pc.HostIP != "127.0.0.1" {
					t.Errorf("%s: port %d published on %q, want 127.0.0.1 only", service, port, pc.HostIP)
				}
			}
		}
		if !found {
			t.Errorf("%s: port %d not published on the host", service, port)
		}
		for published, n := range seen {
			if n > 1 {
				t.Errorf("%s: host port %d published %d times", service, published, n)
			}
		}
	}
	// The Makefile target uses this file for these three services.
	mk, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "mk", "docker.mk"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "-f local/compose.infra.yaml up -d mongodb rabbitmq redis") {
		t.Error("mk/docker.mk has no docker-infra target starting mongodb, rabbitmq and redis with local/compose.infra.yaml")
	}
}
