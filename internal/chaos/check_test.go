package chaos

import (
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

const id = "0195f0a2-7b1c-7cde-8f00-123456789abc"

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func call(kind string, start, end int) Call {
	c := Call{ID: id, Start: at(start), End: at(end), Kind: kind}
	switch kind {
	case CallOK:
		c.Accepted, c.Status = true, 202
	case CallLateOK:
		c.Accepted, c.ClientGone = true, true
	case CallTimeout:
		c.ClientGone = true
	}
	return c
}

func input(status message.Status, calls []Call, faults ...Fault) Input {
	m := message.Message{ID: id, Status: status, WebhookMessageID: "wh-" + id}
	if status == message.StatusFailed {
		m.FailureReason = "permanent failure: HTTP 400 Bad Request"
	}
	in := Input{
		Posts:  []Post{{Index: 0, ID: id, To: "+905550000000"}},
		Final:  map[string]message.Message{id: m},
		Calls:  map[string][]Call{id: calls},
		Faults: faults,
		Retry:  message.RetryPolicy{BaseDelay: 200 * time.Millisecond, MaxDelay: 2 * time.Second},
	}
	if status == message.StatusFailed {
		in.DeadLetters = []message.DeadLetter{{MessageID: id}}
	}
	return in
}

func TestAnalyzeDuplicates(t *testing.T) {
	kill := func(ms int) Fault { return Fault{Kind: KillProcessor, At: at(ms), Until: at(ms + 1000)} }
	tests := []struct {
		name                                string
		in                                  Input
		window, crash, timeout, unexplained int
		suspicious, concurrent              int
	}{
		{"one delivery", input(message.StatusSent, []Call{call(CallOK, 0, 5)}), 0, 0, 0, 0, 0, 0},
		{"kill between answer and redelivery", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 20000, 20005)}, kill(300)),
			1, 1, 0, 0, 0, 0},
		{"kill during the call", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 20000, 20005)}, kill(2)),
			1, 1, 0, 0, 0, 0},
		{"kill long after the answer, Redis up", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 20000, 20005)}, kill(9000)),
			1, 1, 0, 0, 1, 0},
		{"kill long after the answer, Redis lost", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 20000, 20005)},
			kill(9000), Fault{Kind: LoseRedis, At: at(3000), Until: at(6000)}), 1, 1, 0, 0, 0, 0},
		{"a publisher kill explains nothing", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 20000, 20005)},
			Fault{Kind: KillPublisher, At: at(300)}), 0, 0, 0, 1, 0, 0},
		{"kill before the first answer's call", input(message.StatusSent, []Call{call(CallOK, 1000, 1005), call(CallOK, 20000, 20005)}, kill(500)),
			0, 0, 0, 1, 0, 0},
		{"kill sent as the request was on its way", input(message.StatusSent, []Call{call(CallOK, 1000, 1000), call(CallOK, 20000, 20005)}, kill(990)),
			1, 1, 0, 0, 0, 0},
		{"late answer", input(message.StatusSent, []Call{call(CallLateOK, 0, 1010), call(CallOK, 1300, 1305)}), 1, 0, 1, 0, 0, 0},
		{"late answer cut short by a kill", input(message.StatusSent, []Call{call(CallLateOK, 0, 700), call(CallOK, 20000, 20005)}, kill(699)),
			1, 1, 0, 0, 0, 0},
		{"timeout in the delivery log", func() Input {
			in := input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallOK, 1300, 1305)})
			m := in.Final[id]
			m.Deliveries = []message.Delivery{{At: at(1001), Outcome: message.OutcomeRetry, Error: "post webhook: context deadline exceeded"}}
			in.Final[id] = m
			return in
		}(), 1, 0, 1, 0, 0, 0},
		{"no explanation", input(message.StatusSent, []Call{call(CallOK, 0, 5), call(CallError, 300, 305), call(CallOK, 800, 805)}),
			0, 0, 0, 1, 0, 0},
		{"overlapping calls", input(message.StatusSent, []Call{call(CallOK, 0, 50), call(CallOK, 10, 60)}), 0, 0, 0, 1, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Analyze(tt.in)
			got := []int{s.WindowDuplicates, s.CrashWindow, s.TimeoutWindow, len(s.Unexplained), len(s.Suspicious), len(s.Concurrent)}
			want := []int{tt.window, tt.crash, tt.timeout, tt.unexplained, tt.suspicious, tt.concurrent}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("window, crash, timeout, unexplained, suspicious, concurrent = %v, want %v\n%s", got, want, s.Findings(5))
				}
			}
		})
	}
}

func TestAnalyzeRetries(t *testing.T) {
	tests := []struct {
		name                        string
		calls                       []Call
		faults                      []Fault
		checked, excluded, violated int
	}{
		// Nominal backoffs: 200ms, 400ms, 800ms, 1.6s, 2s.
		{"on time", []Call{call(CallError, 0, 5), call(CallError, 200, 205), call(CallOK, 600, 605)}, nil, 2, 0, 0},
		{"jitter at its floor", []Call{call(CallError, 0, 5), call(CallOK, 5+160, 170)}, nil, 1, 0, 0},
		{"too early", []Call{call(CallError, 0, 5), call(CallError, 200, 205), call(CallOK, 400, 405)}, nil, 2, 0, 1},
		{"timeout measured from the hang-up", []Call{call(CallTimeout, 0, 1000), call(CallOK, 1170, 1175)}, nil, 1, 0, 0},
		{"429 waits for Retry-After", []Call{call(CallTooMany, 0, 5), call(CallOK, 500, 505)}, nil, 1, 0, 1},
		{"429 honoured", []Call{call(CallTooMany, 0, 5), call(CallOK, 1005, 1010)}, nil, 1, 0, 0},
		{"kill in the gap", []Call{call(CallError, 0, 5), call(CallOK, 50, 55)}, []Fault{{Kind: KillAll, At: at(20)}}, 0, 1, 0},
		{"permanent failure is not a retry", []Call{call(CallPermanent, 0, 5)}, nil, 0, 0, 0},
		// A call lost to a kill counts as an attempt: the redelivered copy
		// finds its claim. Unless Redis lost the claim: then the system
		// never counted that call, and the next failures are its retries 1
		// and 2.
		{"a call lost to a kill is an attempt", []Call{call(CallOK, 0, 5), call(CallError, 1000, 1005), call(CallLateOK, 1205, 1210), call(CallOK, 1610, 1615)},
			[]Fault{{Kind: KillProcessor, At: at(500)}}, 2, 0, 2},
		{"a lost call whose claim Redis lost is no attempt", []Call{call(CallOK, 0, 5), call(CallError, 1000, 1005), call(CallLateOK, 1205, 1210), call(CallOK, 1610, 1615)},
			[]Fault{{Kind: LoseRedis, At: at(-100), Until: at(500)}, {Kind: KillProcessor, At: at(500)}}, 2, 0, 0},
		{"a lost failure whose claim Redis lost is no attempt", []Call{call(CallError, 0, 5), call(CallError, 50, 55), call(CallError, 255, 260), call(CallOK, 660, 665)},
			[]Fault{{Kind: LoseRedis, At: at(0), Until: at(30)}, {Kind: KillAll, At: at(20)}}, 2, 1, 0},
		{"numbering goes on after an uncounted call", []Call{call(CallOK, 0, 5), call(CallError, 1000, 1005), call(CallError, 1205, 1210), call(CallOK, 1410, 1415)},
			[]Fault{{Kind: LoseRedis, At: at(-100), Until: at(500)}, {Kind: KillProcessor, At: at(500)}}, 2, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Analyze(input(message.StatusSent, tt.calls, tt.faults...))
			if s.RetriesChecked != tt.checked || s.RetriesExcluded != tt.excluded || len(s.RetryViolations) != tt.violated {
				t.Fatalf("checked %d excluded %d violations %v, want %d %d %d", s.RetriesChecked, s.RetriesExcluded, s.RetryViolations,
					tt.checked, tt.excluded, tt.violated)
			}
		})
	}
}

func TestAnalyzeOutcomes(t *testing.T) {
	t.Run("lost", func(t *testing.T) {
		for _, st := range []message.Status{message.StatusUnsent, message.StatusProcessing} {
			if s := Analyze(input(st, nil)); len(s.Lost) != 1 || s.OK() {
				t.Errorf("%s: lost %v", st, s.Lost)
			}
		}
		in := input(message.StatusFailed, []Call{call(CallPermanent, 0, 5)})
		m := in.Final[id]
		m.FailureReason = ""
		in.Final[id] = m
		if s := Analyze(in); len(s.Lost) != 1 {
			t.Errorf("FAILED without a reason: lost %v", s.Lost)
		}
		in = input(message.StatusSent, []Call{call(CallOK, 0, 5)})
		delete(in.Final, id)
		if s := Analyze(in); len(s.Lost) != 1 {
			t.Errorf("not found: lost %v", s.Lost)
		}
	})
	t.Run("dead letters", func(t *testing.T) {
		in := input(message.StatusFailed, []Call{call(CallPermanent, 0, 5)})
		if s := Analyze(in); !s.OK() || s.Failed != 1 || s.ExtraNotifications != 0 {
			t.Fatalf("notified FAILED message: %+v", s)
		}
		in.DeadLetters = append(in.DeadLetters, message.DeadLetter{MessageID: id})
		if s := Analyze(in); !s.OK() || s.ExtraNotifications != 1 {
			t.Fatalf("a second notification is allowed but counted: %+v", s)
		}
		in.DeadLetters = nil
		if s := Analyze(in); s.OK() || len(s.FailedNotNotified) != 1 {
			t.Fatalf("FAILED without notification: %+v", s)
		}
		in = input(message.StatusSent, []Call{call(CallOK, 0, 5)})
		in.DeadLetters = []message.DeadLetter{{MessageID: id}}
		if s := Analyze(in); len(s.NotifiedNotFailed) != 1 {
			t.Fatalf("notification for a SENT message: %+v", s)
		}
	})
	t.Run("sent without acceptance", func(t *testing.T) {
		if s := Analyze(input(message.StatusSent, []Call{call(CallError, 0, 5)})); s.OK() || len(s.SentWithoutAcceptance) != 1 {
			t.Fatalf("%+v", s)
		}
	})
	t.Run("permanent recipients", func(t *testing.T) {
		in := input(message.StatusSent, []Call{call(CallOK, 0, 5)})
		in.PermanentSuffix = "00"
		if s := Analyze(in); len(s.PermanentNotFailed) != 1 {
			t.Fatalf("%+v", s)
		}
	})
}
