package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// Fault kinds.
const (
	KillProcessor = "kill-processor"
	KillPublisher = "kill-publisher"
	KillAPI       = "kill-api"
	// KillAll kills the api, publisher and processor and the embedded
	// MongoDB at once: what kill -9 of `rms all` does.
	KillAll       = "kill-all"
	CutBroker     = "cut-broker"
	LoseRedis     = "lose-redis"
	WebhookOutage = "webhook-outage"
)

// AllFaults lists every kind, for random schedules.
var AllFaults = []string{KillProcessor, KillPublisher, KillAPI, KillAll, CutBroker, LoseRedis, WebhookOutage}

// Fault is one injected fault.
type Fault struct {
	Kind string
	// At is when it struck (the kill, the cut, the loss); Until is when the
	// harness restored the service (restarted, accepted again).
	At, Until time.Time
}

// killsProcessor reports whether f ended a processor.
func (f Fault) killsProcessor() bool { return f.Kind == KillProcessor || f.Kind == KillAll }

// Input is everything a run observed, for Analyze.
type Input struct {
	Posts []Post
	// Final is each accepted message as GET /messages/{id} answered at the
	// end (missing: the API never found it).
	Final map[string]message.Message
	// Stored is the number of messages GET /messages lists at the end (-1:
	// not counted).
	Stored int
	Calls  map[string][]Call
	Faults []Fault
	// DeadLetters are the notifications drained from the DLQ.
	DeadLetters []message.DeadLetter
	Retry       message.RetryPolicy
	// PermanentSuffix is the webhook's; such messages must end FAILED.
	PermanentSuffix string
	Exits           []Exit
}

// Summary is the verdict of a run.
type Summary struct {
	Seed     uint64
	Messages int
	Accepted int
	// NotAccepted are messages the load never got a 202/200 for.
	NotAccepted int
	Stored      int
	Sent        int
	Failed      int
	// Lost are accepted messages neither SENT nor FAILED, or FAILED
	// without a failureReason.
	Lost []string
	// Stuck is the number of messages still pending when the first wait
	// ran out; the harness then restarted every role and waited again.
	Stuck int
	// Duplicates counts ids the webhook accepted more than once;
	// WindowDuplicates those the README's crash-or-timeout window
	// explains (see docs/chaos.md for the rule); Unexplained the rest.
	Duplicates       int
	WindowDuplicates int
	// CrashWindow and TimeoutWindow split WindowDuplicates by cause (a
	// duplicate with both counts as a crash).
	CrashWindow   int
	TimeoutWindow int
	// Window describes each window duplicate.
	Window      []string
	Unexplained []string
	// Suspicious are window duplicates whose kill came long after the
	// webhook's answer with Redis up all along: the done marker should
	// have prevented them.
	Suspicious []string
	// Concurrent are ids the webhook saw two calls for at the same time.
	Concurrent []string
	// DeadLetters is the number of DLQ notifications; FailedNotNotified the
	// FAILED ids without one; ExtraNotifications the notifications beyond
	// one per FAILED id (allowed: at least once); NotifiedNotFailed the ids
	// notified that did not end FAILED.
	DeadLetters        int
	FailedNotNotified  []string
	ExtraNotifications int
	NotifiedNotFailed  []string
	// Retry checks: gaps checked, gaps excluded because a processor kill
	// fell in them, the smallest gap/nominal ratio, and the violations.
	RetriesChecked  int
	RetriesExcluded int
	MinRetryRatio   float64
	RetryViolations []string
	// Other findings.
	SentWithoutAcceptance []string
	WrongWebhookMessageID []string
	PermanentNotFailed    []string
	FailedAfterAcceptance []string
	UnknownIDs            []string
	ClientErrors          []string
	// DataRaces are the race detector's reports in the processes' logs
	// (with -chaos.race).
	DataRaces    []string
	Exits        []Exit
	WebhookCalls int
	// PostLatency is the p50, p99 and max time from a message's first
	// POST to its accepting answer (retries included).
	PostLatency [3]time.Duration
	Faults      map[string]int
	Timeline    []Fault
	Elapsed     time.Duration
}

// measureTolerance absorbs the difference between when the webhook saw a
// call end and when the processor did (a hang-up reaches the webhook a few
// milliseconds after the client's timeout).
const measureTolerance = 25 * time.Millisecond

// crashSlack is how long after the webhook's answer a kill still counts as
// "before the done marker was written" on this loaded 2-core machine.
const crashSlack = time.Second

// Analyze checks a run's observations.
func Analyze(in Input) Summary {
	s := Summary{Messages: len(in.Posts), Stored: in.Stored, Faults: map[string]int{}, Timeline: in.Faults, Exits: in.Exits, MinRetryRatio: -1}
	for _, f := range in.Faults {
		s.Faults[f.Kind]++
	}
	accepted := map[string]Post{}
	var lat []time.Duration
	for _, p := range in.Posts {
		if p.ID == "" {
			s.NotAccepted++
		} else {
			accepted[p.ID] = p
			lat = append(lat, p.Latency)
		}
		for _, e := range p.Errors {
			s.ClientErrors = append(s.ClientErrors, fmt.Sprintf("message %d (key %s): %s", p.Index, p.Key, e))
		}
	}
	s.Accepted = len(accepted)
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		s.PostLatency = [3]time.Duration{lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]}
	}

	for id, p := range accepted {
		m, ok := in.Final[id]
		calls := in.Calls[id]
		switch {
		case !ok:
			s.Lost = append(s.Lost, id+" (not found)")
			continue
		case m.Status == message.StatusSent:
			s.Sent++
			if !anyAccepted(calls) {
				s.SentWithoutAcceptance = append(s.SentWithoutAcceptance, id)
			}
			if m.WebhookMessageID != "wh-"+id {
				s.WrongWebhookMessageID = append(s.WrongWebhookMessageID, fmt.Sprintf("%s: %q", id, m.WebhookMessageID))
			}
		case m.Status == message.StatusFailed:
			s.Failed++
			if m.FailureReason == "" {
				s.Lost = append(s.Lost, id+" (FAILED without failureReason)")
			}
			if anyAccepted(calls) {
				s.FailedAfterAcceptance = append(s.FailedAfterAcceptance, fmt.Sprintf("%s (%s)", id, m.FailureReason))
			}
		default:
			s.Lost = append(s.Lost, fmt.Sprintf("%s (%s, attempts %d)", id, m.Status, m.Attempts))
		}
		if in.PermanentSuffix != "" && strings.HasSuffix(p.To, in.PermanentSuffix) &&
			(m.Status != message.StatusFailed || !strings.HasPrefix(m.FailureReason, "permanent failure")) {
			s.PermanentNotFailed = append(s.PermanentNotFailed, fmt.Sprintf("%s (%s %q)", id, m.Status, m.FailureReason))
		}
	}
	for id, calls := range in.Calls {
		s.WebhookCalls += len(calls)
		if _, ok := accepted[id]; !ok {
			s.UnknownIDs = append(s.UnknownIDs, id)
		}
	}

	// Dead letters.
	notes := map[string]int{}
	reasons := map[string]string{}
	for _, n := range in.DeadLetters {
		notes[n.MessageID]++
		reasons[n.MessageID] = n.Reason
	}
	s.DeadLetters = len(in.DeadLetters)
	for id, n := range notes {
		m, ok := in.Final[id]
		if !ok || m.Status != message.StatusFailed {
			st := "never accepted"
			if ok {
				st = string(m.Status)
			}
			s.NotifiedNotFailed = append(s.NotifiedNotFailed, fmt.Sprintf("%s: %s, notified %d time(s): %q", id, st, n, reasons[id]))
			s.ExtraNotifications += n
			continue
		}
		s.ExtraNotifications += n - 1
	}
	for id, m := range in.Final {
		if m.Status == message.StatusFailed && notes[id] == 0 {
			s.FailedNotNotified = append(s.FailedNotNotified, id)
		}
	}

	for id, calls := range in.Calls {
		s.checkDuplicates(id, calls, in)
		s.checkRetries(id, calls, in)
	}
	for _, l := range [][]string{s.Lost, s.Window, s.Unexplained, s.Suspicious, s.Concurrent, s.FailedNotNotified, s.NotifiedNotFailed,
		s.RetryViolations, s.SentWithoutAcceptance, s.WrongWebhookMessageID, s.PermanentNotFailed, s.FailedAfterAcceptance,
		s.UnknownIDs, s.ClientErrors} {
		sort.Strings(l)
	}
	return s
}

func anyAccepted(calls []Call) bool {
	for _, c := range calls {
		if c.Accepted {
			return true
		}
	}
	return false
}

// checkDuplicates applies the window rule to every accepted call that was
// followed by another call of the same id.
func (s *Summary) checkDuplicates(id string, calls []Call, in Input) {
	n := 0
	for _, c := range calls {
		if c.Accepted {
			n++
		}
	}
	for i := 1; i < len(calls); i++ {
		if calls[i].Start.Before(calls[i-1].End) {
			s.Concurrent = append(s.Concurrent, fmt.Sprintf("%s: call %d (%s) started %s before call %d (%s) ended",
				id, i+1, calls[i].Kind, calls[i-1].End.Sub(calls[i].Start).Round(time.Millisecond), i, calls[i-1].Kind))
			break
		}
	}
	if n < 2 {
		return
	}
	s.Duplicates++
	explained, suspicious, crash := true, "", false
	var whys []string
	seen := 0
	for i, a := range calls {
		if !a.Accepted {
			continue
		}
		seen++
		if seen == n || i+1 >= len(calls) {
			break
		}
		q := calls[i+1]
		why, loose := explain(a, q, in.Faults, in.Final[id])
		if why == "" {
			explained = false
			s.Unexplained = append(s.Unexplained, fmt.Sprintf("%s: accepted call %d (%s, answered %s) followed by call %d at %s with no processor kill or timeout in between; calls: %s",
				id, i+1, a.Kind, a.End.Format("15:04:05.000"), i+2, q.Start.Format("15:04:05.000"), describeCalls(calls)))
			break
		}
		if loose != "" {
			suspicious = fmt.Sprintf("%s: %s; calls: %s", id, loose, describeCalls(calls))
		}
		crash = crash || why == whyCrash
		whys = append(whys, why)
	}
	if explained {
		s.WindowDuplicates++
		if crash {
			s.CrashWindow++
		} else {
			s.TimeoutWindow++
		}
		s.Window = append(s.Window, fmt.Sprintf("%s: %s; calls: %s", id, strings.Join(whys, ", "), describeCalls(calls)))
		if suspicious != "" {
			s.Suspicious = append(s.Suspicious, suspicious)
		}
	}
}

// explain says why accepted call a may be followed by call q: a processor
// kill between a's start and q's start (the crash window), or a timeout the
// processor saw for a (the timeout window). loose is set for a crash-window
// explanation whose kill came more than crashSlack after the answer while
// Redis stayed up, which the done marker should have covered.
func explain(a, q Call, faults []Fault, m message.Message) (why, loose string) {
	// A kill while the webhook handled a, or just after it answered: the
	// answer never reached the processor, or its done marker was not
	// written yet. (A late answer whose client hung up because of a kill
	// is a crash too.) A kill sent just before the webhook saw the call
	// counts too: the request was on its way, written by the processor
	// before the signal landed (the fault's time is taken before it is
	// sent), and no other processor runs until the killed one restarts.
	var later *Fault
	for _, f := range faults {
		if !f.killsProcessor() || f.At.Before(a.Start.Add(-measureTolerance)) || f.At.After(q.Start) {
			continue
		}
		if !f.At.After(a.End.Add(crashSlack)) {
			return whyCrash, ""
		}
		if later == nil {
			later = &f
		}
	}
	if a.ClientGone {
		return whyTimeout, ""
	}
	for _, d := range m.Deliveries {
		// The processor recorded a timeout for the call the webhook
		// accepted: its answer came too late (a loaded machine).
		if d.Outcome != message.OutcomeDelivered && d.StatusCode == 0 && isTimeout(d.Error) &&
			!d.At.Before(a.Start) && !d.At.After(q.Start) {
			return whyTimeout, ""
		}
	}
	if later != nil {
		if redisLost(faults, a.Start, q.Start) {
			return whyCrash, ""
		}
		return whyCrash, fmt.Sprintf("%s at %s came %s after the webhook's answer and Redis stayed up",
			later.Kind, later.At.Format("15:04:05.000"), later.At.Sub(a.End).Round(time.Millisecond))
	}
	return "", ""
}

const (
	whyCrash   = "crash window"
	whyTimeout = "timeout window"
)

func redisLost(faults []Fault, from, to time.Time) bool {
	for _, f := range faults {
		if f.Kind == LoseRedis && !f.At.After(to) && !f.Until.Before(from) {
			return true
		}
	}
	return false
}

func isTimeout(e string) bool {
	e = strings.ToLower(e)
	return strings.Contains(e, "deadline") || strings.Contains(e, "timeout")
}

// checkRetries checks the gap after every retryable failure. Call k is
// retry k: a call lost to a kill counts as an attempt too, since the
// redelivered copy finds its claim and counts it (see
// processor.handleClaimed), unless Redis was lost in between and the
// claim with it. Then the system could not know of that call, and the
// retries after it are numbered one lower.
func (s *Summary) checkRetries(id string, calls []Call, in Input) {
	uncounted := 0
	for k := 1; k < len(calls); k++ {
		prev, next := calls[k-1], calls[k]
		lost := killBetween(in.Faults, prev.Start, next.Start)
		if lost && redisLost(in.Faults, prev.Start, next.Start) {
			uncounted++
		}
		if !prev.Retryable() {
			continue
		}
		if lost {
			s.RetriesExcluded++
			continue
		}
		retry := k - uncounted
		nominal := in.Retry.Nominal(retry)
		gap := next.Start.Sub(prev.End)
		need := time.Duration(0.8 * float64(nominal))
		if prev.Kind == CallTooMany && need < time.Second {
			need = time.Second // Retry-After: 1
		}
		s.RetriesChecked++
		ratio := float64(gap) / float64(nominal)
		if s.MinRetryRatio < 0 || ratio < s.MinRetryRatio {
			s.MinRetryRatio = ratio
		}
		if gap+measureTolerance < need {
			s.RetryViolations = append(s.RetryViolations, fmt.Sprintf("%s: retry %d after %s waited %s, needed %s (nominal %s); calls: %s",
				id, retry, prev.Kind, gap.Round(time.Millisecond), need, nominal, describeCalls(calls)))
		}
	}
}

func killBetween(faults []Fault, from, to time.Time) bool {
	for _, f := range faults {
		if f.killsProcessor() && !f.At.Before(from) && !f.At.After(to) {
			return true
		}
	}
	return false
}

func describeCalls(calls []Call) string {
	parts := make([]string, len(calls))
	for i, c := range calls {
		parts[i] = fmt.Sprintf("%s-%s %s", c.Start.Format("15:04:05.000"), c.End.Format("05.000"), c.Kind)
	}
	return strings.Join(parts, ", ")
}

// OK reports whether the run met the guarantees the tests assert: every
// message accepted, nothing lost, no duplicate outside the documented
// window, every FAILED message notified, every retry backed off, nothing
// SENT that the webhook did not accept.
func (s Summary) OK() bool {
	return len(s.Lost) == 0 && len(s.Unexplained) == 0 && len(s.FailedNotNotified) == 0 &&
		len(s.RetryViolations) == 0 && s.NotAccepted == 0 && len(s.SentWithoutAcceptance) == 0 && s.Stuck == 0 &&
		len(s.DataRaces) == 0
}

// Table renders the summary for a human.
func (s Summary) Table() string {
	var b strings.Builder
	row := func(k string, v any) { fmt.Fprintf(&b, "  %-34s %v\n", k, v) }
	b.WriteString("chaos summary\n")
	row("seed", s.Seed)
	row("messages posted", s.Messages)
	row("accepted", s.Accepted)
	row("not accepted (load gave up)", s.NotAccepted)
	row("stored (GET /messages)", s.Stored)
	row("sent", s.Sent)
	row("failed", s.Failed)
	row("stuck until every role restarted", s.Stuck)
	row("lost", len(s.Lost))
	row("duplicates (ids accepted twice+)", s.Duplicates)
	row("  in the crash/timeout window", fmt.Sprintf("%d (crash %d, timeout %d)", s.WindowDuplicates, s.CrashWindow, s.TimeoutWindow))
	row("  unexplained", len(s.Unexplained))
	row("  suspicious window duplicates", len(s.Suspicious))
	row("concurrent calls for one id", len(s.Concurrent))
	row("DLQ notifications", s.DeadLetters)
	row("  FAILED without notification", len(s.FailedNotNotified))
	row("  extra notifications", s.ExtraNotifications)
	row("  notified but not FAILED", len(s.NotifiedNotFailed))
	row("retries checked", s.RetriesChecked)
	row("retries excluded (kill in gap)", s.RetriesExcluded)
	row("min retry gap / nominal", fmt.Sprintf("%.2f", s.MinRetryRatio))
	row("retry violations", len(s.RetryViolations))
	row("SENT without an accepted call", len(s.SentWithoutAcceptance))
	row("FAILED after the webhook accepted", len(s.FailedAfterAcceptance))
	row("permanent recipients not FAILED", len(s.PermanentNotFailed))
	row("webhook calls", s.WebhookCalls)
	row("calls for unknown ids", len(s.UnknownIDs))
	row("client errors (4xx, gave up)", len(s.ClientErrors))
	row("unexpected process exits", len(s.Exits))
	row("data races reported", len(s.DataRaces))
	row("POST latency p50/p99/max", fmt.Sprintf("%s / %s / %s", s.PostLatency[0].Round(time.Millisecond),
		s.PostLatency[1].Round(time.Millisecond), s.PostLatency[2].Round(time.Millisecond)))
	kinds := make([]string, 0, len(s.Faults))
	for k, n := range s.Faults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	row("faults injected", strings.Join(kinds, " "))
	row("elapsed", s.Elapsed.Round(time.Second))
	return b.String()
}

// Findings lists every problem and oddity with its evidence, at most max
// lines per kind.
func (s Summary) Findings(max int) string {
	var b strings.Builder
	list := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		fmt.Fprintf(&b, "%s (%d):\n", title, len(items))
		for i, it := range items {
			if i == max {
				fmt.Fprintf(&b, "  ... and %d more\n", len(items)-max)
				break
			}
			fmt.Fprintf(&b, "  %s\n", it)
		}
	}
	list("LOST", s.Lost)
	list("UNEXPLAINED DUPLICATES", s.Unexplained)
	list("SUSPICIOUS WINDOW DUPLICATES", s.Suspicious)
	list("window duplicates (allowed)", s.Window)
	list("CONCURRENT CALLS", s.Concurrent)
	list("FAILED WITHOUT DLQ NOTIFICATION", s.FailedNotNotified)
	list("DLQ NOTIFICATION FOR A MESSAGE NOT FAILED", s.NotifiedNotFailed)
	list("RETRY BACKOFF VIOLATIONS", s.RetryViolations)
	list("SENT WITHOUT AN ACCEPTED WEBHOOK CALL", s.SentWithoutAcceptance)
	list("WRONG webhookMessageId", s.WrongWebhookMessageID)
	list("PERMANENT RECIPIENTS NOT FAILED", s.PermanentNotFailed)
	list("FAILED AFTER THE WEBHOOK ACCEPTED (timeouts or crashes)", s.FailedAfterAcceptance)
	list("WEBHOOK CALLS FOR IDS NO CLIENT WAS GIVEN", s.UnknownIDs)
	list("CLIENT ERRORS", s.ClientErrors)
	list("DATA RACES", s.DataRaces)
	var exits []string
	for _, e := range s.Exits {
		exits = append(exits, fmt.Sprintf("%s at %s: %s\n%s", e.Role, e.At.Format("15:04:05.000"), e.Err, e.Tail))
	}
	list("UNEXPECTED PROCESS EXITS", exits)
	var tl []string
	for _, f := range s.Timeline {
		tl = append(tl, fmt.Sprintf("%s %s until %s", f.At.Format("15:04:05.000"), f.Kind, f.Until.Format("15:04:05.000")))
	}
	list("FAULT TIMELINE", tl)
	return b.String()
}
