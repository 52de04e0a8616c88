// Package webhook delivers messages to the webhook over HTTP, signed the
// Standard Webhooks way, and verifies such signatures for receivers.
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

var _ processor.Sender = (*Client)(nil)

// UserAgent is sent with every delivery.
const UserAgent = "reliable-messaging/1"

// DefaultTimeout bounds one call when Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// maxResponseBody is how much of an answer is read: enough for any
// {"messageId": ...}, and reading it to the end lets the connection be
// reused. A longer body is cut off and its connection closed.
const maxResponseBody = 64 << 10

// Options configure a Client.
type Options struct {
	// URL is the webhook's http:// or https:// address.
	URL string
	// Timeout bounds one call, the answer's body included.
	Timeout time.Duration
	// Secret, if set, is a Standard Webhooks secret (whsec_ + base64) and
	// every delivery carries a webhook-signature. Several secrets,
	// separated by spaces, give one signature each (a rotation).
	Secret string
	// Now is the clock for webhook-timestamp and Retry-After dates.
	Now func() time.Time
	// RootCAs, if set, replaces the system's certificate authorities (for
	// a private CA, or a test server).
	RootCAs *x509.CertPool
}

// Client sends messages to one webhook. It is safe for concurrent use and
// keeps connections to the webhook alive between calls.
type Client struct {
	url     string
	host    string
	timeout time.Duration
	keys    [][]byte
	now     func() time.Time
	http    *http.Client
	// fresh sends on a new connection every time: for the one resend of a
	// call the receiver cut off as it went out on a kept-alive one.
	fresh *http.Client
}

// New returns a Client for o.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("webhook: URL must be an http:// or https:// URL")
	}
	c := &Client{url: o.URL, host: u.Host, timeout: o.Timeout, now: o.Now}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.keys, err = config.DecodeWebhookSecrets(o.Secret); err != nil {
		return nil, fmt.Errorf("webhook: %w", err)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Every call goes to one host, often from many goroutines at once:
	// keep as many idle connections to it as a busy processor uses, so that
	// bursts do not open (and TLS-handshake) new ones.
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 256
	t.MaxConnsPerHost = 0
	t.IdleConnTimeout = 90 * time.Second
	t.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
	// A redirect is the webhook's answer, not an instruction to post the
	// message somewhere else.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c.http = &http.Client{Transport: t, CheckRedirect: noRedirect}
	ft := t.Clone()
	ft.DisableKeepAlives = true
	c.fresh = &http.Client{Transport: ft, CheckRedirect: noRedirect}
	return c, nil
}

// CloseIdleConnections closes the kept-alive connections to the webhook.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

type payload struct {
	ID      string `json:"id"`
	To      string `json:"to"`
	Content string `json:"content"`
}

// Send POSTs {id, to, content} to the webhook with the Standard Webhooks
// headers. err is a transport failure (it names the webhook's host, never
// the full URL, whose query may hold a secret); any HTTP answer comes back
// as a response with a nil error.
func (c *Client) Send(ctx context.Context, m message.Message) (message.WebhookResponse, error) {
	body, err := encode(payload{ID: m.ID, To: m.To, Content: m.Content})
	if err != nil {
		return message.WebhookResponse{}, fmt.Errorf("encode webhook body: %w", err)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return message.WebhookResponse{}, fmt.Errorf("build webhook request to %s: %w", c.host, err)
	}
	ts := c.now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(HeaderID, m.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	if len(c.keys) > 0 {
		sigs := make([]string, len(c.keys))
		for i, key := range c.keys {
			sigs[i] = Sign(key, m.ID, ts, body)
		}
		req.Header.Set(HeaderSignature, strings.Join(sigs, " "))
	}

	start := time.Now()
	var reused, answered atomic.Bool
	trace := &httptrace.ClientTrace{
		GotConn:              func(i httptrace.GotConnInfo) { reused.Store(i.Reused) },
		GotFirstResponseByte: func() { answered.Store(true) },
	}
	resp, err := c.http.Do(req.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil && reused.Load() && !answered.Load() && ctx.Err() == nil && cutOff(err) {
		// The receiver closed the kept-alive connection as the call went
		// out on it (many close idle ones after a few seconds): the call
		// goes once more, at once, on a new connection, rather than fail
		// and cost an attempt and a backoff for nothing the receiver did.
		// Once: a receiver that takes calls and drops them unanswered
		// gets its retries with their backoff, as before. (net/http
		// itself resends a POST only if nothing of it was written.)
		// The same request, with its body again (a bytes.Reader's
		// GetBody cannot fail).
		again := req.Clone(ctx)
		again.Body, _ = req.GetBody()
		resp, err = c.fresh.Do(again)
	}
	if err != nil {
		// *url.Error repeats the full URL; keep only its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
			// The call's own limit, not its caller's: say which.
			err = fmt.Errorf("no answer within WEBHOOK_TIMEOUT (%s): %w", c.timeout, err)
		}
		return message.WebhookResponse{Duration: time.Since(start)}, fmt.Errorf("post webhook %s: %w", c.host, err)
	}
	// Reading the body to its end (within the limit) is what lets the
	// transport put the connection back in the pool.
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	resp.Body.Close()

	r := message.WebhookResponse{
		StatusCode: resp.StatusCode,
		MessageID:  messageID(answer),
		RetryAfter: retryAfter(resp.Header.Get("Retry-After"), c.now()),
		Duration:   time.Since(start),
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		r.Body = excerpt(answer)
	}
	return r, nil
}

// maxExcerpt is how much of a refusal's body the delivery log keeps.
const maxExcerpt = 256

// excerpt returns the start of body for the delivery log, at most
// maxExcerpt bytes: invalid UTF-8 and control characters (a newline too:
// it is one field) replaced, then cut at a rune.
func excerpt(body []byte) string {
	if len(body) > 4*maxExcerpt {
		body = body[:4*maxExcerpt] // enough to clean; the rest is cut anyway
	}
	s := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '\uFFFD'
		}
		return r
	}, strings.ToValidUTF8(strings.TrimSpace(string(body)), "\uFFFD"))
	if len(s) <= maxExcerpt {
		return s
	}
	cut := maxExcerpt
	for !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// cutOff reports whether err is a connection closed under a call before
// any answer: the end of the stream, or a reset.
func cutOff(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "server closed idle connection")
}

// encode marshals v once, without escaping <, > and & (the body is not
// HTML) and without the encoder's trailing newline.
func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// maxMessageID is the longest receiver's messageId kept: it is stored with
// the message and in the inbox's done marker for a day, and ids are short.
const maxMessageID = 256

// messageID returns the string "messageId" of a JSON object answer, if any
// and at most maxMessageID bytes long.
func messageID(body []byte) string {
	var a struct {
		MessageID any `json:"messageId"`
	}
	if len(body) == 0 || json.Unmarshal(body, &a) != nil {
		return ""
	}
	s, _ := a.MessageID.(string)
	if len(s) > maxMessageID {
		return ""
	}
	return s
}

// maxRetryAfter bounds a Retry-After delay.
const maxRetryAfter = 365 * 24 * time.Hour

// retryAfter parses a Retry-After value, delay-seconds (digits only) or an
// HTTP-date (RFC 9110 section 10.2.3), into a delay from now, at most
// maxRetryAfter, which is also what more seconds than int64 holds mean.
// Anything else, or a date in the past, is 0.
func retryAfter(v string, now time.Time) time.Duration {
	if v != "" && strings.Trim(v, "0123456789") == "" {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxRetryAfter)
	}
	return 0
}
