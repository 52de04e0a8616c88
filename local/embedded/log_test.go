package embedded

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"
)

// TestLevelFilterHandlerRules: with its attributes and groups applied only
// when a record is handled, levelFilter still follows every rule of
// slog.Handler (the standard library's handler test suite).
func TestLevelFilterHandlerRules(t *testing.T) {
	var buf bytes.Buffer
	h := levelFilter{h: slog.NewJSONHandler(&buf, nil), min: slog.LevelDebug}
	results := func() []map[string]any {
		var ms []map[string]any
		for line := range strings.Lines(buf.String()) {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			ms = append(ms, m)
		}
		return ms
	}
	if err := slogtest.TestHandler(h, results); err != nil {
		t.Error(err)
	}
}

// TestLevelFilterDropsBelowMin: a record below min is not written, one at
// min is written with the attributes and groups added before, in order, and
// loggers derived from one logger do not share what was added to the other.
func TestLevelFilterDropsBelowMin(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(levelFilter{h: slog.NewJSONHandler(&buf, nil), min: slog.LevelError}).With("component", "ferretdb")
	a := base.WithGroup("conn").With("id", 1)
	b := base.With("id", 2)

	a.Warn("below min")
	if buf.Len() != 0 {
		t.Fatalf("a record below min was written: %s", buf.String())
	}
	a.Error("at min", "op", "insert")
	b.Error("other")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2: %q", len(lines), buf.String())
	}
	for i, want := range []string{
		`"msg":"at min","component":"ferretdb","conn":{"id":1,"op":"insert"}}`,
		`"msg":"other","component":"ferretdb","id":2}`,
	} {
		if !strings.HasSuffix(lines[i], want) {
			t.Errorf("line %d = %s, want it to end with %s", i, lines[i], want)
		}
	}
}
