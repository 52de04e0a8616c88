package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Limits of the messages routes.
const (
	// MaxIdempotencyKeyLength bounds the Idempotency-Key header, in characters.
	MaxIdempotencyKeyLength = 255
	// DefaultListLimit and MaxListLimit bound the limit query parameter.
	DefaultListLimit = 50
	MaxListLimit     = 500
)

// createBody is the wire form of message.CreateRequest. sendAt arrives as a
// string and is parsed here, so that a bad time is reported against the
// field it came from; encoding/json does not name the field of an error a
// time.Time returns.
type createBody struct {
	To      string  `json:"to"`
	Content string  `json:"content"`
	SendAt  *string `json:"sendAt"`
}

// fieldTypes says, for each field of createBody, what a client must send.
var fieldTypes = map[string]string{
	"to":      "must be a string",
	"content": "must be a string",
	"sendAt":  "must be an RFC 3339 timestamp string",
}

// createFields are the JSON names of createBody's fields, for checkKeys.
var createFields = jsonFieldNames[createBody]()

func handleCreateMessage(log *slog.Logger, msgs Messages, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !jsonContentType(w, r, true) {
			return
		}
		// A key sent empty or twice is a client's mistake: read as no
		// key, it would make a second message on the retry it was
		// meant to make safe.
		keys, keyed := r.Header["Idempotency-Key"]
		if keyed && (len(keys) != 1 || strings.TrimSpace(keys[0]) == "") {
			writeInvalid(w, r, "Idempotency-Key", "must be given once, not empty; leave it out to send without one")
			return
		}
		key := r.Header.Get("Idempotency-Key")
		if utf8.RuneCountInString(key) > MaxIdempotencyKeyLength {
			writeInvalid(w, r, "Idempotency-Key",
				fmt.Sprintf("must be at most %d characters", MaxIdempotencyKeyLength))
			return
		}
		if !validKey(key) {
			// A store may replace invalid bytes (the embedded MongoDB
			// does), and then the key would never be found again.
			writeInvalid(w, r, "Idempotency-Key", "must be valid UTF-8 without control characters")
			return
		}
		req, err := decodeCreateRequest(w, r, maxBody)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		m, replayed, err := msgs.Create(r.Context(), req, key)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", "/messages/"+url.PathEscape(m.ID))
		status := http.StatusAccepted
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
			status = http.StatusOK
		}
		writeJSON(w, r, log, status, m)
	})
}

// jsonContentType answers 415 and returns false unless the request's
// Content-Type is application/json, with or without parameters ("; charset=
// utf-8"). Unless required, a request may leave the header out. A body
// sent without it, or as text/plain, is refused: those are what a web page
// on another site can POST without a CORS preflight.
func jsonContentType(w http.ResponseWriter, r *http.Request, required bool) bool {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		// A compressed body would fail as "not valid UTF-8": say what is
		// wrong (RFC 9110 15.5.16: 415, with the codings accepted).
		w.Header().Set("Accept-Encoding", "identity")
		writeStatusProblem(w, r, http.StatusUnsupportedMediaType, "a compressed body (Content-Encoding) is not supported: send it uncompressed")
		return false
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" && !required {
		return true
	}
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		detail := "Content-Type must be application/json"
		if ct == "" {
			detail = "a JSON body needs Content-Type: application/json"
		}
		writeStatusProblem(w, r, http.StatusUnsupportedMediaType, detail)
		return false
	}
	return true
}

// errEmptyBody is decodeBody's answer to an empty body, when one is allowed.
var errEmptyBody = errors.New("empty body")

// decodeBody reads exactly one JSON object of known fields from the body
// into v, whose fields' JSON names are fields. Its errors are
// *message.Error: EINVALID naming the field where it is known, or
// ETOOLARGE; or errEmptyBody for an empty body if allowEmpty.
func decodeBody(w http.ResponseWriter, r *http.Request, maxBody int64, v any, fields []string, allowEmpty bool) error {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge(maxBody)
		}
		return message.Errorf(message.EINVALID, "body could not be read")
	}
	// encoding/json would replace what is not valid UTF-8 with U+FFFD, and
	// the message would be stored changed without a word.
	if !utf8.Valid(raw) || loneSurrogate(raw) {
		return message.Errorf(message.EINVALID, "body must be valid UTF-8, without \\u escapes of lone UTF-16 surrogates")
	}
	// encoding/json decodes null into a struct without a word, leaving it
	// empty: for POST /dlq/replay that reads as no body, every failure.
	if i := skipSpace(raw, 0); i < len(raw) && raw[i] != '{' {
		return message.Errorf(message.EINVALID, "body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if allowEmpty && errors.Is(err, io.EOF) {
			return errEmptyBody
		}
		return decodeError(err, maxBody)
	}
	// Exactly one value: anything after it but white space is an error.
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return message.Errorf(message.EINVALID, "body must contain a single JSON object, found data after it")
	}
	return checkKeys(raw, fields)
}

// checkKeys rejects two things encoding/json accepts without a word in the
// object raw holds: a key given twice, of which it keeps the last, and a key
// that differs from a field's name only by case ("TO"), which it matches
// to the field ("to"). Either way the message stored would not be the one
// a reader of the request sees, or a proxy or WAF in front checked. fields
// are the JSON names of the fields. raw must be valid JSON (Decode found
// it so): the scan checks its syntax no further. Nested objects' keys are
// not looked at. For a body of the usual kind, whose keys have no escapes,
// the scan allocates nothing.
func checkKeys(raw []byte, fields []string) error {
	var seen uint64 // bit n: fields[n] was given
	i := skipSpace(raw, 0)
	if i == len(raw) || raw[i] != '{' {
		return nil // not an object: decodeBody has refused it
	}
	i++
	for {
		i = skipSpace(raw, i)
		if i == len(raw) || raw[i] != '"' {
			return nil // the end of the object
		}
		end := stringEnd(raw, i)
		if end < i+2 {
			return nil // an unterminated string, which valid JSON has not
		}
		key := raw[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			// "\u0074o" is "to" to encoding/json, so it is here too.
			var s string
			if err := json.Unmarshal(raw[i:end], &s); err != nil {
				return nil
			}
			key = []byte(s)
		}
		if err := checkKey(key, fields, &seen); err != nil {
			return err
		}
		i = skipSpace(raw, end)
		if i == len(raw) || raw[i] != ':' {
			return nil
		}
		i = valueEnd(raw, i+1)
		if i == len(raw) || raw[i] != ',' {
			return nil
		}
		i++
	}
}

// checkKey checks one key of an object against fields, the JSON names of
// its fields, and records in seen the fields given.
func checkKey(key []byte, fields []string, seen *uint64) error {
	for n, f := range fields {
		if string(key) != f {
			continue
		}
		if n < 64 {
			if *seen&(1<<n) != 0 {
				return message.FieldError(f, "is given more than once; give each field once")
			}
			*seen |= 1 << n
		}
		return nil
	}
	// bytes.EqualFold folds as encoding/json matches names: Unicode
	// simple folding, so that "\u212a" (the Kelvin sign) is a "k".
	for _, f := range fields {
		if bytes.EqualFold(key, []byte(f)) {
			return message.FieldError(string(key), "is not a known field: field names are case-sensitive; did you mean %q?", f)
		}
	}
	return nil // an unknown field, which Decode has refused already
}

// skipSpace returns the index of the first byte of raw at or after i that
// is not JSON white space, or len(raw).
func skipSpace(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just after the JSON string that starts at
// raw[i], its opening quote, or len(raw) if it does not end.
func stringEnd(raw []byte, i int) int {
	for j := i + 1; j < len(raw); j++ {
		switch raw[j] {
		case '\\':
			j++ // the escaped byte, perhaps a quote
		case '"':
			return j + 1
		}
	}
	return len(raw)
}

// valueEnd returns the index of the ',' or '}' that ends the object member
// whose value starts at or after raw[i], or len(raw).
func valueEnd(raw []byte, i int) int {
	depth := 0
	for ; i < len(raw); i++ {
		switch raw[i] {
		case '"':
			i = stringEnd(raw, i) - 1
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
		case ',':
			if depth == 0 {
				return i
			}
		}
	}
	return len(raw)
}

// jsonFieldNames returns the JSON names of T's fields, as encoding/json
// reads them. It runs once per type, at start, so that requests pay no
// reflection.
func jsonFieldNames[T any]() []string {
	t := reflect.TypeFor[T]()
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case !f.IsExported() || name == "-":
			continue
		case name == "":
			name = f.Name
		}
		names = append(names, name)
	}
	return names
}

// loneSurrogate reports whether a JSON text holds a \u escape of a UTF-16
// surrogate that is not half of a pair. Backslashes occur only in strings,
// and "\\" is skipped whole, so a scan needs no JSON state.
func loneSurrogate(raw []byte) bool {
	escape := func(i int) (rune, bool) { // the \uXXXX at i, if any
		if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
			return 0, false
		}
		n, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
		return rune(n), err == nil
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		r, ok := escape(i)
		if !ok {
			i++ // an escaped character, perhaps a backslash
			continue
		}
		switch {
		case 0xD800 <= r && r < 0xDC00:
			if low, ok := escape(i + 6); !ok || low < 0xDC00 || low >= 0xE000 {
				return true
			}
			i += 11
		case 0xDC00 <= r && r < 0xE000:
			return true
		default:
			i += 5
		}
	}
	return false
}

// decodeCreateRequest reads a create request from the body (see decodeBody).
func decodeCreateRequest(w http.ResponseWriter, r *http.Request, maxBody int64) (message.CreateRequest, error) {
	var b createBody
	if err := decodeBody(w, r, maxBody, &b, createFields, false); err != nil {
		return message.CreateRequest{}, err
	}
	req := message.CreateRequest{To: b.To, Content: b.Content}
	if b.SendAt != nil {
		t, err := time.Parse(time.RFC3339, *b.SendAt)
		if err != nil {
			return message.CreateRequest{}, message.FieldError("sendAt", "must be an RFC 3339 timestamp, such as 2030-01-02T15:04:05Z")
		}
		req.SendAt = &t
	}
	return req, nil
}

// decodeError turns an error of json.Decoder into one a client may see.
func decodeError(err error, maxBody int64) error {
	var (
		mbe  *http.MaxBytesError
		syn  *json.SyntaxError
		typ  *json.UnmarshalTypeError
		name string
	)
	switch {
	case errors.As(err, &mbe):
		return tooLarge(maxBody)
	case errors.Is(err, io.EOF):
		return message.Errorf(message.EINVALID, "body must be a JSON object, got an empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return message.Errorf(message.EINVALID, "body is not valid JSON: it ends too early")
	case errors.As(err, &syn):
		return message.Errorf(message.EINVALID, "body is not valid JSON (at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return message.Errorf(message.EINVALID, "body must be a JSON object, got a JSON %s", typ.Value)
		}
		detail, ok := fieldTypes[typ.Field]
		if !ok {
			detail = "has the wrong type"
		}
		return message.FieldError(typ.Field, "%s, got a JSON %s", detail, typ.Value)
	case unknownField(err, &name):
		return message.FieldError(name, "is not a known field")
	}
	return message.Errorf(message.EINVALID, "body is not a valid message request")
}

// unknownField reports whether err is DisallowUnknownFields' complaint, and
// the field it names. encoding/json has no type for it, only the text
// `json: unknown field "name"`.
func unknownField(err error, name *string) bool {
	rest, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return false
	}
	n, uerr := strconv.Unquote(rest)
	if uerr != nil {
		n = strings.Trim(rest, `"`)
	}
	*name = n
	return true
}

func tooLarge(maxBody int64) error {
	return message.Errorf(message.ETOOLARGE, "body must be at most %d bytes", maxBody)
}

// listResponse is a page with its items never null.
type listResponse struct {
	Items      []message.Message `json:"items"`
	NextCursor string            `json:"nextCursor,omitempty"`
}

func handleListMessages(log *slog.Logger, msgs Messages) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, ok := queryParams(w, r, "status", "limit", "cursor")
		if !ok {
			return
		}
		f := message.Filter{Limit: DefaultListLimit}
		if s := q.Get("status"); s != "" {
			f.Status = message.Status(s)
			if !f.Status.Valid() {
				writeInvalid(w, r, "status", "must be one of UNSENT, PROCESSING, SENT, FAILED")
				return
			}
		}
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > MaxListLimit {
				writeInvalid(w, r, "limit", fmt.Sprintf("must be an integer from 1 to %d", MaxListLimit))
				return
			}
			f.Limit = n
		}
		if c := q.Get("cursor"); c != "" {
			// A cursor is the id of the last message of a page, and the
			// store reads it as "_id < cursor": anything else would page
			// from an arbitrary point, and an id in capitals (UUIDs are
			// case-insensitive) from the wrong one, since stored ids are
			// lowercase.
			if !validUUID(c) {
				writeInvalid(w, r, "cursor", "is not a cursor this API returned")
				return
			}
			f.Cursor = strings.ToLower(c)
		}
		page, err := msgs.List(r.Context(), f)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		resp := listResponse{Items: page.Items, NextCursor: page.NextCursor}
		if resp.Items == nil {
			resp.Items = []message.Message{}
		}
		// Lists leave the delivery log out; GET /messages/{id} shows it.
		for i := range resp.Items {
			resp.Items[i].Deliveries = nil
		}
		writeJSON(w, r, log, http.StatusOK, resp)
	})
}

func handleGetMessage(log *slog.Logger, msgs Messages) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := messageID(r)
		if !validUUID(id) {
			// No message has such an ID: answer without asking the store.
			writeError(w, r, log, message.ErrNotFound)
			return
		}
		m, err := msgs.Get(r.Context(), id)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, r, log, http.StatusOK, m)
	})
}

// messageID returns the {id} of r's path in the form IDs are stored in:
// UUIDs are case-insensitive, the IDs this system makes lowercase.
func messageID(r *http.Request) string { return strings.ToLower(r.PathValue("id")) }

// validUUID reports whether s is a UUID in its 36-character text form.
func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// queryParams returns r's query parameters after checking them against
// allowed, the parameters of r's route, each of which takes one value. An
// unknown parameter (a misspelt ?statuss=FAILED) or a repeated one
// (?status=SENT&status=FAILED) is answered with a 400 that names it, and
// queryParams returns false. Ignoring either would quietly answer another
// question than the one asked: every message instead of the failed ones.
func queryParams(w http.ResponseWriter, r *http.Request, allowed ...string) (url.Values, bool) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeInvalid(w, r, "", "the query string is malformed: use name=value pairs joined by &, percent-encoded")
		return nil, false
	}
	// Sorted, so that with several bad parameters the same one is named
	// every time.
	for _, name := range slices.Sorted(maps.Keys(q)) {
		switch {
		case len(allowed) == 0:
			writeInvalid(w, r, name, "is not a query parameter of this route, which takes none")
			return nil, false
		case !slices.Contains(allowed, name):
			writeInvalid(w, r, name, fmt.Sprintf("is not a query parameter of this route, which takes %s", strings.Join(allowed, ", ")))
			return nil, false
		case len(q[name]) > 1:
			writeInvalid(w, r, name, "must be given at most once")
			return nil, false
		}
	}
	return q, true
}

// validKey reports whether an Idempotency-Key is valid UTF-8 free of
// control characters.
func validKey(key string) bool {
	if !utf8.ValidString(key) {
		return false
	}
	for _, c := range key {
		if unicode.IsControl(c) {
			return false
		}
	}
	return true
}
