package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// FuzzCreateMessage posts arbitrary bodies to POST /messages: the server
// must never panic or answer 5xx, and every answer must be JSON.
func FuzzCreateMessage(f *testing.F) {
	for _, seed := range []string{
		`{"to":"+905551111111","content":"hello"}`,
		`{"to":"+905551111111","content":"hello","sendAt":"2099-01-01T00:00:00Z"}`,
		`{"to":"+905551111111","content":"hello","sendAt":"2020-01-01T00:00:00Z"}`,
		`{"to":"+905551111111","content":"hello","sendAt":"9999-99-99"}`,
		`{"to":905551111111,"content":"hello"}`,
		`{"to":"+905551111111","content":"hello","x":1}`,
		`{"to":"+905551111111","content":"` + strings.Repeat("ş", 251) + `"}`,
		`{"to":"+905551111111","content":"\ud800"}`,
		`{"to":"+905551111111","content":"hello"} {}`,
		`{"to":`,
		`[]`, `null`, `""`, `0`, ``, "\xff\xfe", `{"\u0000":1}`, `{"to":{"a":[1,2,{"b":null}]}}`,
	} {
		f.Add(seed)
	}
	// One server for every run: the store is real and opening it takes
	// a while. Its log buffer is emptied after each run.
	ts := newTestServer(f)
	f.Fuzz(func(t *testing.T, body string) {
		defer ts.logs.Reset()
		w := ts.do(t, http.MethodPost, "/messages", body, "Content-Type", "application/json")
		if w.Code >= 500 {
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body)
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("invalid JSON answer for %q: %q", body, w.Body)
		}
		ct := w.Header().Get("Content-Type")
		if w.Code >= 400 && ct != "application/problem+json" || w.Code < 400 && ct != "application/json" {
			t.Fatalf("status %d with Content-Type %q", w.Code, ct)
		}
	})
}
