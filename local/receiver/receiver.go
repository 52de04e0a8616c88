// Package receiver is the demo webhook that local mode starts when no
// WEBHOOK_URL is set. It answers like the seed's webhook: 202 with a
// {"message":"Accepted","messageId":...} body. It is also the project's
// reference consumer of Standard Webhooks: it verifies the signature before
// it reads the body, and it takes a webhook-id it has seen for the delivery
// it was (a retry, or a replay within the timestamp's tolerance), answering
// with the same messageId.
package receiver

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/webhook"
)

// maxBody bounds a delivery; the API allows far smaller messages.
const maxBody = 1 << 20

// NewHandler returns the receiver's routes. With keys (the decoded
// WEBHOOK_SECRET, two during a rotation) every delivery must carry a valid
// Standard Webhooks signature made with one of them; with none it accepts
// unsigned deliveries.
func NewHandler(logger *slog.Logger, keys ...[]byte) http.Handler {
	keys = slices.DeleteFunc(slices.Clone(keys), func(k []byte) bool { return len(k) == 0 })
	mux := http.NewServeMux()
	mux.Handle("POST /", handleDelivery(logger, keys, time.Now))
	mux.Handle("GET /", handleInfo())
	return mux
}

// handleInfo says what this server is, for a person who opens it in a
// browser.
func handleInfo() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "reliable-messaging demo webhook: POST deliveries to any path\n")
	})
}

type delivery struct {
	ID      string `json:"id"`
	To      string `json:"to"`
	Content string `json:"content"`
}

// seenKeep is how many webhook-ids the receiver remembers, the oldest
// forgotten first: far more than are retried or replayed within the
// signature's five minutes.
const seenKeep = 100_000

// seen maps the webhook-ids of accepted deliveries to the messageId each
// was answered with.
type seen struct {
	mu    sync.Mutex
	ids   map[string]string
	order []string // ring of the remembered ids, oldest at next
	next  int
}

// answer returns the messageId of webhook-id id, made and remembered now
// if it is new; dup says it was seen before.
func (s *seen) answer(id string) (messageID string, dup bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.ids[id]; ok {
		return m, true
	}
	if s.ids == nil {
		s.ids = map[string]string{}
	}
	m := uuid.NewString()
	if len(s.order) < seenKeep {
		s.order = append(s.order, id)
	} else {
		delete(s.ids, s.order[s.next])
		s.order[s.next] = id
		s.next = (s.next + 1) % seenKeep
	}
	s.ids[id] = m
	return m, false
}

func handleDelivery(logger *slog.Logger, keys [][]byte, now func() time.Time) http.Handler {
	var accepted seen
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				problem(w, http.StatusRequestEntityTooLarge, "body larger than 1 MiB")
				return
			}
			problem(w, http.StatusBadRequest, "could not read the body")
			return
		}
		// The signature covers the raw bytes, so it is checked before the
		// body is parsed.
		if len(keys) > 0 {
			var err error
			for _, key := range keys {
				if err = webhook.Verify(key, r.Header, body, now(), webhook.DefaultTolerance); err == nil {
					break
				}
			}
			if err != nil {
				logger.Warn("webhook delivery rejected", "webhook_id", r.Header.Get(webhook.HeaderID), "reason", err.Error())
				problem(w, http.StatusUnauthorized, "invalid webhook signature: "+err.Error())
				return
			}
		}
		var d delivery
		if err := json.Unmarshal(body, &d); err != nil {
			problem(w, http.StatusBadRequest, "body must be a JSON object {id, to, content}")
			return
		}
		id := r.Header.Get(webhook.HeaderID)
		if id == "" {
			id = d.ID
		}
		messageID, dup := accepted.answer(id)
		// The number and the content are personal data: log neither.
		if dup {
			logger.Info("webhook delivery received again; answered as the first time", "webhook_id", id)
		} else {
			logger.Info("webhook delivery received", "webhook_id", id, "content_length", utf8.RuneCountInString(d.Content))
		}

		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(struct {
			Message   string `json:"message"`
			MessageID string `json:"messageId"`
		}{"Accepted", messageID})
	})
}

// problem writes an RFC 9457 problem document.
func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}{http.StatusText(status), status, detail})
}
