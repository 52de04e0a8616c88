package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"runtime/debug"
	"strings"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// requestState is what the middleware learns about a request as it goes
// down the chain and reads again on the way back up. It travels in the
// context as a pointer because the router, deep inside, learns the route
// pattern that the logger, outside, reports.
type requestState struct {
	id      string
	pattern string
}

type requestStateKey struct{}

func stateFrom(ctx context.Context) *requestState {
	st, _ := ctx.Value(requestStateKey{}).(*requestState)
	return st
}

func requestIDFrom(ctx context.Context) string {
	if st := stateFrom(ctx); st != nil {
		return st.id
	}
	return ""
}

// RequestIDHeader carries the request ID in both directions.
const RequestIDHeader = "X-Request-Id"

// withRequestID takes the client's X-Request-Id if it is a sane token, or
// makes one, and echoes it on the response. An ID with other characters is
// replaced rather than logged, so a client cannot inject into the logs.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(RequestIDHeader)
		if !ValidRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		ctx := context.WithValue(r.Context(), requestStateKey{}, &requestState{id: id})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// ValidRequestID reports whether id is kept as a request's ID when it comes
// in X-Request-Id: 1 to 128 letters, digits, '-', '_', '.' or ':'. Anything
// else is replaced by a fresh ID.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == ':'
		if !ok {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error.
	return hex.EncodeToString(b[:])
}

// trackingWriter remembers the status sent and whether anything was.
type trackingWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (t *trackingWriter) WriteHeader(code int) {
	if t.status == 0 && code >= 200 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *trackingWriter) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	n, err := t.ResponseWriter.Write(b)
	t.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (t *trackingWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// logRequests logs one line per request: method, route pattern, status and
// duration. It never logs bodies, query strings or headers, so no phone
// number, content or API key reaches the logs. Successful GET /status and
// GET /livez requests are logged at debug level because probes poll them.
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		tw := &trackingWriter{ResponseWriter: w}
		next.ServeHTTP(tw, r)
		status := tw.status
		if status == 0 {
			status = http.StatusOK
		}
		pattern := ""
		id := ""
		if st := stateFrom(r.Context()); st != nil {
			pattern, id = st.pattern, st.id
		}
		level := slog.LevelInfo
		switch {
		case status >= 500:
			level = slog.LevelError
		case (pattern == "GET /status" || pattern == "GET /livez") && status < 400:
			level = slog.LevelDebug
		}
		if pattern == "" {
			pattern = "unmatched"
		}
		log.LogAttrs(r.Context(), level, "http request",
			slog.String("method", r.Method),
			slog.String("pattern", pattern),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.Int("bytes", tw.bytes),
			slog.String("request_id", id),
		)
	})
}

// recoverPanics turns a panic into a 500 problem (if nothing was sent yet)
// and logs it with its stack. http.ErrAbortHandler is passed on: it is the
// way a handler asks net/http to abort the response.
func recoverPanics(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &trackingWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			pattern := ""
			if st := stateFrom(r.Context()); st != nil {
				pattern = st.pattern
			}
			log.ErrorContext(r.Context(), "panic serving request",
				"method", r.Method,
				"pattern", pattern,
				"request_id", requestIDFrom(r.Context()),
				"panic", fmt.Sprint(v),
				"stack", string(debug.Stack()),
			)
			if tw.status != 0 {
				return // Too late for a problem: the status is gone.
			}
			writeProblem(tw, r, Problem{
				Type:   problemTypeBase + message.EINTERNAL,
				Title:  errorTitle[message.EINTERNAL],
				Status: http.StatusInternalServerError,
				Detail: "The server could not complete the request. The error has been logged.",
				Code:   message.EINTERNAL,
			})
		}()
		next.ServeHTTP(tw, r)
	})
}

// withDeadline gives each request's context a deadline d away, or keeps
// an earlier one it already has (a Lambda invocation's). Everything below
// it, the rate limit's Redis call and the store included, takes that
// context, so a dependency that hangs fails the request (a 503, which the
// store reports for a context that ran out) instead of holding it and its
// goroutine forever. net/http's server timeouts do not do this: they
// bound reading and writing the connection, not the handler's work.
func withDeadline(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// keyMatcher returns whether a sent key is key. Keys are compared as
// SHA-256 digests in constant time, so neither their content nor their
// length leaks through timing. An empty key matches nothing.
func keyMatcher(key string) func(got string) bool {
	if key == "" {
		return func(string) bool { return false }
	}
	want := sha256.Sum256([]byte(key))
	return func(got string) bool {
		if got == "" {
			return false
		}
		sum := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
}

// bearerToken returns the token of "Authorization: Bearer <token>", or "".
func bearerToken(r *http.Request) string {
	if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(token)
	}
	return ""
}

// sentKey returns the key a request sent: "Authorization: Bearer <key>",
// else "X-API-Key: <key>".
func sentKey(r *http.Request) string {
	if t := bearerToken(r); t != "" {
		return t
	}
	return r.Header.Get("X-API-Key")
}

// hasKey reports whether r carries the key matches checks for, as
// "Authorization: Bearer <key>" or "X-API-Key: <key>".
func hasKey(matches func(string) bool, r *http.Request) bool {
	// Evaluate both so that which header was tried does not show in the
	// timing.
	okBearer := matches(bearerToken(r))
	okHeader := matches(r.Header.Get("X-API-Key"))
	return okBearer || okHeader
}

// requireAPIKey returns middleware that lets a request through only with
// the key, sent as "Authorization: Bearer <key>" or "X-API-Key: <key>". An
// empty key turns the check off.
func requireAPIKey(key string) func(http.Handler) http.Handler {
	if key == "" {
		return func(h http.Handler) http.Handler { return h }
	}
	matches := keyMatcher(key)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !hasKey(matches, r) {
				w.Header().Set("WWW-Authenticate", "Bearer")
				writeStatusProblem(w, r, http.StatusUnauthorized,
					"A valid API key is required: send Authorization: Bearer <key> or X-API-Key: <key>.")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// problemRouter serves mux, but answers its unknown routes (404) and wrong
// methods (405, with Allow) as problems instead of ServeMux's plain text.
func problemRouter(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		// For a path not in its clean form ServeMux gives the pattern the
		// clean path matches but a handler that redirects there. It
		// cleans the escaped path, so that is the one to check:
		// /messages/%2E%2E is clean there (an id of ".."), though its
		// decoded form is not, and a handler run below would run twice.
		if pattern != "" && isClean(r.URL.EscapedPath()) {
			if st := stateFrom(r.Context()); st != nil {
				st.pattern = pattern
			}
			mux.ServeHTTP(w, r)
			return
		}
		// No route: find out what ServeMux would answer without letting
		// it write anything.
		rec := &headerRecorder{header: make(http.Header)}
		h.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusNotFound:
			writeError(w, r, nil, message.Errorf(message.ENOTFOUND, "no route matches this path"))
		case http.StatusMethodNotAllowed:
			allow := rec.header.Get("Allow")
			w.Header().Set("Allow", allow)
			writeStatusProblem(w, r, http.StatusMethodNotAllowed,
				fmt.Sprintf("method %s is not allowed here; allowed: %s", r.Method, allow))
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			// A path not in its clean form (//messages, /messages/./x):
			// ServeMux's redirect to the clean one, as a problem rather
			// than its HTML.
			w.Header().Set("Location", rec.header.Get("Location"))
			writeStatusProblem(w, r, rec.status, "the path is not in its clean form; send the request to the Location given")
		default:
			// A bad CONNECT: let ServeMux answer it.
			mux.ServeHTTP(w, r)
		}
	})
}

// isClean reports whether ServeMux serves p as it is rather than
// redirecting it: p is its own path.Clean, but for a trailing slash.
func isClean(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// headerRecorder captures the header and status a handler writes and
// discards its body.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header { return h.header }

func (h *headerRecorder) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *headerRecorder) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return len(b), nil
}
