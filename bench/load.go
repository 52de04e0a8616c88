package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// posted is one accepted POST /messages.
type posted struct {
	id    string
	start time.Time     // when the request was sent (open loop: scheduled)
	took  time.Duration // until the answer was read
}

// postResult is what a load run got back.
type postResult struct {
	accepted []posted
	failed   int    // transport errors and answers other than 202
	example  string // one failure, for the log
	first    time.Time
	last     time.Time // the last answer
}

// newHTTPClient returns a keep-alive client for the API. maxConns bounds
// the connections it opens; more requests wait for one, and the wait
// counts in their response time.
func newHTTPClient(maxConns int) *http.Client {
	t := &http.Transport{
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		MaxConnsPerHost:     maxConns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: t, Timeout: 30 * time.Second}
}

// messageBody is the request of message i: a valid number and about 60
// characters of content.
func messageBody(i int) []byte {
	return fmt.Appendf(nil, `{"to":"+90555%07d","content":"Benchmark message %d: the quick brown fox jumps over it"}`, i%10000000, i)
}

// postOne sends one message and returns the id of a 202 answer.
func postOne(ctx context.Context, c *http.Client, api string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, api+"/messages", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("POST /messages answered %d: %.200s", resp.StatusCode, b)
	}
	var m struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
		return "", fmt.Errorf("202 answer without an id: %.200s", b)
	}
	return m.ID, nil
}

// closedLoop posts n messages from clients goroutines, each sending its
// next request when the previous one has answered. No request is started
// after maxPost: a system too slow for n gets fewer.
func closedLoop(ctx context.Context, api string, n, clients, offset int, maxPost time.Duration) postResult {
	c := newHTTPClient(clients)
	defer c.CloseIdleConnections()
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  postResult
		wg   sync.WaitGroup
	)
	res.first = time.Now()
	stopAt := res.first.Add(maxPost)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n || time.Now().After(stopAt) {
					return
				}
				t0 := time.Now()
				id, err := postOne(ctx, c, api, messageBody(offset+i))
				took := time.Since(t0)
				mu.Lock()
				if err != nil {
					res.failed++
					if res.example == "" {
						res.example = err.Error()
					}
				} else {
					res.accepted = append(res.accepted, posted{id: id, start: t0, took: took})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.last = time.Now()
	return res
}

// openLoop offers rate messages per second for d: request i is sent at
// start + i/rate whether or not earlier ones have answered, so a slow
// server meets the full rate and its slowness shows in the response times
// (measured from the scheduled time) instead of lowering the rate.
func openLoop(ctx context.Context, api string, rate int, d time.Duration, offset int) postResult {
	// Enough connections for a second's worth of requests in flight; more
	// wait for a free one.
	c := newHTTPClient(min(max(rate, 64), 512))
	defer c.CloseIdleConnections()
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	var (
		mu  sync.Mutex
		res postResult
		wg  sync.WaitGroup
	)
	start := time.Now()
	res.first = start
	for i := 0; i < total && ctx.Err() == nil; i++ {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := postOne(ctx, c, api, messageBody(offset+i))
			took := time.Since(at)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.failed++
				if res.example == "" {
					res.example = err.Error()
				}
				return
			}
			res.accepted = append(res.accepted, posted{id: id, start: at, took: took})
		}()
	}
	wg.Wait() // bounded by the client's 30 s timeout
	res.last = time.Now()
	return res
}

func ids(ps []posted) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.id
	}
	return out
}

// percentiles returns the nearest-rank percentiles qs (0..1) of ds in
// milliseconds, and the maximum; nil when ds is empty.
func percentiles(ds []time.Duration, qs ...float64) ([]float64, float64) {
	if len(ds) == 0 {
		return nil, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := make([]float64, len(qs))
	for i, q := range qs {
		k := int(math.Ceil(q*float64(len(s)))) - 1
		k = min(max(k, 0), len(s)-1)
		out[i] = ms(s[k])
	}
	return out, ms(s[len(s)-1])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
