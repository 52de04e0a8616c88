// Package receiver is the demo webhook that local mode starts when no
// WEBHOOK_URL is set. It answers like the seed's webhook: 202 with a
// {"message":"Accepted","messageId":...} body.
package receiver

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/webhook"
)

// maxBody bounds a delivery; the API allows far smaller messages.
const maxBody = 1 << 20

// NewHandler returns the receiver's routes. With a non-nil secretKey (the
// decoded WEBHOOK_SECRET) every delivery must carry a valid Standard Webhooks
// signature; nil accepts unsigned deliveries.
func NewHandler(logger *slog.Logger, secretKey []byte) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /", handleDelivery(logger, secretKey, time.Now))
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

func handleDelivery(logger *slog.Logger, key []byte, now func() time.Time) http.Handler {
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
		if key != nil {
			if err := webhook.Verify(key, r.Header, body, now(), webhook.DefaultTolerance); err != nil {
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
		// The number and the content are personal data: log neither.
		logger.Info("webhook delivery received", "webhook_id", id, "content_length", utf8.RuneCountInString(d.Content))

		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(struct {
			Message   string `json:"message"`
			MessageID string `json:"messageId"`
		}{"Accepted", uuid.NewString()})
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
