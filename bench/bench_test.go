package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis, as /proc allows.
	stat := "4242 (rms (x) y) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 75 0 0 20 0 12 0 5000 0 0"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3250*time.Millisecond {
		t.Fatalf("parseStatCPU = %v, %v; want 3.25s", got, err)
	}
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\trms\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n"
	got, err := parseStatusKB([]byte(status), "VmHWM:")
	if err != nil || got != 51200*1024 {
		t.Fatalf("parseStatusKB = %d, %v; want %d", got, err, 51200*1024)
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	p, mx := percentiles(ds, 0.5, 0.95, 0.99)
	if p[0] != 50 || p[1] != 95 || p[2] != 99 || mx != 100 {
		t.Fatalf("percentiles = %v max %v; want [50 95 99] max 100", p, mx)
	}
	if p, _ := percentiles(nil, 0.5); p != nil {
		t.Fatalf("percentiles of nothing = %v", p)
	}
}

func TestReportJSONKeepsOrder(t *testing.T) {
	r := newReport()
	r.set("b_ms", 1.23456)
	r.set("a", nil)
	r.set("c", "x")
	if got, want := r.json(), `{"b_ms":1.235,"a":null,"c":"x"}`; got != want {
		t.Fatalf("json = %s; want %s", got, want)
	}
}

// TestSettingsFromEnvironment: a run names the configuration it inherited
// from the caller's environment, leaving out what the bench sets itself
// and what is not configuration.
func TestSettingsFromEnvironment(t *testing.T) {
	env := map[string]string{"PROCESSOR_CONCURRENCY": "64", "BATCH_SIZE": "200", "MONGODB_URI": "mongodb://x/", "HOME": "/root"}
	got := settingsFromEnvironment(func(k string) string { return env[k] }, map[string]string{"MONGODB_URI": "mongodb://bench/"})
	if want := []string{"BATCH_SIZE", "PROCESSOR_CONCURRENCY"}; !slices.Equal(got, want) {
		t.Fatalf("settings %v, want %v", got, want)
	}
}

// TestWaitDeliveredEndsWithTheLastDelivery: waitDelivered, which counts
// the phase's ids only when the sink's new ids could complete them (and
// once a second), returns as soon as the last one arrives, not a count
// period later, and ids of other phases do not make it end early.
func TestWaitDeliveredEndsWithTheLastDelivery(t *testing.T) {
	s, err := startSink()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close(context.Background())
	b := &bench{opts: flags{Wait: 20 * time.Second, Stall: 10 * time.Second}, log: io.Discard, sink: s, stack: &stack{}}
	deliver := func(id string) error {
		req, _ := http.NewRequest(http.MethodPost, s.url, strings.NewReader("{}"))
		req.Header.Set("webhook-id", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
	ids := []string{"a", "b", "c", "d"}
	if err := deliver("a"); err != nil {
		t.Fatal(err)
	}
	type last struct {
		at  time.Time
		err error
	}
	lastAt := make(chan last, 1)
	go func() {
		var err error
		for _, id := range []string{"warm-up", "b", "c"} {
			time.Sleep(300 * time.Millisecond)
			err = errors.Join(err, deliver(id))
		}
		time.Sleep(1500 * time.Millisecond)
		err = errors.Join(err, deliver("d"))
		lastAt <- last{time.Now(), err}
	}()
	n := b.waitDelivered(context.Background(), ids, "test")
	l := <-lastAt
	if l.err != nil {
		t.Fatal(l.err)
	}
	if n != len(ids) {
		t.Fatalf("waitDelivered = %d, want %d", n, len(ids))
	}
	// A count period (1 s) late is what this guards against.
	if late := time.Since(l.at); late > 500*time.Millisecond {
		t.Errorf("waitDelivered returned %s after the last delivery", late)
	}
}
