// Command bench measures the message system on this machine: end-to-end
// throughput, POST-to-delivery latency at a fixed offered rate, the CPU and
// memory of each process, the raw limits of RabbitMQ, Redis and the embedded
// MongoDB, and the Lambda bootstraps. It starts the system as separate
// processes (rms mongodb, api, publisher, processor) so that each one's CPU
// can be read from /proc, delivers to a webhook sink of its own, and prints
// a table and, as its last line, one JSON object with every figure.
//
// It is a benchmark, not a test: it never fails on a number. It exits
// non-zero only when the system could not run (or on Ctrl-C).
//
// Usage: go run ./bench [-quick] [-n 20000] [-rate 1000] [-duration 20s] ...
// (make bench builds what it needs and runs it; see docs/bench.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal the run cleans up; a second one ends the
		// process at once (the children die with it: see startProc).
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// flags are the command's settings.
type flags struct {
	N           int
	Clients     int
	Rate        int
	Duration    time.Duration
	Warmup      int
	Wait        time.Duration
	MaxPost     time.Duration
	Stall       time.Duration
	Invocations int
	RMS         string
	LambdaDir   string
	Keep        bool
	Quick       bool
	Profile     string
	ProfileFor  time.Duration

	// Sizes of the raw-limit runs, set from Quick.
	RawRabbit, RawRedis, RawMongoMany, RawMongoOne int
}

func parseFlags(args []string, stderr io.Writer) (flags, error) {
	var o flags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.N, "n", 20000, "messages in the throughput phase")
	fs.IntVar(&o.Clients, "clients", 16, "concurrent keep-alive HTTP clients in the throughput phase")
	fs.IntVar(&o.Rate, "rate", 1000, "offered rate of the latency phase, messages per second")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "length of the latency phase")
	fs.IntVar(&o.Warmup, "warmup", 200, "messages sent (and delivered) before measuring")
	fs.DurationVar(&o.Wait, "wait", 5*time.Minute, "longest wait for deliveries after a phase's last POST")
	fs.DurationVar(&o.MaxPost, "max-post", 8*time.Minute, "longest the throughput phase keeps posting (a slow system gets fewer than -n)")
	fs.DurationVar(&o.Stall, "stall", 30*time.Second, "stop waiting for deliveries after this long without one")
	fs.IntVar(&o.Invocations, "invocations", 5, "timed Lambda processor invocations (after one warm-up)")
	fs.StringVar(&o.RMS, "rms", "", "prebuilt local binary to run (default: build one into the run's temp dir)")
	fs.StringVar(&o.LambdaDir, "lambda-dir", "build", "where `make build` put <function>/bootstrap")
	fs.BoolVar(&o.Keep, "keep", false, "keep the run's temp dir (process logs, MongoDB data)")
	fs.StringVar(&o.Profile, "profile", "", "write CPU profiles (pprof) of api, publisher, processor and mongodb, taken during the throughput phase, to this directory")
	fs.DurationVar(&o.ProfileFor, "profile-for", 10*time.Second, "length of the -profile CPU profiles")
	fs.BoolVar(&o.Quick, "quick", false, "a short run for trying it out: -n 2000 -rate 300 -duration 5s, smaller raw runs")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.RawRabbit, o.RawRedis, o.RawMongoMany, o.RawMongoOne = 30000, 200000, 10000, 2000
	if o.Quick {
		// Flags given explicitly win over the quick defaults.
		quick := map[string]func(){
			"n":           func() { o.N = 2000 },
			"rate":        func() { o.Rate = 300 },
			"duration":    func() { o.Duration = 5 * time.Second },
			"warmup":      func() { o.Warmup = 100 },
			"invocations": func() { o.Invocations = 3 },
			"wait":        func() { o.Wait = 2 * time.Minute },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
		o.RawRabbit, o.RawRedis, o.RawMongoMany, o.RawMongoOne = 5000, 40000, 2000, 500
	}
	switch {
	case o.N < 1, o.Clients < 1, o.Rate < 1, o.Duration <= 0, o.Warmup < 0, o.Invocations < 1:
		return o, errors.New("-n, -clients, -rate, -duration and -invocations must be positive, -warmup not negative")
	case o.Wait <= 0, o.Stall <= 0, o.MaxPost <= 0:
		return o, errors.New("-wait, -stall and -max-post must be positive")
	}
	return o, nil
}

// run is the whole program.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	b := &bench{opts: o, getenv: getenv, log: stderr, rep: newReport()}
	mode := "full"
	if o.Quick {
		mode = "quick"
	}
	b.rep.title = fmt.Sprintf("Benchmark (%s): %d msgs by %d clients; %d msgs/s for %s; %d CPUs, load average %.1f at start, %s",
		mode, o.N, o.Clients, o.Rate, o.Duration, runtime.NumCPU(), loadAverage(), time.Now().UTC().Format(time.RFC3339))
	b.rep.set("mode", mode)
	b.rep.set("cpus", runtime.NumCPU())
	b.rep.set("e2e_messages", o.N)
	b.rep.set("e2e_clients", o.Clients)
	b.rep.set("warmup_messages", o.Warmup)
	// A CPU profiler samples inside the processes for -profile-for of the
	// throughput phase: its cost is in their CPU figures.
	b.rep.set("profiled", o.Profile != "")
	if o.Profile != "" {
		b.rep.title += "; PROFILED: the CPU figures include the profilers' cost"
	}
	b.rep.set("latency_offered_msgs_per_s", o.Rate)
	b.rep.set("latency_duration_s", o.Duration.Seconds())
	b.rep.set("machine_loadavg_1m_start", loadAverage())
	// The caller's settings reach the processes (see stack.start): a run
	// with any of them is not a run of the defaults, and says so.
	sync := getenv("EMBEDDED_MONGODB_SYNC")
	if sync == "" {
		sync = "full"
	}
	b.rep.set("embedded_mongodb_sync", sync)
	if sync != "full" {
		b.rep.title += "; EMBEDDED_MONGODB_SYNC=" + sync + " (not durable)"
	}

	runErr := b.run(ctx)
	b.summarizeLogs()
	b.cleanup()
	if ctx.Err() != nil {
		runErr = errors.New("interrupted")
	}
	b.rep.print(stdout, runErr)
	return runErr
}

// bench is one run: the processes it started, the names it created and the
// figures it measured.
type bench struct {
	opts   flags
	getenv func(string) string
	log    io.Writer
	rep    *report

	dir   string // the run's temp dir
	names names
	sink  *sink
	stack *stack
	// cleanups run in reverse order at the end, whatever happened.
	cleanups []func(context.Context)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (b *bench) onCleanup(f func(context.Context)) { b.cleanups = append(b.cleanups, f) }

// cleanup stops every process and deletes what the run created, with its
// own deadline so that it also runs after Ctrl-C.
func (b *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i](ctx)
	}
	b.cleanups = nil
}

// run measures every phase in order. A phase that cannot run ends the run
// when the system itself is broken; the Lambda and raw-limit phases record
// their error and let the others go on.
func (b *bench) run(ctx context.Context) error {
	if err := checkServices(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "rms-bench-")
	if err != nil {
		return err
	}
	b.dir = dir
	b.onCleanup(func(context.Context) {
		if b.opts.Keep {
			b.logf("kept %s (process logs, MongoDB data)", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	b.names = newNames()
	b.logf("run %s; logs in %s", b.names.id, dir)

	b.sink, err = startSink()
	if err != nil {
		return err
	}
	b.onCleanup(func(ctx context.Context) { b.sink.close(ctx) })

	if err := b.startSystem(ctx); err != nil {
		return err
	}
	if err := b.warmup(ctx); err != nil {
		return err
	}
	if err := b.throughput(ctx); err != nil {
		return err
	}
	if err := b.latency(ctx); err != nil {
		return err
	}
	b.recordRSS()
	b.lambda(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.rawLimits(ctx)
	return ctx.Err()
}

// settingsFromEnvironment names the configuration variables set in the
// caller's environment that reach the processes (all but owned), sorted.
func settingsFromEnvironment(getenv func(string) string, owned map[string]string) []string {
	names := []string{}
	_, _ = config.Load(func(k string) string {
		if _, own := owned[k]; !own && getenv(k) != "" {
			names = append(names, k)
		}
		return ""
	})
	slices.Sort(names)
	return slices.Compact(names)
}
