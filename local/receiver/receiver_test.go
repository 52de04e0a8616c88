package receiver_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/logbuf"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/receiver"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/webhook"
)

var key = []byte("0123456789abcdef0123456789abcdef")

type syncBuffer = logbuf.Buffer

// start serves the receiver and returns its URL and its log.
func start(t *testing.T, secretKey []byte) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	srv := httptest.NewServer(receiver.NewHandler(slog.New(slog.NewJSONHandler(logs, nil)), secretKey))
	t.Cleanup(srv.Close)
	return srv.URL, logs
}

var msg = message.Message{ID: "0190a3c2-7b1e-7cde-8f00-000000000001", To: "+905551234567", Content: "secret content"}

func TestSignedDeliveryThroughTheWebhookClient(t *testing.T) {
	url, logs := start(t, key)
	c, err := webhook.New(webhook.Options{URL: url + "/hook", Secret: "whsec_" + base64.StdEncoding.EncodeToString(key)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Send(t.Context(), msg)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d; want 202", resp.StatusCode)
	}
	if _, err := uuid.Parse(resp.MessageID); err != nil {
		t.Fatalf("messageId %q is not a UUID", resp.MessageID)
	}
	log := logs.String()
	if !strings.Contains(log, msg.ID) || !strings.Contains(log, `"content_length":14`) {
		t.Fatalf("log %q lacks the webhook id or the content length", log)
	}
	if strings.Contains(log, msg.To) || strings.Contains(log, msg.Content) {
		t.Fatalf("log %q shows personal data", log)
	}
}

func post(t *testing.T, url, body string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func signed(id, body string, ts time.Time, k []byte) http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	h.Set("webhook-signature", webhook.Sign(k, id, ts, []byte(body)))
	return h
}

func TestDeliveries(t *testing.T) {
	body := `{"id":"m1","to":"+905551234567","content":"hi"}`
	now := time.Now()
	tests := []struct {
		name   string
		key    []byte
		body   string
		header http.Header
		want   int
	}{
		{"unsigned, no key", nil, body, nil, http.StatusAccepted},
		{"signed", key, body, signed("m1", body, now, key), http.StatusAccepted},
		{"bad signature", key, body, signed("m1", body, now, []byte("another key of thirty-two bytes!")), http.StatusUnauthorized},
		{"tampered body", key, strings.Replace(body, "hi", "ho", 1), signed("m1", body, now, key), http.StatusUnauthorized},
		{"old timestamp", key, body, signed("m1", body, now.Add(-10*time.Minute), key), http.StatusUnauthorized},
		{"unsigned with a key", key, body, nil, http.StatusUnauthorized},
		{"bad JSON", nil, `{"id":`, nil, http.StatusBadRequest},
		{"bad JSON, signed", key, `not json`, signed("m1", `not json`, now, key), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, _ := start(t, tt.key)
			resp, b := post(t, url+"/any/path", tt.body, tt.header)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d (%s); want %d", resp.StatusCode, b, tt.want)
			}
			if tt.want != http.StatusAccepted {
				if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
					t.Fatalf("error Content-Type %q; want application/problem+json", ct)
				}
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q; want application/json", ct)
			}
			var a struct{ Message, MessageID string }
			if err := json.Unmarshal(b, &a); err != nil || a.Message != "Accepted" || uuid.Validate(a.MessageID) != nil {
				t.Fatalf("answer %s; want {message: Accepted, messageId: <uuid>}", b)
			}
		})
	}
}

func TestGet(t *testing.T) {
	url, _ := start(t, nil)
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || len(b) == 0 {
		t.Fatalf("GET / = %d %q; want 200 and some text", resp.StatusCode, b)
	}
}

func TestOtherMethod(t *testing.T) {
	url, _ := start(t, nil)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodDelete, url+"/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE / = %d; want 405", resp.StatusCode)
	}
}

// TestARotationsSecretsAreBothTaken: during a rotation (two secrets) a
// delivery signed with either is accepted, one signed with neither is not.
func TestARotationsSecretsAreBothTaken(t *testing.T) {
	newKey := []byte("fedcba9876543210fedcba9876543210")
	logs := &syncBuffer{}
	srv := httptest.NewServer(receiver.NewHandler(slog.New(slog.NewJSONHandler(logs, nil)), key, newKey))
	t.Cleanup(srv.Close)
	body := `{"id":"m1","to":"+905551234567","content":"hi"}`
	for _, tc := range []struct {
		id   string
		k    []byte
		want int
	}{
		{"m-old", key, http.StatusAccepted},
		{"m-new", newKey, http.StatusAccepted},
		{"m-other", []byte("another key of thirty-two bytes!"), http.StatusUnauthorized},
	} {
		if resp, b := post(t, srv.URL, body, signed(tc.id, body, time.Now(), tc.k)); resp.StatusCode != tc.want {
			t.Errorf("signed for %s: %d (%s), want %d", tc.id, resp.StatusCode, b, tc.want)
		}
	}
}

// TestADeliverySeenBeforeIsAnsweredAsBefore: a webhook-id the receiver has
// accepted (a retry, or a replay within the signature's tolerance) is
// answered as the first time, with the same messageId, as the Standard
// Webhooks specification asks consumers to deduplicate.
func TestADeliverySeenBeforeIsAnsweredAsBefore(t *testing.T) {
	url, logs := start(t, key)
	body := `{"id":"m1","to":"+905551234567","content":"hi"}`
	answer := func(id string) string {
		t.Helper()
		resp, b := post(t, url, body, signed(id, body, time.Now(), key))
		var a struct{ MessageID string }
		if err := json.Unmarshal(b, &a); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("delivery %s: %d %s", id, resp.StatusCode, b)
		}
		return a.MessageID
	}
	first := answer("m1")
	if again := answer("m1"); again != first {
		t.Fatalf("the same webhook-id again answered messageId %s, want %s as the first time", again, first)
	}
	if other := answer("m2"); other == first {
		t.Fatalf("another webhook-id answered the first one's messageId %s", other)
	}
	if !strings.Contains(logs.String(), "received again") {
		t.Fatalf("the repeat is not logged as one:\n%s", logs)
	}
}
