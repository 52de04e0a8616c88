package metrics_test

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/metrics"
)

func TestEMFLine(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: &buf, Now: func() time.Time { return time.UnixMilli(1764300000000) }}
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatalf("an empty flush writes nothing: %q %v", buf.String(), err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); e.Add("delivered", 1) }()
	}
	wg.Wait()
	e.Add("retried", 2)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	var line struct {
		AWS struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		} `json:"_aws"`
		Function  string
		Delivered int `json:"delivered"`
		Retried   int `json:"retried"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%s: %v", buf.String(), err)
	}
	cw := line.AWS.CloudWatchMetrics
	if line.AWS.Timestamp != 1764300000000 || len(cw) != 1 || cw[0].Namespace != "ReliableMessaging" ||
		len(cw[0].Metrics) != 2 || cw[0].Dimensions[0][0] != "Function" || line.Function != "processor" ||
		line.Delivered != 10 || line.Retried != 2 {
		t.Fatalf("unexpected EMF line %s", buf.String())
	}
	buf.Reset()
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatal("a flush resets the counters")
	}
}

// TestEMFStackDimension: with a stack named, the metrics carry it as a
// dimension along with the function.
func TestEMFStackDimension(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "api", Stack: "rms-prod", W: &buf, Now: time.Now}
	e.Add("accepted", 1)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	var line struct {
		AWS struct {
			CloudWatchMetrics []struct{ Dimensions [][]string }
		} `json:"_aws"`
		Stack, Function string
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatal(err)
	}
	if line.Stack != "rms-prod" || line.Function != "api" || len(line.AWS.CloudWatchMetrics) != 1 ||
		!slices.Equal(line.AWS.CloudWatchMetrics[0].Dimensions[0], []string{"Stack", "Function"}) {
		t.Fatalf("unexpected EMF line %s", buf.String())
	}
}

// TestEMFFlushBefore: the counts reach the log shortly before the
// invocation's deadline, for an invocation that would be cut off there; an
// invocation that ends first stops the early flush.
func TestEMFFlushBefore(t *testing.T) {
	var w logbuf.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: &w, Now: time.Now}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	stop := e.FlushBefore(ctx, 100*time.Millisecond)
	defer stop()
	e.Add("delivered", 3)
	<-ctx.Done()
	// Due 100 ms before the deadline; a loaded machine may run it late,
	// and nothing else would flush.
	for deadline := time.Now().Add(5 * time.Second); w.String() == "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if w.String() == "" {
		t.Fatal("nothing flushed by the deadline")
	}

	var quiet logbuf.Buffer
	e = &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: &quiet, Now: time.Now}
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	e.FlushBefore(ctx, 100*time.Millisecond)()
	e.Add("delivered", 1)
	<-ctx.Done()
	if quiet.String() != "" {
		t.Fatal("flushed after stop")
	}
	if stop := e.FlushBefore(context.Background(), time.Second); stop == nil {
		t.Fatal("no stop without a deadline")
	}
}

// blockedWriter holds its first Write until release is closed, and says
// on started that it has begun.
type blockedWriter struct {
	started, release chan struct{}
	once             sync.Once
	mu               sync.Mutex
	lines            int
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		close(w.started)
		<-w.release
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines++
	return len(p), nil
}

// TestEMFStopWaitsForTheEarlyFlush: an early flush that has started has
// taken the counts, so the invocation's last Flush finds none; stop waits
// for it to be written, or the invocation would return (and Lambda freeze
// the process) with the line unwritten.
func TestEMFStopWaitsForTheEarlyFlush(t *testing.T) {
	w := &blockedWriter{started: make(chan struct{}), release: make(chan struct{})}
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: w, Now: time.Now}
	e.Add("delivered", 3)
	ctx, cancel := context.WithTimeout(context.Background(), 110*time.Millisecond)
	defer cancel()
	stop := e.FlushBefore(ctx, 100*time.Millisecond)
	<-w.started
	stopped := make(chan struct{})
	go func() {
		stop()
		_ = e.Flush()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("stop returned while the early flush was still writing")
	case <-time.After(100 * time.Millisecond):
	}
	close(w.release)
	<-stopped
	stop() // a second stop returns at once
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lines != 1 {
		t.Fatalf("%d lines written, want the early flush's one", w.lines)
	}
}

// TestEMFSkipsAGaugeJSONCannotHold: a NaN or infinite gauge is left out
// of its line; the counts beside it are written.
func TestEMFSkipsAGaugeJSONCannotHold(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "publisher", W: &buf, Now: time.Now}
	e.Add("delivered", 5)
	e.Set("outbox_oldest_age", math.Inf(1), "Seconds")
	e.Set("outbox_backlog", math.NaN(), "Count")
	if err := e.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line["delivered"] != 5.0 {
		t.Fatalf("line %q (%v), want the count", buf.String(), err)
	}
	if _, ok := line["outbox_oldest_age"]; ok {
		t.Fatalf("line %q holds the infinite gauge", buf.String())
	}
}

// TestEMFGauges: a gauge is written with its own unit next to the counts,
// the last value set wins, and a flush resets gauges as it does counts.
func TestEMFGauges(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "publisher", W: &buf, Now: time.Now}
	e.Set("outbox_oldest_age", 3, "Seconds")
	e.Set("outbox_oldest_age", 12.5, "Seconds")
	e.Set("outbox_backlog", 40, "Count")
	e.Add("published", 7)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	var line struct {
		AWS struct {
			CloudWatchMetrics []struct{ Metrics []struct{ Name, Unit string } }
		} `json:"_aws"`
		Age       float64 `json:"outbox_oldest_age"`
		Backlog   float64 `json:"outbox_backlog"`
		Published int     `json:"published"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%s: %v", buf.String(), err)
	}
	units := map[string]string{}
	for _, m := range line.AWS.CloudWatchMetrics[0].Metrics {
		units[m.Name] = m.Unit
	}
	want := map[string]string{"published": "Count", "outbox_backlog": "Count", "outbox_oldest_age": "Seconds"}
	if !maps.Equal(units, want) || line.Age != 12.5 || line.Backlog != 40 || line.Published != 7 {
		t.Fatalf("EMF line %s, want units %v and the last values set", buf.String(), want)
	}
	buf.Reset()
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatalf("a flush resets the gauges: %q", buf.String())
	}
}

// TestEMFLatencies: each latency recorded reaches the log as a value in
// milliseconds, for CloudWatch to compute percentiles; a line carries at
// most 100 values of a metric, so more go on further lines, and the counts
// are written once.
func TestEMFLatencies(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: &buf, Now: time.Now}
	for i := range 250 {
		e.Time("webhook", time.Duration(i)*time.Millisecond+500*time.Microsecond)
	}
	e.Time("delivery", 2*time.Second)
	e.Add("delivered", 250)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	type line struct {
		AWS struct {
			CloudWatchMetrics []struct{ Metrics []struct{ Name, Unit string } }
		} `json:"_aws"`
		Webhook   []float64 `json:"webhook_latency"`
		Delivery  []float64 `json:"delivery_latency"`
		Delivered *int      `json:"delivered"`
	}
	var webhook []float64
	var delivered, deliveries, lines int
	for _, b := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var l line
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		lines++
		if len(l.Webhook) > 100 {
			t.Errorf("a line carries %d values of one metric, the most EMF allows is 100", len(l.Webhook))
		}
		for _, m := range l.AWS.CloudWatchMetrics[0].Metrics {
			if (m.Name == "webhook_latency" || m.Name == "delivery_latency") && m.Unit != "Milliseconds" {
				t.Errorf("%s in %s, want Milliseconds", m.Name, m.Unit)
			}
		}
		webhook = append(webhook, l.Webhook...)
		deliveries += len(l.Delivery)
		if l.Delivered != nil {
			delivered += *l.Delivered
		}
	}
	if lines != 3 || len(webhook) != 250 || deliveries != 1 || delivered != 250 {
		t.Fatalf("%d lines, %d webhook values, %d delivery values, %d delivered; want 3, 250, 1, 250:\n%s",
			lines, len(webhook), deliveries, delivered, buf.String())
	}
	if webhook[0] != 0.5 || webhook[249] != 249.5 {
		t.Fatalf("webhook values from %v to %v, want 0.5 to 249.5 (milliseconds)", webhook[0], webhook[249])
	}
	buf.Reset()
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatalf("a flush resets the latencies: %q", buf.String())
	}
}
