package message_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

func TestCreateRequestValidate(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	future := now.Add(time.Hour)
	past := now.Add(-time.Second)
	last := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	// RFC 3339 as a client writes it, and time.Parse accepts it; in UTC it
	// is in the year 10000, which JSON cannot write back.
	var beyond time.Time
	if err := json.Unmarshal([]byte(`"9999-12-31T23:59:59-23:59"`), &beyond); err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(beyond.UTC()); err == nil {
		t.Fatal("the year 10000 is written as JSON: the case below tests nothing")
	}
	tests := []struct {
		name  string
		req   message.CreateRequest
		field string // "" means valid
	}{
		{"seed example", message.CreateRequest{To: "+90111111111", Content: "hi"}, ""},
		{"15 digits", message.CreateRequest{To: "+123456789012345", Content: "hi"}, ""},
		{"8 digits", message.CreateRequest{To: "+12345678", Content: "hi"}, ""},
		{"7 digits", message.CreateRequest{To: "+1234567", Content: "hi"}, "to"},
		{"16 digits", message.CreateRequest{To: "+1234567890123456", Content: "hi"}, "to"},
		{"no plus", message.CreateRequest{To: "905551111111", Content: "hi"}, "to"},
		{"letters", message.CreateRequest{To: "+90555ABC1111", Content: "hi"}, "to"},
		{"leading zero", message.CreateRequest{To: "+0555111111", Content: "hi"}, "to"},
		{"spaces", message.CreateRequest{To: "+90 555 111 11", Content: "hi"}, "to"},
		{"missing to", message.CreateRequest{Content: "hi"}, "to"},
		{"missing content", message.CreateRequest{To: "+905551111111"}, "content"},
		{"250 multibyte", message.CreateRequest{To: "+905551111111", Content: strings.Repeat("ğ", 250)}, ""},
		{"251 multibyte", message.CreateRequest{To: "+905551111111", Content: strings.Repeat("ğ", 251)}, "content"},
		{"250 emoji", message.CreateRequest{To: "+905551111111", Content: strings.Repeat("😀", 250)}, ""},
		{"invalid utf8", message.CreateRequest{To: "+905551111111", Content: "a\xffb"}, "content"},
		{"tab, newline, carriage return", message.CreateRequest{To: "+905551111111", Content: "a\tb\r\nc"}, ""},
		{"NUL", message.CreateRequest{To: "+905551111111", Content: "a\x00b"}, "content"},
		{"escape", message.CreateRequest{To: "+905551111111", Content: "\x1b[2J"}, "content"},
		{"DEL", message.CreateRequest{To: "+905551111111", Content: "a\x7f"}, "content"},
		{"C1", message.CreateRequest{To: "+905551111111", Content: "a\u0085b"}, "content"},
		{"sendAt future", message.CreateRequest{To: "+905551111111", Content: "hi", SendAt: &future}, ""},
		{"sendAt past", message.CreateRequest{To: "+905551111111", Content: "hi", SendAt: &past}, "sendAt"},
		{"sendAt now", message.CreateRequest{To: "+905551111111", Content: "hi", SendAt: &now}, "sendAt"},
		{"sendAt at the last second of 9999", message.CreateRequest{To: "+905551111111", Content: "hi", SendAt: &last}, ""},
		{"sendAt in the year 10000 in UTC", message.CreateRequest{To: "+905551111111", Content: "hi", SendAt: &beyond}, "sendAt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.ValidateShape(message.DefaultMaxContentLength)
			if err == nil {
				err = tt.req.ValidateControlChars()
			}
			if err == nil {
				err = tt.req.ValidateSendAt(now)
			}
			if tt.field == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			e, ok := err.(*message.Error)
			if !ok || e.Code != message.EINVALID || e.Field != tt.field {
				t.Fatalf("want EINVALID on %q, got %#v", tt.field, err)
			}
		})
	}
}

func TestNewSchedulesSendAt(t *testing.T) {
	now := time.Now().UTC()
	at := now.Add(time.Hour)
	m := message.New("id", message.CreateRequest{To: "+905551111111", Content: "x", SendAt: &at}, now)
	// To the millisecond, as MongoDB keeps it.
	want := at.Truncate(time.Millisecond)
	if m.Status != message.StatusUnsent || m.NextAttemptAt == nil || !m.NextAttemptAt.Equal(want) || !m.SendAt.Equal(want) {
		t.Fatalf("want UNSENT waiting until %v, got %+v", want, m)
	}
}

func TestTransitions(t *testing.T) {
	all := []message.Status{message.StatusUnsent, message.StatusProcessing, message.StatusSent, message.StatusFailed}
	allowed := map[[2]message.Status]bool{
		{message.StatusUnsent, message.StatusProcessing}: true,
		{message.StatusUnsent, message.StatusSent}:       true,
		{message.StatusUnsent, message.StatusFailed}:     true,
		{message.StatusProcessing, message.StatusUnsent}: true,
		{message.StatusProcessing, message.StatusSent}:   true,
		{message.StatusProcessing, message.StatusFailed}: true,
		{message.StatusFailed, message.StatusUnsent}:     true,
	}
	for _, from := range all {
		for _, to := range all {
			if got := message.CanTransition(from, to); got != allowed[[2]message.Status{from, to}] {
				t.Errorf("%s -> %s: got %v", from, to, got)
			}
		}
	}
	if message.Status("DONE").Valid() || !message.StatusSent.Final() || message.StatusUnsent.Final() {
		t.Error("Valid/Final wrong")
	}
}

func TestRetryPolicy(t *testing.T) {
	p := message.RetryPolicy{MaxRetries: 3, BaseDelay: time.Second, MaxDelay: 5 * time.Second, Jitter: 0.2}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 5 * time.Second, 60: 5 * time.Second} {
		if got := p.Nominal(n); got != want {
			t.Errorf("Nominal(%d) = %v, want %v", n, got, want)
		}
		for range 100 {
			d := p.Delay(n)
			if d < time.Duration(0.8*float64(want)) || d > time.Duration(1.2*float64(want)) {
				t.Fatalf("Delay(%d) = %v outside ±20%% of %v", n, d, want)
			}
		}
	}
	if p.Exhausted(3) || !p.Exhausted(4) {
		t.Error("3 retries after the first attempt: 4 attempts allowed")
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"0195f0a2-7b1c-7cde-8f00-123456789abc": true,
		"0195F0A2-7B1C-7CDE-8F00-123456789ABC": true,
		"0195f0a2-7b1c-7cde-8f00-123456789ab":  false,
		"0195f0a27b1c-7cde-8f00-123456789abcd": false,
		"zz95f0a2-7b1c-7cde-8f00-123456789abc": false,
		"":                                     false,
	} {
		if got := message.ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v", id, got)
		}
	}
}

// TestAppendDelivery: a repeated deferral replaces the last entry, counted;
// anything else is appended, and the log keeps its last MaxDeliveries.
func TestAppendDelivery(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	deferral := func(i int, why string) message.Delivery {
		return message.Delivery{At: at.Add(time.Duration(i) * time.Minute), Outcome: message.OutcomeDeferred, Error: why}
	}
	var log []message.Delivery
	for i := range message.MaxDeliveries {
		log = message.AppendDelivery(log, message.Delivery{At: at, Attempt: i + 1, Outcome: message.OutcomeRetry}, true)
	}
	log = message.AppendDelivery(log, deferral(1, "circuit breaker open"), true)
	if len(log) != message.MaxDeliveries || log[0].Attempt != 2 || log[len(log)-1].Times != 0 {
		t.Fatalf("a full log after a new entry: %d entries, first attempt %d, last %+v", len(log), log[0].Attempt, log[len(log)-1])
	}
	log = message.AppendDelivery(log, deferral(2, "circuit breaker open"), true)
	log = message.AppendDelivery(log, deferral(3, "circuit breaker open"), true)
	if last := log[len(log)-1]; len(log) != message.MaxDeliveries || log[0].Attempt != 2 || last.Times != 3 || !last.At.Equal(at.Add(3*time.Minute)) {
		t.Fatalf("after two repeats: %d entries, first attempt %d, last %+v; want the last counted 3 times, at the latest", len(log), log[0].Attempt, last)
	}
	if got := message.AppendDelivery(log, deferral(4, "rate limited"), true); got[len(got)-1].Times != 0 || got[len(got)-2].Times != 3 {
		t.Fatalf("another reason is a new entry: %+v", got[len(got)-2:])
	}
	if got := message.AppendDelivery(log, deferral(4, "circuit breaker open"), false); got[len(got)-1].Times != 0 || got[len(got)-2].Times != 3 {
		t.Fatalf("without merge, appended: %+v", got[len(got)-2:])
	}
}
