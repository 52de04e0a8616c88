package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// problemTypeBase prefixes the code of an error to make its problem type URI.
const problemTypeBase = "https://reliable-messaging.dev/problems/"

// retryAfterSeconds is what an EUNAVAILABLE answer tells a client to wait.
const retryAfterSeconds = 5

// errorStatus is the one map from error code to HTTP status. A code not in
// it is a 500.
var errorStatus = map[string]int{
	message.EINVALID:     http.StatusBadRequest,
	message.ENOTFOUND:    http.StatusNotFound,
	message.ECONFLICT:    http.StatusConflict,
	message.EINPROGRESS:  http.StatusConflict,
	message.EMISMATCH:    http.StatusUnprocessableEntity,
	message.ETOOLARGE:    http.StatusRequestEntityTooLarge,
	message.EUNAVAILABLE: http.StatusServiceUnavailable,
}

// errorTitle is the short, fixed summary of each problem type.
var errorTitle = map[string]string{
	message.EINVALID:     "Invalid request",
	message.ENOTFOUND:    "Not found",
	message.ECONFLICT:    "Conflict",
	message.EINPROGRESS:  "Request in progress",
	message.EMISMATCH:    "Idempotency key reused with a different request",
	message.ETOOLARGE:    "Request body too large",
	message.EUNAVAILABLE: "Service unavailable",
	message.EINTERNAL:    "Internal server error",
}

// Problem is an RFC 9457 problem details document, with the extension
// members this API adds.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Code is the error code (message.EINVALID, ...), if any.
	Code string `json:"code,omitempty"`
	// Field names the offending field of a validation error.
	Field  string         `json:"field,omitempty"`
	Errors []FieldProblem `json:"errors,omitempty"`
	// RequestID is the X-Request-Id of the request, for support.
	RequestID string `json:"requestId,omitempty"`
}

// FieldProblem is one invalid field of a request.
type FieldProblem struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// writeError answers err as a problem. A *message.Error in err's chain
// chooses the status and supplies a detail safe to show; anything else is
// logged and answered with a generic 500, so its text never reaches a client.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var me *message.Error
	status, known := 0, false
	if errors.As(err, &me) {
		status, known = errorStatus[me.Code]
	}
	if !known {
		// Not a *message.Error, or a code the HTTP layer does not map
		// (EINTERNAL included): a server fault whose text is not for the
		// client.
		logInternal(r, log, err)
		writeProblem(w, r, Problem{
			Type:   problemTypeBase + message.EINTERNAL,
			Title:  errorTitle[message.EINTERNAL],
			Status: http.StatusInternalServerError,
			Detail: "The server could not complete the request. The error has been logged.",
			Code:   message.EINTERNAL,
		})
		return
	}
	p := Problem{
		Type:   problemTypeBase + me.Code,
		Title:  errorTitle[me.Code],
		Status: status,
		Detail: me.Message,
		Code:   me.Code,
	}
	if me.Field != "" {
		p.Field = me.Field
		p.Detail = me.Field + " " + me.Message
		p.Errors = []FieldProblem{{Field: me.Field, Detail: me.Message}}
		for _, e := range me.Also {
			p.Detail += "; " + e.Field + " " + e.Message
			p.Errors = append(p.Errors, FieldProblem{Field: e.Field, Detail: e.Message})
		}
	}
	if me.Code == message.EUNAVAILABLE {
		// The client learns only that it may try again; the operator
		// needs the cause, which the error wraps.
		logInternal(r, log, err)
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	writeProblem(w, r, p)
}

// writeInvalid answers a 400 validation problem about field (which may be
// empty when the field is not known).
func writeInvalid(w http.ResponseWriter, r *http.Request, field, detail string) {
	writeError(w, r, nil, &message.Error{Code: message.EINVALID, Field: field, Message: detail})
}

// writeStatusProblem answers a protocol-level problem (401, 405, 415) that
// has no error code: type about:blank, title the status text.
func writeStatusProblem(w http.ResponseWriter, r *http.Request, status int, detail string) {
	writeProblem(w, r, Problem{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
	})
}

func writeProblem(w http.ResponseWriter, r *http.Request, p Problem) {
	if p.Instance == "" {
		p.Instance = r.URL.Path
	}
	if p.RequestID == "" {
		p.RequestID = requestIDFrom(r.Context())
	}
	body, err := json.Marshal(p)
	if err != nil {
		// A Problem holds only strings and ints; this cannot happen.
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	writeBody(w, "application/problem+json", p.Status, body)
}

// writeJSON encodes v once, before anything is written, so that an encoding
// failure can still become a clean 500.
func writeJSON(w http.ResponseWriter, r *http.Request, log *slog.Logger, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, r, log, err)
		return
	}
	writeBody(w, "application/json", status, body)
}

func writeBody(w http.ResponseWriter, contentType string, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// logInternal logs the real error behind a 500.
func logInternal(r *http.Request, log *slog.Logger, err error) {
	if log == nil {
		log = slog.Default()
	}
	log.ErrorContext(r.Context(), "request failed",
		"method", r.Method,
		"pattern", r.Pattern,
		"request_id", requestIDFrom(r.Context()),
		"error", err.Error(),
	)
}
