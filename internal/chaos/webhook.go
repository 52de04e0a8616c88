package chaos

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"time"
)

// WebhookBehaviour says how the misbehaving webhook answers. Shares are
// probabilities per call; what is left answers 202 with a messageId.
type WebhookBehaviour struct {
	// ServerErrors is the share of 500 answers.
	ServerErrors float64
	// TooMany is the share of 429 answers with Retry-After: 1.
	TooMany float64
	// Timeouts is the share of calls held until the client gives up: the
	// webhook never accepts them.
	Timeouts float64
	// LateSuccesses is the share of calls the webhook accepts (it counts
	// them as received) but answers only after the client gave up: the
	// timeout window the README names.
	LateSuccesses float64
	// PermanentSuffix: every message whose "to" ends with it gets 400,
	// every time.
	PermanentSuffix string
	// HoldFor bounds how long a timeout or late answer is held; it must
	// exceed WEBHOOK_TIMEOUT.
	HoldFor time.Duration
}

// Call kinds, as the webhook recorded them.
const (
	CallOK        = "ok"          // 202 answered at once
	CallError     = "500"         // 500
	CallTooMany   = "429"         // 429 with Retry-After: 1
	CallTimeout   = "timeout"     // held until the client hung up, never accepted
	CallLateOK    = "late-ok"     // accepted, answered after the client hung up
	CallPermanent = "400"         // permanent failure for the recipient
	CallOutage    = "outage"      // 503 during a webhook outage
	CallBad       = "bad-request" // body and webhook-id disagree
)

// Call is one webhook call as the webhook saw it.
type Call struct {
	ID    string
	Start time.Time
	// End is when the answer was written, or when the webhook saw the
	// client hang up (a timeout).
	End    time.Time
	Kind   string
	Status int // the status written, 0 if the client was gone
	// Accepted is true when the webhook took the message: a 2xx the client
	// read, or a late one it did not.
	Accepted bool
	// ClientGone is true when the client hung up before the answer.
	ClientGone bool
}

// Retryable reports whether the system must treat the call as a retryable
// failure (what the processor saw, not what the webhook did).
func (c Call) Retryable() bool {
	switch c.Kind {
	case CallError, CallTooMany, CallTimeout, CallLateOK, CallOutage:
		return true
	}
	return false
}

// Webhook is an httptest server that misbehaves as told and records every
// call per webhook-id.
type Webhook struct {
	URL string
	b   WebhookBehaviour
	srv *httptest.Server

	mu     sync.Mutex
	rng    *rand.Rand
	calls  map[string][]Call
	total  int
	outage time.Time // answering 503 to everything until then
}

// NewWebhook starts the webhook. Close it when done.
func NewWebhook(b WebhookBehaviour, seed uint64) *Webhook {
	w := &Webhook{b: b, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), calls: map[string][]Call{}}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	w.URL = w.srv.URL + "/webhook"
	return w
}

// Close stops the server, cutting calls still held.
func (w *Webhook) Close() {
	w.srv.CloseClientConnections()
	w.srv.Close()
}

// Outage makes the webhook answer 503 to every call for d.
func (w *Webhook) Outage(d time.Duration) {
	w.mu.Lock()
	w.outage = time.Now().Add(d)
	w.mu.Unlock()
}

func (w *Webhook) choose(to string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Now().Before(w.outage) {
		return CallOutage
	}
	if w.b.PermanentSuffix != "" && strings.HasSuffix(to, w.b.PermanentSuffix) {
		return CallPermanent
	}
	x := w.rng.Float64()
	for _, k := range []struct {
		share float64
		kind  string
	}{{w.b.ServerErrors, CallError}, {w.b.TooMany, CallTooMany}, {w.b.Timeouts, CallTimeout}, {w.b.LateSuccesses, CallLateOK}} {
		if x < k.share {
			return k.kind
		}
		x -= k.share
	}
	return CallOK
}

func (w *Webhook) serve(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var body struct{ ID, To, Content string }
	id := r.Header.Get("webhook-id")
	c := Call{ID: id, Start: start}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.ID == "" || body.ID != id {
		c.Kind, c.Status = CallBad, http.StatusBadRequest
		http.Error(rw, "body id and webhook-id disagree", c.Status)
		c.End = time.Now()
		w.record(c)
		return
	}
	c.Kind = w.choose(body.To)
	switch c.Kind {
	case CallOK:
		c.Status, c.Accepted = http.StatusAccepted, true
	case CallError:
		c.Status = http.StatusInternalServerError
	case CallTooMany:
		c.Status = http.StatusTooManyRequests
		rw.Header().Set("Retry-After", "1")
	case CallPermanent:
		c.Status = http.StatusBadRequest
	case CallOutage:
		c.Status = http.StatusServiceUnavailable
	case CallTimeout, CallLateOK:
		// Hold the call until the client hangs up (or HoldFor passes).
		t := time.NewTimer(w.b.HoldFor)
		select {
		case <-r.Context().Done():
			c.ClientGone = true
		case <-t.C:
		}
		t.Stop()
		if c.Kind == CallLateOK {
			c.Accepted = true
			c.Status = http.StatusAccepted
		} else {
			c.Status = http.StatusServiceUnavailable
		}
		if c.ClientGone {
			c.Status = 0
		} else if c.Kind == CallLateOK {
			// The client waited longer than HoldFor: an ordinary success.
			c.Kind = CallOK
		}
	}
	if c.Status != 0 {
		if c.Status/100 == 2 {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(c.Status)
			fmt.Fprintf(rw, `{"message":"Accepted","messageId":"wh-%s"}`, id)
		} else {
			http.Error(rw, http.StatusText(c.Status), c.Status)
		}
	}
	c.End = time.Now()
	w.record(c)
}

func (w *Webhook) record(c Call) {
	w.mu.Lock()
	w.calls[c.ID] = append(w.calls[c.ID], c)
	w.total++
	w.mu.Unlock()
}

// Calls returns a copy of every call so far, per webhook-id, sorted by
// start time.
func (w *Webhook) Calls() map[string][]Call {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]Call, len(w.calls))
	for id, cs := range w.calls {
		cp := append([]Call(nil), cs...)
		sort.Slice(cp, func(i, j int) bool { return cp[i].Start.Before(cp[j].Start) })
		out[id] = cp
	}
	return out
}

// Total returns the number of calls so far.
func (w *Webhook) Total() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}
