package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// TestDemoReceiverOutlivesTheDeliveriesInFlight: with no WEBHOOK_URL the
// demo receiver stands in for the webhook, and a stop ends it only after
// the deliveries in flight have finished. Here two of three messages wait
// in place for the outbound rate limit's token when the stop comes: they
// are delivered, not failed against a receiver already gone (with
// MAX_RETRIES=0, one failed call is FAILED).
func TestDemoReceiverOutlivesTheDeliveriesInFlight(t *testing.T) {
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": "", "MAX_RETRIES": "0",
		"WEBHOOK_RATE_LIMIT": "1", "WEBHOOK_RATE_BURST": "1"})
	api, _, stop := startSystemLogged(t, env)
	var ids []string
	for i := range 3 {
		resp, b := do(t, "POST", api+"/messages", fmt.Sprintf(`{"to":"+905551111111","content":"m%d"}`, i), map[string]string{"Content-Type": "application/json"})
		var m message.Message
		if err := json.Unmarshal(b, &m); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST answered %d: %v %s", resp.StatusCode, err, b)
		}
		ids = append(ids, m.ID)
	}
	// One message goes out at once; the two others, in the same prefetch,
	// then wait a second or two for their tokens.
	testenv.WaitFor(t, 30*time.Second, "a first delivery", func() bool {
		for _, id := range ids {
			if getMessage(t, api, id).Status == message.StatusSent {
				return true
			}
		}
		return false
	})
	stop()

	api, stop = startSystem(t, env)
	defer stop()
	for _, id := range ids {
		testenv.WaitFor(t, 30*time.Second, "message "+id+" to end", func() bool { return getMessage(t, api, id).Status.Final() })
		if m := getMessage(t, api, id); m.Status != message.StatusSent || strings.Contains(m.LastError, "refused") {
			t.Errorf("message %s after the stop: %s (%q), want SENT", id, m.Status, m.LastError)
		}
	}
}

// TestStopLetsALongRequestFinish: a stop waits for a request in flight
// for as long as the server lets one take (its write timeout), not less:
// an API request may run to its 30 s deadline, past which the app would be
// closed under it. Here a request of 16 s, with a write timeout of 20 s.
func TestStopLetsALongRequestFinish(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var finished atomic.Bool
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(16 * time.Second)
		finished.Store(true)
		w.WriteHeader(http.StatusCreated)
	})
	ctx, cancel := context.WithCancel(context.Background())
	var g group
	g.serve(ctx, cancel, ln, h, 20*time.Second)
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-started
	cancel()
	if err := g.waitErr(ctx); err != nil || !finished.Load() {
		t.Fatalf("stop: %v, request finished %v; want the request finished first", err, finished.Load())
	}
	if code := <-answered; code != http.StatusCreated {
		t.Fatalf("the request's answer: %d, want 201", code)
	}
}
