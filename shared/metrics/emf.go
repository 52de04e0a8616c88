// Package metrics counts what the system does. EMF writes the counts as
// CloudWatch Embedded Metric Format log lines, which is how the Lambda
// functions publish metrics: CloudWatch Logs turns each line into metrics,
// with no agent and no extra call.
package metrics

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// EMF accumulates counters, gauges and latencies during one invocation and
// writes them as EMF lines on Flush. Safe for concurrent use.
type EMF struct {
	Namespace string
	// Function is the value of the "Function" dimension.
	Function string
	// Stack, if set, is the value of a "Stack" dimension, so that the
	// metrics of two stacks in one account and region stay apart.
	Stack string
	W     io.Writer
	Now   func() time.Time

	mu     sync.Mutex
	counts map[string]int
	gauges map[string]gauge
	// timings holds the latencies recorded by Time, in milliseconds.
	timings map[string][]float64
}

// maxValues is how many values one metric may carry in one EMF line; a
// flush with more writes further lines.
const maxValues = 100

// gauge is a value read at a moment, with its CloudWatch unit.
type gauge struct {
	value float64
	unit  string
}

// Add counts n events named name. Its signature fits the Observe hooks of
// the roles.
func (e *EMF) Add(name string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.counts == nil {
		e.counts = map[string]int{}
	}
	e.counts[name] += n
}

// Set records a gauge named name: a value read now, such as the outbox's
// backlog, in a CloudWatch unit ("Count", "Seconds", "None", ...). A later
// Set before the next Flush replaces it. A NaN or infinite value is not
// written.
func (e *EMF) Set(name string, value float64, unit string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gauges == nil {
		e.gauges = map[string]gauge{}
	}
	e.gauges[name] = gauge{value: value, unit: unit}
}

// Time records a latency of kind as a value of the metric kind+"_latency",
// in milliseconds: each value reaches CloudWatch, which computes the
// percentiles. Its signature fits the processor's Timing hook.
func (e *EMF) Time(kind string, d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timings == nil {
		e.timings = map[string][]float64{}
	}
	name := kind + "_latency"
	e.timings[name] = append(e.timings[name], float64(d.Microseconds())/1000)
}

// Flush writes the counters, gauges and latencies gathered since the last
// Flush, if any, and resets them: one line, or more when a latency has
// more values than one line may carry.
func (e *EMF) Flush() error {
	e.mu.Lock()
	counts, gauges, timings := e.counts, e.gauges, e.timings
	e.counts, e.gauges, e.timings = nil, nil, nil
	e.mu.Unlock()
	for first := true; first || len(timings) > 0; first = false {
		// The first line has the counts and gauges; each line takes up
		// to maxValues of each latency's values.
		batch := make(map[string][]float64, len(timings))
		for n, vs := range timings {
			k := min(len(vs), maxValues)
			batch[n] = vs[:k]
			if k == len(vs) {
				delete(timings, n)
			} else {
				timings[n] = vs[k:]
			}
		}
		if err := e.write(counts, gauges, batch); err != nil {
			return err
		}
		counts, gauges = nil, nil
	}
	return nil
}

// write writes one EMF line, if it has anything to say.
func (e *EMF) write(counts map[string]int, gauges map[string]gauge, timings map[string][]float64) error {
	if len(counts) == 0 && len(gauges) == 0 && len(timings) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(counts))
	defs := make([]map[string]string, len(names), len(names)+len(gauges)+len(timings))
	line := map[string]any{"Function": e.Function}
	dims := []string{"Function"}
	if e.Stack != "" {
		line["Stack"] = e.Stack
		dims = []string{"Stack", "Function"}
	}
	for i, n := range names {
		defs[i] = map[string]string{"Name": n, "Unit": "Count"}
		line[n] = counts[n]
	}
	for _, n := range slices.Sorted(maps.Keys(gauges)) {
		if _, counted := counts[n]; counted {
			continue // one value per name in a line; the count wins
		}
		if v := gauges[n].value; math.IsNaN(v) || math.IsInf(v, 0) {
			continue // JSON has no such number: it would lose the whole line
		}
		defs = append(defs, map[string]string{"Name": n, "Unit": gauges[n].unit})
		line[n] = gauges[n].value
	}
	for _, n := range slices.Sorted(maps.Keys(timings)) {
		if _, taken := line[n]; taken {
			continue
		}
		defs = append(defs, map[string]string{"Name": n, "Unit": "Milliseconds"})
		line[n] = timings[n]
	}
	line["_aws"] = map[string]any{
		"Timestamp": e.Now().UnixMilli(),
		"CloudWatchMetrics": []any{map[string]any{
			"Namespace":  e.Namespace,
			"Dimensions": [][]string{dims},
			"Metrics":    defs,
		}},
	}
	b, err := json.Marshal(line)
	if err != nil {
		return err
	}
	_, err = e.W.Write(append(b, '\n'))
	return err
}

// FlushBefore flushes once, margin before ctx's deadline, so that an
// invocation that runs out of time still reports what it counted: Lambda
// ends a timed-out invocation before its deferred calls run. Call stop when
// the invocation ends (before the last Flush): it cancels the early flush,
// or waits for it if it has started, since that flush has taken the counts
// and Lambda may freeze the process once the invocation returns.
func (e *EMF) FlushBefore(ctx context.Context, margin time.Duration) (stop func()) {
	dl, ok := ctx.Deadline()
	if !ok {
		return func() {}
	}
	done := make(chan struct{})
	t := time.AfterFunc(time.Until(dl)-margin, func() {
		defer close(done)
		_ = e.Flush()
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			if !t.Stop() {
				<-done
			}
		})
	}
}
