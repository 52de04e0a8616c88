// Package metrics counts what the system does. EMF writes the counts as
// CloudWatch Embedded Metric Format log lines, which is how the Lambda
// functions publish metrics: CloudWatch Logs turns each line into metrics,
// with no agent and no extra call.
package metrics

import (
	"encoding/json"
	"io"
	"maps"
	"slices"
	"sync"
	"time"
)

// EMF accumulates counters during one invocation and writes them as one EMF
// line on Flush. Safe for concurrent use.
type EMF struct {
	Namespace string
	// Function is the value of the "Function" dimension.
	Function string
	W        io.Writer
	Now      func() time.Time

	mu     sync.Mutex
	counts map[string]int
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

// Flush writes the counters gathered since the last Flush, if any, as one
// line, and resets them.
func (e *EMF) Flush() error {
	e.mu.Lock()
	counts := e.counts
	e.counts = nil
	e.mu.Unlock()
	if len(counts) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(counts))
	defs := make([]map[string]string, len(names))
	line := map[string]any{"Function": e.Function}
	for i, n := range names {
		defs[i] = map[string]string{"Name": n, "Unit": "Count"}
		line[n] = counts[n]
	}
	line["_aws"] = map[string]any{
		"Timestamp": e.Now().UnixMilli(),
		"CloudWatchMetrics": []any{map[string]any{
			"Namespace":  e.Namespace,
			"Dimensions": [][]string{{"Function"}},
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
