package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Targets of the issue "Performance".
const (
	targetE2E        = 3000.0 // msgs/s, with 0 lost and 0 duplicates
	targetLatencyP99 = 100.0  // ms, POST to delivery, at 1000 msgs/s
	targetAPIP99     = 20.0   // ms, at 1000 msgs/s
	targetCPUPerMsg  = 0.3    // ms of the project's processes per message
	targetRSS        = 150.0  // MiB, peak, the project's processes together
	targetBootstrap  = 15.0   // MB (10^6 bytes) per Lambda bootstrap
)

// Offsets keep the phases' phone numbers and contents apart (cosmetic).
const (
	offsetWarmup     = 0
	offsetThroughput = 1_000_000
	offsetLatency    = 3_000_000
)

// settle is how long a phase waits after its last delivery for duplicates.
const settle = 2 * time.Second

// warmup sends a few messages through the whole system and waits for them,
// so that connections, pools and caches are open before anything is timed.
func (b *bench) warmup(ctx context.Context) error {
	if b.opts.Warmup == 0 {
		b.rep.set("rss_peak_mib_project_after_warmup", nil)
		return nil
	}
	b.logf("warm-up: %d messages", b.opts.Warmup)
	res := closedLoop(ctx, b.stack.apiURL, b.opts.Warmup, b.opts.Clients, offsetWarmup, b.opts.MaxPost)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(res.accepted) == 0 {
		return fmt.Errorf("warm-up: the API accepted none of %d messages (%s)", b.opts.Warmup, res.example)
	}
	n := b.waitDelivered(ctx, ids(res.accepted), "warm-up")
	if err := b.stack.alive(); err != nil {
		return err
	}
	if n == 0 {
		return errors.New("warm-up: no message reached the webhook; see the processor's log (-keep)")
	}
	b.logf("warm-up: %d accepted, %d delivered, %d failed", len(res.accepted), n, res.failed)
	b.rep.set("rss_peak_mib_project_after_warmup", b.projectHWM())
	return nil
}

// throughput posts N messages from the closed-loop clients and times them
// from the first POST to the last delivery.
func (b *bench) throughput(ctx context.Context) error {
	o := b.opts
	b.logf("throughput: %d messages from %d clients", o.N, o.Clients)
	cmdsBefore := b.sampleCommands(ctx)
	before := b.sampleCPU()
	profiled := b.profile(ctx)
	res := closedLoop(ctx, b.stack.apiURL, o.N, o.Clients, offsetThroughput, o.MaxPost)
	profiled()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	postWall := res.last.Sub(res.first)
	b.logf("throughput: %d accepted in %s (%.0f/s), %d failed %s", len(res.accepted), postWall.Round(time.Millisecond),
		rate(len(res.accepted), postWall), res.failed, res.example)
	accepted := ids(res.accepted)
	b.waitDelivered(ctx, accepted, "throughput")
	after := b.sampleCPU()
	cmdsAfter := b.sampleCommands(ctx)
	if err := b.stack.alive(); err != nil {
		return err
	}
	time.Sleep(settle)
	d := b.sink.of(accepted)
	lost := len(accepted) - d.delivered
	var wall time.Duration
	if d.delivered > 0 {
		wall = d.last.Sub(res.first)
	}
	cpu := before.to(after)

	r := b.rep
	r.section(fmt.Sprintf("End to end: %d messages, %d keep-alive clients, first POST to last delivery", o.N, o.Clients))
	posted := len(res.accepted) + res.failed
	r.set("e2e_posted", posted)
	if posted < o.N {
		r.line("posted (stopped after -max-post "+o.MaxPost.String()+")", fmt.Sprintf("%d of %d", posted, o.N))
	}
	e2e := rate(d.delivered, wall)
	r.set("e2e_msgs_per_s", e2e)
	r.set("e2e_wall_s", wall.Seconds())
	r.set("e2e_accepted", len(res.accepted))
	r.set("e2e_post_failed", res.failed)
	r.set("e2e_delivered", d.delivered)
	r.set("e2e_lost", lost)
	r.set("e2e_duplicates", d.duplicates)
	r.set("e2e_duplicate_deliveries", d.extra)
	r.set("e2e_post_msgs_per_s", rate(len(res.accepted), postWall))
	r.check("throughput", fmt.Sprintf("%.0f msgs/s (%d in %.1f s)", e2e, d.delivered, wall.Seconds()), ">= 3000 msgs/s", e2e >= targetE2E)
	r.check("lost (accepted, not delivered)", fmt.Sprint(lost), "0", lost == 0 && len(res.accepted) > 0)
	r.check("duplicates (delivered more than once)", fmt.Sprint(d.duplicates), "0", d.duplicates == 0)
	r.line("POST failures", fmt.Sprint(res.failed))
	r.line("API acceptance rate", fmt.Sprintf("%.0f msgs/s", rate(len(res.accepted), postWall)))
	if f := fifths(res.first, d.first); f != nil {
		r.line("delivery rate by fifth of the messages", strings.Join(f, ", ")+" msgs/s")
	}
	took := make([]time.Duration, len(res.accepted))
	for i, p := range res.accepted {
		took[i] = p.took
	}
	if p, _ := percentiles(took, 0.5, 0.99); p != nil {
		r.set("e2e_api_p50_ms", p[0])
		r.set("e2e_api_p99_ms", p[1])
		r.line("API response p50 / p99 (closed loop)", fmt.Sprintf("%.1f / %.1f ms", p[0], p[1]))
	}
	b.reportCPU("", cpu, len(res.accepted), true)
	b.reportCommands("", cmdsBefore, cmdsAfter, len(res.accepted))
	return nil
}

// latency offers Rate messages per second for Duration, open loop, and
// measures each message from its scheduled POST to its first delivery.
func (b *bench) latency(ctx context.Context) error {
	o := b.opts
	b.logf("latency: %d msgs/s for %s, open loop", o.Rate, o.Duration)
	cmdsBefore := b.sampleCommands(ctx)
	before := b.sampleCPU()
	res := openLoop(ctx, b.stack.apiURL, o.Rate, o.Duration, offsetLatency)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	b.logf("latency: %d accepted, %d failed %s", len(res.accepted), res.failed, res.example)
	accepted := ids(res.accepted)
	b.waitDelivered(ctx, accepted, "latency")
	after := b.sampleCPU()
	cmdsAfter := b.sampleCommands(ctx)
	if err := b.stack.alive(); err != nil {
		return err
	}
	time.Sleep(settle)
	d := b.sink.of(accepted)
	var e2e, api []time.Duration
	for _, p := range res.accepted {
		api = append(api, p.took)
		if at, ok := d.first[p.id]; ok {
			e2e = append(e2e, at.Sub(p.start))
		}
	}

	r := b.rep
	r.section(fmt.Sprintf("Latency: %d msgs/s offered for %s, open loop", o.Rate, o.Duration))
	at := ""
	if o.Rate != 1000 {
		at = fmt.Sprintf(" (target is at 1000 msgs/s, run at %d)", o.Rate)
	}
	if p, mx := percentiles(e2e, 0.5, 0.95, 0.99); p != nil {
		r.set("latency_p50_ms", p[0])
		r.set("latency_p95_ms", p[1])
		r.set("latency_p99_ms", p[2])
		r.set("latency_max_ms", mx)
		r.line("POST to delivery p50 / p95", fmt.Sprintf("%.1f / %.1f ms", p[0], p[1]))
		r.check("POST to delivery p99"+at, fmt.Sprintf("%.1f ms", p[2]), "<= 100 ms", p[2] <= targetLatencyP99)
		r.line("POST to delivery max", fmt.Sprintf("%.1f ms", mx))
	} else {
		for _, k := range []string{"p50", "p95", "p99", "max"} {
			r.set("latency_"+k+"_ms", nil)
		}
		r.check("POST to delivery p99", "no delivery", "<= 100 ms", false)
	}
	if p, mx := percentiles(api, 0.5, 0.99); p != nil {
		r.set("latency_api_p50_ms", p[0])
		r.set("latency_api_p99_ms", p[1])
		r.set("latency_api_max_ms", mx)
		r.line("API response p50", fmt.Sprintf("%.1f ms", p[0]))
		r.check("API response p99"+at, fmt.Sprintf("%.1f ms", p[1]), "<= 20 ms", p[1] <= targetAPIP99)
	} else {
		for _, k := range []string{"p50", "p99", "max"} {
			r.set("latency_api_"+k+"_ms", nil)
		}
		r.check("API response p99", "no request accepted", "<= 20 ms", false)
	}
	lost := len(res.accepted) - d.delivered
	r.set("latency_accepted", len(res.accepted))
	r.set("latency_post_failed", res.failed)
	r.set("latency_delivered", d.delivered)
	r.set("latency_lost", lost)
	r.set("latency_duplicates", d.duplicates)
	r.line("accepted / failed / lost / duplicates", fmt.Sprintf("%d / %d / %d / %d", len(res.accepted), res.failed, lost, d.duplicates))
	b.reportCPU("latency_", before.to(after), len(res.accepted), false)
	b.reportCommands("latency_", cmdsBefore, cmdsAfter, len(res.accepted))
	return nil
}

// reportCPU records the CPU each process used per message in a phase.
func (b *bench) reportCPU(prefix string, d cpuDelta, msgs int, withTarget bool) {
	r := b.rep
	if msgs == 0 {
		r.set(prefix+"cpu_ms_per_msg_project", nil)
		return
	}
	per := func(x time.Duration) float64 { return ms(x) / float64(msgs) }
	proj := per(d.project())
	r.set(prefix+"cpu_ms_per_msg_project", proj)
	label := "CPU per accepted message, project"
	value := fmt.Sprintf("%.3f ms (api %.3f + publisher %.3f + processor %.3f)",
		proj, per(d.cpu["api"]), per(d.cpu["publisher"]), per(d.cpu["processor"]))
	if withTarget {
		r.check(label, value, "<= 0.3 ms", proj <= targetCPUPerMsg)
	} else {
		r.line(label, value)
	}
	var others []string
	for _, name := range []string{"api", "publisher", "processor", "mongodb", "rabbitmq", "redis", "bench"} {
		v, ok := d.cpu[name]
		if !ok {
			continue
		}
		r.set(prefix+"cpu_ms_per_msg_"+name, per(v))
		r.set(prefix+"cpu_util_pct_"+name, 100*float64(v)/float64(d.wall))
		if name != "api" && name != "publisher" && name != "processor" {
			others = append(others, fmt.Sprintf("%s %.3f", name, per(v)))
		}
	}
	r.line("CPU per accepted message, others", fmt.Sprintf("%s ms", strings.Join(others, ", ")))
	var util []string
	for _, name := range []string{"api", "publisher", "processor", "mongodb", "rabbitmq", "redis", "bench"} {
		if v, ok := d.cpu[name]; ok {
			util = append(util, fmt.Sprintf("%s %.0f", name, 100*float64(v)/float64(d.wall)))
		}
	}
	other := 100 * float64(d.other()) / float64(d.wall)
	r.set(prefix+"machine_cpu_busy_pct", 100*d.busyFrac)
	r.set(prefix+"cpu_util_pct_other", other)
	r.line("CPU use during the phase, % of one CPU", strings.Join(util, ", "))
	warn := ""
	if other > 20 {
		warn = " (other work on this machine disturbed the figures)"
	}
	r.line("CPU use of other processes, % of one CPU", fmt.Sprintf("%.0f%s", other, warn))
	r.line("machine CPU busy (all CPUs)", fmt.Sprintf("%.0f %%", 100*d.busyFrac))
}

// recordRSS records the peak resident memory of each process since it
// started.
func (b *bench) recordRSS() {
	r := b.rep
	r.section("Memory: peak RSS (VmHWM) since start")
	parts := ""
	for _, role := range append(append([]string{}, projectRoles...), "mongodb") {
		p := b.stack.procs[role]
		if p == nil {
			continue
		}
		v, err := procHWM(p.pid())
		if err != nil {
			continue
		}
		r.set("rss_peak_mib_"+role, mib(v))
		if role != "mongodb" {
			parts += fmt.Sprintf(" %s %.0f", role, mib(v))
		}
	}
	total := b.projectHWM()
	r.set("rss_peak_mib_project", total)
	r.check("project (api + publisher + processor)", fmt.Sprintf("%.0f MiB (%s)", total, parts[min(1, len(parts)):]),
		"<= 150 MiB", total <= targetRSS)
	if v, ok := r.vals["rss_peak_mib_mongodb"].(float64); ok {
		r.line("embedded MongoDB (reported apart)", fmt.Sprintf("%.0f MiB", v))
	}
}

// projectHWM is the sum of the project processes' peak RSS, in MiB.
func (b *bench) projectHWM() float64 {
	var sum int64
	for _, role := range projectRoles {
		if p := b.stack.procs[role]; p != nil {
			v, _ := procHWM(p.pid())
			sum += v
		}
	}
	return mib(sum)
}

func mib(bytes int64) float64 { return float64(bytes) / (1 << 20) }

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// fifths returns the delivery rate of each fifth of the delivered messages,
// in delivery order: a rate that falls from one fifth to the next means the
// system slows down as its data grows.
func fifths(start time.Time, first map[string]time.Time) []string {
	if len(first) < 5 {
		return nil
	}
	at := make([]time.Time, 0, len(first))
	for _, t := range first {
		at = append(at, t)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	var out []string
	prev := start
	for k := range 5 {
		lo, hi := k*len(at)/5, (k+1)*len(at)/5
		end := at[hi-1]
		out = append(out, fmt.Sprintf("%.0f", rate(hi-lo, end.Sub(prev))))
		prev = end
	}
	return out
}
