package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Post is the fate of one message the load sent.
type Post struct {
	Index int
	Key   string
	To    string
	// ID is the accepted message's id ("" if never accepted).
	ID string
	// Tries counts the POSTs made; Replayed is set when the accepting
	// answer was a 200 replay.
	Tries    int
	Replayed bool
	// Errors are the answers that were neither a retryable failure nor an
	// acceptance: a client error the system should not give (or the last
	// failure when the load gave up).
	Errors []string
	// Latency is the time from the first POST to the accepting answer.
	Latency time.Duration
}

// Load posts n messages from clients clients at rate messages/s in total.
// A POST that fails (connection refused or cut, 5xx, 409 while the first
// request with the key is in progress) is retried with the same
// Idempotency-Key until giveUp passes.
type Load struct {
	API     string
	N       int
	Clients int
	Rate    float64
	KeyBase string
	// ToFor returns the recipient of message i.
	ToFor func(i int) string
	// SendAt, if set, returns the sendAt of message i (nil: at once).
	SendAt func(i int) *time.Time
	GiveUp time.Duration
	// Deadline ends the load: messages not posted by then are recorded as
	// not accepted, so that a wedged system cannot hold the run for hours.
	Deadline time.Time
}

// Run posts the messages and returns their fates, indexed by message.
func (l Load) Run(ctx context.Context) []Post {
	posts := make([]Post, l.N)
	if !l.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, l.Deadline)
		defer cancel()
	}
	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	interval := time.Duration(float64(time.Second) * float64(l.Clients) / l.Rate)
	var wg sync.WaitGroup
	for c := range l.Clients {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			next := start.Add(time.Duration(c) * interval / time.Duration(l.Clients))
			for i := c; i < l.N; i += l.Clients {
				// A steady rate: a client that fell behind (the API was
				// down) catches up at once.
				if d := time.Until(next); d > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(d):
					}
				}
				next = next.Add(interval)
				posts[i] = l.post(ctx, client, i)
			}
		}(c)
	}
	wg.Wait()
	return posts
}

func (l Load) post(ctx context.Context, client *http.Client, i int) Post {
	p := Post{Index: i, Key: fmt.Sprintf("%s-%d", l.KeyBase, i), To: l.ToFor(i)}
	req := map[string]string{"to": p.To, "content": fmt.Sprintf("chaos message %d", i)}
	if l.SendAt != nil {
		if at := l.SendAt(i); at != nil {
			req["sendAt"] = at.UTC().Format(time.RFC3339Nano)
		}
	}
	body, _ := json.Marshal(req)
	first := time.Now()
	deadline := first.Add(l.GiveUp)
	pause := 100 * time.Millisecond
	for {
		if ctx.Err() != nil {
			p.Errors = append(p.Errors, "load deadline passed before an acceptance")
			return p
		}
		p.Tries++
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.API+"/messages", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", p.Key)
		resp, err := client.Do(req)
		retry := ""
		if err != nil {
			retry = err.Error()
		} else {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
				var m message.Message
				if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
					p.Errors = append(p.Errors, fmt.Sprintf("%d with an unreadable message: %s", resp.StatusCode, b))
					return p
				}
				p.ID, p.Replayed, p.Latency = m.ID, resp.StatusCode == http.StatusOK, time.Since(first)
				return p
			case resp.StatusCode == http.StatusConflict || resp.StatusCode >= 500:
				retry = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
			default:
				// 400, 415, 422...: the request is the same every time, so a
				// client error here is the system's.
				p.Errors = append(p.Errors, fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b)))
				return p
			}
		}
		if time.Now().After(deadline) {
			p.Errors = append(p.Errors, "gave up after "+l.GiveUp.String()+": "+retry)
			return p
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}
