package webhook_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/webhook"
)

var (
	key    = []byte("0123456789abcdef0123456789abcdef")
	secret = "whsec_" + base64.StdEncoding.EncodeToString(key)
	msg    = message.Message{ID: "0190a3c2-7b1e-7cde-8f00-000000000001", To: "+905551234567", Content: "Hello <world> & \"you\""}
)

// request is what a test server saw.
type request struct {
	method string
	header http.Header
	body   []byte
}

// recordServer answers every request with answer and sends what it received
// on the returned channel.
func recordServer(t *testing.T, answer http.HandlerFunc) (*httptest.Server, <-chan request) {
	t.Helper()
	got := make(chan request, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- request{r.Method, r.Header.Clone(), b}
		answer(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func accepted(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"message":"Accepted","messageId":"wh-1"}`)
}

func newClient(t *testing.T, o webhook.Options) *webhook.Client {
	t.Helper()
	c, err := webhook.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestSendBodyHeadersAndSignature(t *testing.T) {
	srv, got := recordServer(t, accepted)
	now := time.Unix(1_700_000_000, 0)
	c := newClient(t, webhook.Options{URL: srv.URL + "/hook?token=x", Secret: secret, Now: func() time.Time { return now }})

	resp, err := c.Send(t.Context(), msg)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if resp.StatusCode != http.StatusAccepted || resp.MessageID != "wh-1" || resp.Duration <= 0 {
		t.Fatalf("response = %+v; want 202, wh-1, a duration", resp)
	}
	r := <-got
	wantBody := `{"id":"0190a3c2-7b1e-7cde-8f00-000000000001","to":"+905551234567","content":"Hello <world> & \"you\""}`
	if r.method != http.MethodPost || string(r.body) != wantBody {
		t.Fatalf("got %s %s; want POST %s", r.method, r.body, wantBody)
	}
	for name, want := range map[string]string{
		"Content-Type":      "application/json",
		"User-Agent":        "reliable-messaging/1",
		"webhook-id":        msg.ID,
		"webhook-timestamp": "1700000000",
		"webhook-signature": webhook.Sign(key, msg.ID, now, []byte(wantBody)),
	} {
		if v := r.header.Get(name); v != want {
			t.Errorf("header %s = %q; want %q", name, v, want)
		}
	}
	if !strings.HasPrefix(r.header.Get("webhook-signature"), "v1,") {
		t.Errorf("signature %q does not start with v1,", r.header.Get("webhook-signature"))
	}

	if err := webhook.Verify(key, r.header, r.body, now.Add(time.Minute), webhook.DefaultTolerance); err != nil {
		t.Errorf("Verify of the delivery: %v", err)
	}
	tampered := []byte(strings.Replace(string(r.body), "Hello", "Hallo", 1))
	if err := webhook.Verify(key, r.header, tampered, now, webhook.DefaultTolerance); !errors.Is(err, webhook.ErrNoMatch) {
		t.Errorf("Verify of a tampered body = %v; want ErrNoMatch", err)
	}
	if err := webhook.Verify(key, r.header, r.body, now.Add(6*time.Minute), webhook.DefaultTolerance); !errors.Is(err, webhook.ErrOldTimestamp) {
		t.Errorf("Verify 6 minutes later = %v; want ErrOldTimestamp", err)
	}
	if err := webhook.Verify(key, r.header, r.body, now.Add(-6*time.Minute), webhook.DefaultTolerance); !errors.Is(err, webhook.ErrOldTimestamp) {
		t.Errorf("Verify of a timestamp 6 minutes ahead = %v; want ErrOldTimestamp", err)
	}
	if err := webhook.Verify([]byte("another key of thirty-two bytes!"), r.header, r.body, now, webhook.DefaultTolerance); !errors.Is(err, webhook.ErrNoMatch) {
		t.Errorf("Verify with another key = %v; want ErrNoMatch", err)
	}
}

// TestSendSignsWithEverySecretOfARotation: with two secrets, a delivery
// carries one signature made with each, so a receiver that holds either
// the old or the new secret verifies it.
func TestSendSignsWithEverySecretOfARotation(t *testing.T) {
	srv, got := recordServer(t, accepted)
	newKey := []byte("fedcba9876543210fedcba9876543210")
	c := newClient(t, webhook.Options{URL: srv.URL, Secret: secret + "  whsec_" + base64.StdEncoding.EncodeToString(newKey)})
	if _, err := c.Send(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if n := len(strings.Fields(r.header.Get("webhook-signature"))); n != 2 {
		t.Fatalf("webhook-signature %q: %d signatures, want 2", r.header.Get("webhook-signature"), n)
	}
	for _, k := range [][]byte{key, newKey} {
		if err := webhook.Verify(k, r.header, r.body, time.Now(), webhook.DefaultTolerance); err != nil {
			t.Errorf("verify with one of the secrets: %v", err)
		}
	}
	if err := webhook.Verify([]byte("another key, not one of the two"), r.header, r.body, time.Now(), webhook.DefaultTolerance); !errors.Is(err, webhook.ErrNoMatch) {
		t.Errorf("verify with neither: %v", err)
	}
}

func TestSendWithoutSecret(t *testing.T) {
	srv, got := recordServer(t, accepted)
	c := newClient(t, webhook.Options{URL: srv.URL})
	if _, err := c.Send(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if v := r.header.Get("webhook-signature"); v != "" {
		t.Fatalf("webhook-signature %q sent without a secret", v)
	}
	ts, err := strconv.ParseInt(r.header.Get("webhook-timestamp"), 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
		t.Fatalf("webhook-timestamp %q is not the current unix time", r.header.Get("webhook-timestamp"))
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"id":"m1"}`)
	good := webhook.Sign(key, "m1", now, body)
	header := func(sig string) http.Header {
		h := http.Header{}
		h.Set("webhook-id", "m1")
		h.Set("webhook-timestamp", "1700000000")
		if sig != "" {
			h.Set("webhook-signature", sig)
		}
		return h
	}
	other := webhook.Sign([]byte("a rotated-out key of 32 bytes..."), "m1", now, body)
	tests := []struct {
		name string
		h    http.Header
		want error
	}{
		{"one signature", header(good), nil},
		{"several, one valid", header(other + " v2,abc " + good), nil},
		{"wrong version", header("v2," + strings.TrimPrefix(good, "v1,")), webhook.ErrNoMatch},
		{"not base64", header("v1,!!!"), webhook.ErrNoMatch},
		{"missing signature", header(""), webhook.ErrMissingHeaders},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := webhook.Verify(key, tt.h, body, now, webhook.DefaultTolerance); !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v; want %v", err, tt.want)
			}
		})
	}
	h := header(good)
	h.Set("webhook-timestamp", "yesterday")
	if err := webhook.Verify(key, h, body, now, webhook.DefaultTolerance); !errors.Is(err, webhook.ErrBadTimestamp) {
		t.Fatalf("Verify with a bad timestamp = %v; want ErrBadTimestamp", err)
	}
}

// TestSignKnownVector checks Sign against an HMAC computed independently:
// printf 'm1.1700000000.{"id":"m1"}' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef -binary | base64
const knownSig = "Jimwuku1lgJv/63zg1eblZb5E7hAKhf4BLbUdEH8tXI="

func TestSignKnownVector(t *testing.T) {
	got := webhook.Sign(key, "m1", time.Unix(1_700_000_000, 0), []byte(`{"id":"m1"}`))
	if want := "v1," + knownSig; got != want {
		t.Fatalf("Sign = %s; want %s", got, want)
	}
}

func TestNoRedirectFollowed(t *testing.T) {
	var followed atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { followed.Store(true) }))
	defer target.Close()
	srv, _ := recordServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusTemporaryRedirect)
	})
	c := newClient(t, webhook.Options{URL: srv.URL})
	resp, err := c.Send(t.Context(), msg)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTemporaryRedirect || followed.Load() {
		t.Fatalf("status %d, followed %v; want 307 returned, not followed", resp.StatusCode, followed.Load())
	}
}

func TestTimeout(t *testing.T) {
	srv, _ := recordServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	c := newClient(t, webhook.Options{URL: srv.URL + "/?secret=do-not-log", Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err := c.Send(t.Context(), msg)
	d := time.Since(start)
	if err == nil {
		t.Fatal("Send to a server that never answers succeeded")
	}
	// The server holds a call for 10 s: well under that is the timeout's
	// doing, with room for a loaded machine.
	if d < 150*time.Millisecond || d > 5*time.Second {
		t.Fatalf("Send failed after %s; want about 200ms", d)
	}
	if strings.Contains(err.Error(), "do-not-log") || strings.Contains(err.Error(), "http://") {
		t.Fatalf("error %q shows the URL", err)
	}
	if !strings.Contains(err.Error(), strings.TrimPrefix(srv.URL, "http://")) {
		t.Fatalf("error %q does not name the host", err)
	}
	if !strings.Contains(err.Error(), "no answer within WEBHOOK_TIMEOUT (200ms)") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %q does not say the webhook's own timeout ran out", err)
	}
}

func TestContextCancel(t *testing.T) {
	srv, _ := recordServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c := newClient(t, webhook.Options{URL: srv.URL, Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Send(ctx, msg); err == nil || time.Since(start) > time.Second {
		t.Fatalf("Send = %v after %s; want an error after about 100ms", err, time.Since(start))
	}
}

func TestConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newClient(t, webhook.Options{URL: "http://" + addr})
	if _, err := c.Send(t.Context(), msg); err == nil {
		t.Fatal("Send to a closed port succeeded")
	}
}

func TestAnswers(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name      string
		status    int
		header    map[string]string
		body      string
		wantID    string
		wantRetry time.Duration
		wantBody  string // of an answer other than 2xx: the start of its body
	}{
		{"messageId", 202, nil, `{"message":"Accepted","messageId":"abc"}`, "abc", 0, ""},
		{"messageId not a string", 200, nil, `{"messageId":42}`, "", 0, ""},
		{"messageId of 256 bytes", 200, nil, `{"messageId":"` + strings.Repeat("a", 256) + `"}`, strings.Repeat("a", 256), 0, ""},
		{"messageId too long to keep", 200, nil, `{"messageId":"` + strings.Repeat("a", 257) + `"}`, "", 0, ""},
		{"not JSON", 200, nil, `OK`, "", 0, ""},
		{"retry-after seconds", 429, map[string]string{"Retry-After": "120"}, ``, "", 2 * time.Minute, ""},
		{"retry-after date", 503, map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, ``, "", 90 * time.Second, ""},
		{"retry-after in the past", 503, map[string]string{"Retry-After": now.Add(-time.Hour).Format(http.TimeFormat)}, ``, "", 0, ""},
		{"retry-after garbage", 503, map[string]string{"Retry-After": "soon"}, ``, "", 0, ""},
		{"retry-after over a year", 503, map[string]string{"Retry-After": "31536001"}, ``, "", 365 * 24 * time.Hour, ""},
		{"retry-after beyond int64", 503, map[string]string{"Retry-After": "99999999999999999999"}, ``, "", 365 * 24 * time.Hour, ""},
		{"retry-after signed", 503, map[string]string{"Retry-After": "+60"}, ``, "", 0, ""},
		{"retry-after negative", 503, map[string]string{"Retry-After": "-60"}, ``, "", 0, ""},
		{"server error", 500, nil, `{"error":"boom"}`, "", 0, `{"error":"boom"}`},
		{"refusal's body, cut and cleaned", 400, nil, "\n  bad\tto: " + strings.Repeat("é", 200), "", 0, "bad\uFFFDto: " + strings.Repeat("é", 123)},
		{"control characters cleaned within the bound", 400, nil, strings.Repeat("\x01", 300), "", 0, strings.Repeat("\uFFFD", 85)},
		{"a 2xx's body is not kept", 202, nil, `{"message":"Accepted"}`, "", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := recordServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c := newClient(t, webhook.Options{URL: srv.URL, Now: func() time.Time { return now }})
			resp, err := c.Send(t.Context(), msg)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if resp.StatusCode != tt.status || resp.MessageID != tt.wantID || resp.RetryAfter != tt.wantRetry || resp.Body != tt.wantBody {
				t.Fatalf("response = %+v; want status %d, messageId %q, retry after %s, body %q", resp, tt.status, tt.wantID, tt.wantRetry, tt.wantBody)
			}
		})
	}
}

func TestConnectionReuse(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// A body larger than one read, to prove it is drained.
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"messageId":"x","pad":"`+strings.Repeat("a", 8000)+`"}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := newClient(t, webhook.Options{URL: srv.URL})
	for range 50 {
		resp, err := c.Send(t.Context(), msg)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("Send = %+v, %v", resp, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("50 sequential sends opened %d connections; want 1", n)
	}
}

func TestTLSIsVerified(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(accepted))
	defer srv.Close()

	c := newClient(t, webhook.Options{URL: srv.URL})
	if _, err := c.Send(t.Context(), msg); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Send to a server with an unknown CA = %v; want a certificate error", err)
	}

	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	c = newClient(t, webhook.Options{URL: srv.URL, RootCAs: pool})
	resp, err := c.Send(t.Context(), msg)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("Send with the server's CA = %+v, %v; want 202", resp, err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, o := range []webhook.Options{
		{URL: ""},
		{URL: "ftp://example.com"},
		{URL: "http://"},
		{URL: "http://example.com", Secret: "not-a-secret"},
		{URL: "http://example.com", Secret: "whsec_c2hvcnQ="},
		{URL: "http://example.com", Secret: secret + " not-a-secret"},
	} {
		if _, err := webhook.New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// TestSendGoesAgainOnAConnectionTheWebhookClosed: a receiver may close a
// kept-alive connection just as the next call goes out on it (Node.js
// closes idle ones after 5 s). The call goes again on a new connection
// instead of failing and costing an attempt, with the same headers and no
// Idempotency-Key.
func TestSendGoesAgainOnAConnectionTheWebhookClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	keys := make(chan string, 10)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			first := conns.Add(1) == 1
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if v, ok := req.Header["Idempotency-Key"]; ok {
						keys <- strings.Join(v, ",")
					}
					if first && i == 1 {
						return // closed as the second call came, unanswered
					}
					io.WriteString(conn, "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
				}
			}()
		}
	}()
	c := newClient(t, webhook.Options{URL: "http://" + ln.Addr().String()})
	for i := range 2 {
		resp, err := c.Send(t.Context(), msg)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("call %d: %+v, %v; want 202 through a new connection", i+1, resp, err)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the closed one and its replacement)", n)
	}
	select {
	case v := <-keys:
		t.Errorf("an Idempotency-Key %q went on the wire", v)
	default:
	}
}

// TestSendGoesAgainOnlyOnce: a receiver that takes calls and drops them
// unanswered, whatever connection they come on, sees one call of a Send go
// out at most twice (the kept-alive connection, then one new one), however
// many idle connections the client keeps, and the Send fails.
func TestSendGoesAgainOnlyOnce(t *testing.T) {
	var drop atomic.Bool
	var calls atomic.Int32
	var ready sync.WaitGroup
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !drop.Load() {
			ready.Done()
			<-gate
			w.WriteHeader(http.StatusAccepted)
			return
		}
		calls.Add(1)
		panic(http.ErrAbortHandler) // closes the connection unanswered
	}))
	defer srv.Close()
	c := newClient(t, webhook.Options{URL: srv.URL})
	// Eight calls at once leave eight idle kept-alive connections.
	ready.Add(8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { _, _ = c.Send(t.Context(), msg) })
	}
	ready.Wait()
	close(gate)
	wg.Wait()
	drop.Store(true)
	if _, err := c.Send(t.Context(), msg); err == nil {
		t.Error("Send to a receiver that drops every call: no error")
	}
	if n := calls.Load(); n < 1 || n > 2 {
		t.Errorf("one Send reached the receiver %d times, want once or twice", n)
	}
}
