package message

import (
	"errors"
	"fmt"
)

// Error codes. The HTTP layer keeps the one map from code to status.
const (
	EINVALID     = "invalid"
	ENOTFOUND    = "not_found"
	ECONFLICT    = "conflict"
	EMISMATCH    = "idempotency_mismatch"
	EINPROGRESS  = "in_progress"
	ETOOLARGE    = "too_large"
	EUNAVAILABLE = "unavailable"
	EINTERNAL    = "internal"
)

// Error is an error the system means to show a client: a code, the field it
// concerns (if any) and a message safe to return.
type Error struct {
	Code    string
	Field   string
	Message string
	// Also holds the request's other invalid fields, if any, so that a
	// client hears of all of them at once.
	Also []*Error
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with no field.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldError returns an EINVALID *Error naming field.
func FieldError(field, format string, args ...any) *Error {
	return &Error{Code: EINVALID, Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the *Error in err's chain, or EINTERNAL.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err == nil {
		return ""
	}
	return EINTERNAL
}

// ErrNotFound is returned by stores when a message does not exist.
var ErrNotFound = &Error{Code: ENOTFOUND, Message: "message not found"}
