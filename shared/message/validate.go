package message

import (
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// DefaultMaxContentLength is the seed's limit on content, in Unicode code points.
const DefaultMaxContentLength = 250

// CreateRequest is what a client sends to create a message.
type CreateRequest struct {
	To      string     `json:"to"`
	Content string     `json:"content"`
	SendAt  *time.Time `json:"sendAt,omitempty"`
}

// ValidateShape checks r against the rules of the API that do not depend
// on the time: to in E.164 syntax, content of 1..maxContent code points,
// sendAt within the years RFC 3339 can write (see LatestSendAt).
// ValidateSendAt checks the rest. They are apart because an idempotent
// repeat is looked up between the two (see outbox.Service.Create).
// Every invalid field is reported: the first as the error, the others in
// its Also.
func (r CreateRequest) ValidateShape(maxContent int) error {
	var errs []*Error
	switch {
	case r.To == "":
		errs = append(errs, FieldError("to", "is required"))
	case !ValidE164(r.To):
		errs = append(errs, FieldError("to", "must be an E.164 number: '+' and 8 to 15 digits, the first not 0"))
	}
	switch n := utf8.RuneCountInString(r.Content); {
	case r.Content == "":
		errs = append(errs, FieldError("content", "is required"))
	case !utf8.ValidString(r.Content):
		errs = append(errs, FieldError("content", "must be valid UTF-8"))
	case n > maxContent:
		errs = append(errs, FieldError("content", "must be at most %d characters, got %d", maxContent, n))
	}
	if r.SendAt != nil && r.SendAt.After(LatestSendAt) {
		errs = append(errs, FieldError("sendAt", "must be no later than %s", LatestSendAt.Format(time.RFC3339)))
	}
	if len(errs) == 0 {
		return nil
	}
	errs[0].Also = errs[1:]
	return errs[0]
}

// ValidateControlChars checks that content holds no control characters but
// tab, newline and carriage return. It is apart from ValidateShape because
// it came later: a request accepted before it must still get its
// idempotent repeat, so the key is looked up first (see
// outbox.Service.Create).
func (r CreateRequest) ValidateControlChars() error {
	if i := strings.IndexFunc(r.Content, controlChar); i >= 0 {
		return FieldError("content", "must hold no control characters but tab, newline and carriage return, got %U at byte %d", []rune(r.Content[i:])[0], i)
	}
	return nil
}

// controlChar reports whether c is a control character a text message has
// no use for: C0 (NUL, ESC, ...), DEL and C1, but not tab, newline or
// carriage return. Passed on, they reach a webhook's SMS gateway or
// terminal, where a NUL ends a C string and an ESC starts a command.
func controlChar(c rune) bool {
	return unicode.IsControl(c) && c != '\t' && c != '\n' && c != '\r'
}

// LatestSendAt is the last time a sendAt may name. RFC 3339 writes years
// of four digits, and a time in an offset far from UTC can read as a later
// year in UTC (9999-12-31T23:59:59-23:59 is in 10000): stored, such a
// message could never be written out as JSON again, and every listing that
// held it would fail.
var LatestSendAt = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// ValidateSendAt checks that sendAt, if given, is after now.
func (r CreateRequest) ValidateSendAt(now time.Time) error {
	if r.SendAt != nil && !r.SendAt.After(now) {
		return FieldError("sendAt", "must be in the future")
	}
	return nil
}

// ValidE164 reports whether s is '+' followed by 8 to 15 digits, the first
// not zero (a country code never starts with 0).
func ValidE164(s string) bool {
	if len(s) < 9 || len(s) > 16 || s[0] != '+' || s[1] == '0' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// New returns the message a valid request creates, with the given ID. The
// message starts UNSENT; a sendAt in the future becomes its NextAttemptAt.
func New(id string, r CreateRequest, now time.Time) Message {
	m := Message{
		ID:        id,
		To:        r.To,
		Content:   r.Content,
		Status:    StatusUnsent,
		CreatedAt: now,
		UpdatedAt: now,
	}
	if r.SendAt != nil {
		// To the millisecond, as MongoDB keeps it: the 202 shows what a
		// later read shows.
		at := r.SendAt.UTC().Truncate(time.Millisecond)
		m.SendAt = &at
		m.NextAttemptAt = &at
	}
	return m
}

// ValidID reports whether id looks like a message ID: a UUID in its
// canonical 36-character form.
func ValidID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
