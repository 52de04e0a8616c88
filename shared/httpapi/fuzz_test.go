package httpapi_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// FuzzCreateMessage posts arbitrary bodies to POST /messages: the server
// must never panic or answer 5xx, every answer must be JSON, and a body
// accepted has each of its keys once, spelled as its field is (read here
// with json.Decoder's tokens, apart from the server's own scan).
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
		`{"to":"+905551111111","TO":"+905552222222","content":"a","CONTENT":"b"}`,
		`{"to":"+905551111111","content":"a","\u0074o":"+905552222222"}`,
		`{"to":"+905551111111","content":"a","ſendAt":"2099-01-01T00:00:00Z"}`,
		`{"content":"\"to\":1,\"TO\":2","to":"+905551111111"}`,
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
		if w.Code < 300 {
			if keys := topLevelKeys(t, body); !exactOnce(keys, "to", "content", "sendAt") {
				t.Fatalf("accepted %q, whose keys are %q", body, keys)
			}
		}
	})
}

// topLevelKeys returns the keys of the JSON object body, in order.
func topLevelKeys(t *testing.T, body string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("accepted %q, which is not an object", body)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q: %v", body, err)
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("accepted %q: %v", body, err)
		}
	}
	return keys
}

// exactOnce reports whether every key is one of fields, and none repeats.
func exactOnce(keys []string, fields ...string) bool {
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] || !slices.Contains(fields, k) {
			return false
		}
		seen[k] = true
	}
	return true
}
