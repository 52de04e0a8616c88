package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// sink is the webhook the system delivers to: it answers 202 with a
// messageId at once, and records per webhook-id when the first delivery
// arrived and how many arrived.
type sink struct {
	url string
	srv *http.Server

	mu    sync.Mutex
	first map[string]time.Time
	count map[string]int
	total int
}

func startSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{
		url:   "http://" + ln.Addr().String() + "/webhook",
		first: map[string]time.Time{},
		count: map[string]int{},
	}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	id := r.Header.Get("webhook-id")
	// Reading the body to its end lets the connection be reused.
	_, _ = io.Copy(io.Discard, r.Body)
	if id == "" {
		http.Error(w, "no webhook-id", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	if _, ok := s.first[id]; !ok {
		s.first[id] = at
	}
	s.count[id]++
	s.total++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, `{"message":"Accepted","messageId":"wh-`+id+`"}`)
}

func (s *sink) close(ctx context.Context) { _ = s.srv.Shutdown(ctx) }

// deliveries is what the sink saw of a set of messages.
type deliveries struct {
	delivered  int // distinct ids delivered
	duplicates int // ids delivered more than once
	extra      int // deliveries beyond the first, summed
	last       time.Time
	first      map[string]time.Time // first delivery of each delivered id
}

func (s *sink) of(ids []string) deliveries {
	d := deliveries{first: make(map[string]time.Time, len(ids))}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		at, ok := s.first[id]
		if !ok {
			continue
		}
		d.delivered++
		d.first[id] = at
		if at.After(d.last) {
			d.last = at
		}
		if c := s.count[id]; c > 1 {
			d.duplicates++
			d.extra += c - 1
		}
	}
	return d
}

// seen counts how many of ids have been delivered, and returns with it the
// number of distinct ids the sink has seen, all phases together.
func (s *sink) seen(ids []string) (n, distinct int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.first[id]; ok {
			n++
		}
	}
	return n, len(s.first)
}

// distinct is the number of distinct ids the sink has seen.
func (s *sink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.first)
}

func (s *sink) totalDeliveries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// waitDelivered waits until every id is delivered, the system stalls (no
// new delivery for stall), a process exits, or wait passes. It returns how
// many were delivered.
func (b *bench) waitDelivered(ctx context.Context, ids []string, what string) int {
	deadline := time.Now().Add(b.opts.Wait)
	lastN, lastProgress := -1, time.Now()
	lastLog := time.Now()
	// Counting ids takes the sink's lock for half a millisecond per 20,000
	// (5% of a CPU, polled every 10 ms). Between counts a new id adds at
	// most one to the count, so the sink's distinct ids say when all could
	// be in: the count is taken then, and once a second for the progress.
	n, distinct := b.sink.seen(ids)
	counted := time.Now()
	for {
		now := time.Now()
		if d := b.sink.distinct(); n+d-distinct >= len(ids) || now.Sub(counted) >= time.Second {
			n, distinct = b.sink.seen(ids)
			counted = now
		}
		if n == len(ids) {
			return n
		}
		if n != lastN {
			lastN, lastProgress = n, now
		}
		if now.Sub(lastLog) >= 5*time.Second {
			b.logf("%s: %d of %d delivered", what, n, len(ids))
			lastLog = now
		}
		switch {
		case now.After(deadline):
			b.logf("%s: gave up after -wait %s with %d of %d delivered", what, b.opts.Wait, n, len(ids))
			return n
		case now.Sub(lastProgress) > b.opts.Stall:
			b.logf("%s: no delivery for -stall %s; %d of %d delivered", what, b.opts.Stall, n, len(ids))
			return n
		}
		if err := b.stack.alive(); err != nil {
			b.logf("%s: %v", what, err)
			return n
		}
		select {
		case <-ctx.Done():
			return n
		case <-time.After(10 * time.Millisecond):
		}
	}
}
