package prom

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
)

func scrape(t *testing.T, m *Metrics) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, string(body)
}

// expectSeries checks that the scraped body holds each of want.
func expectSeries(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("scrape lacks %q:\n%s", w, body)
		}
	}
}

// TestScrapeSurvivesAnOutboxReadFailure: with MongoDB down, a scrape still
// answers 200 with every other series, says the backlog could not be read,
// and quotes nothing of the driver's error.
func TestScrapeSurvivesAnOutboxReadFailure(t *testing.T) {
	m := New(Sources{
		Backlog: func(context.Context) (int64, time.Time, error) {
			return 0, time.Time{}, errors.New("server selection error: mongo.internal:27017")
		},
		Breaker: func() string { return "open" },
	})
	m.Observe("delivered", 3)
	code, body := scrape(t, m)
	if code != http.StatusOK {
		t.Fatalf("scrape answered %d, want 200:\n%s", code, body)
	}
	expectSeries(t, body,
		`rms_messages_total{event="delivered"} 3`,
		"rms_circuit_breaker_state 2",
		"rms_outbox_stats_up 0",
		"go_goroutines",
	)
	for _, unwanted := range []string{"\nrms_outbox_backlog ", "\nrms_outbox_oldest_age_seconds ", "mongo.internal"} {
		if strings.Contains(body, unwanted) {
			t.Errorf("scrape holds %q:\n%s", unwanted, body)
		}
	}
}

// TestScrapeReadsTheBacklog: when the outbox can be read, both gauges are
// there and rms_outbox_stats_up is 1.
func TestScrapeReadsTheBacklog(t *testing.T) {
	m := New(Sources{Backlog: func(context.Context) (int64, time.Time, error) {
		return 7, time.Now().Add(-90 * time.Second), nil
	}})
	code, body := scrape(t, m)
	if code != http.StatusOK {
		t.Fatalf("scrape answered %d, want 200", code)
	}
	expectSeries(t, body, "rms_outbox_backlog 7", "rms_outbox_stats_up 1", "rms_outbox_oldest_age_seconds 9")
}

// TestScrapeReportsDependenciesAndFailedMessages: each dependency check
// runs at the scrape and is reported 1 or 0, and the FAILED count is there
// when it can be read and left out when it cannot.
func TestScrapeReportsDependenciesAndFailedMessages(t *testing.T) {
	var failedErr error
	m := New(Sources{
		Failed: func(context.Context) (int64, error) { return 4, failedErr },
		Dependencies: []httpapi.Check{
			{Name: "mongodb", Check: func(context.Context) error { return errors.New("no reachable servers") }},
			{Name: "redis", Check: func(context.Context) error { return nil }},
			{Name: "panics", Check: func(context.Context) error { panic("a bug in a check") }},
			{Name: "hangs", Check: func(context.Context) error { select {} }},
		},
	})
	_, body := scrape(t, m)
	expectSeries(t, body,
		`rms_dependency_up{dependency="mongodb"} 0`,
		`rms_dependency_up{dependency="redis"} 1`,
		`rms_dependency_up{dependency="panics"} 0`,
		`rms_dependency_up{dependency="hangs"} 0`,
		"\nrms_messages_failed 4",
	)
	failedErr = errors.New("server selection timeout")
	if code, body := scrape(t, m); code != http.StatusOK || strings.Contains(body, "\nrms_messages_failed ") {
		t.Errorf("scrape with the count unreadable: %d, holding rms_messages_failed:\n%s", code, body)
	}
}

// TestScrapeReportsQueuesAndRelayPasses: the queue depths are there when
// the broker answers and left out when it does not; the relay's failed
// passes are counted from 0, and its last good pass is left out until
// there is one.
func TestScrapeReportsQueuesAndRelayPasses(t *testing.T) {
	var queuesErr error
	var last time.Time
	m := New(Sources{
		Queues: func(context.Context) ([]rabbitmq.QueueDepth, error) {
			return []rabbitmq.QueueDepth{{Queue: "messages", Ready: 12, Consumers: 2}, {Queue: "messages.dlq", Ready: 1}}, queuesErr
		},
		Relay: func() (time.Time, int64) { return last, 3 },
	})
	_, body := scrape(t, m)
	expectSeries(t, body,
		`rms_queue_messages_ready{queue="messages"} 12`,
		`rms_queue_messages_ready{queue="messages.dlq"} 1`,
		`rms_queue_consumers{queue="messages"} 2`,
		"rms_relay_pass_failures_total 3",
	)
	if strings.Contains(body, "rms_relay_last_pass_timestamp_seconds ") {
		t.Errorf("a last pass reported before any:\n%s", body)
	}

	queuesErr = errors.New("rabbitmq not connected")
	last = time.Unix(1_800_000_000, 500_000_000)
	code, body := scrape(t, m)
	if code != http.StatusOK || strings.Contains(body, "rms_queue_messages_ready{") {
		t.Errorf("with the broker down: %d, and the depths still reported:\n%s", code, body)
	}
	if !strings.Contains(body, "rms_relay_last_pass_timestamp_seconds 1.8000000005e+09") {
		t.Errorf("scrape lacks the last pass's time:\n%s", body)
	}
}

// TestScrapeCountsRateLimiting: the rate limits' events are counted in
// rms_rate_limited_total by limit and action, each series there from the
// start, and not among the message events.
func TestScrapeCountsRateLimiting(t *testing.T) {
	m := New(Sources{})
	_, body := scrape(t, m)
	expectSeries(t, body,
		`rms_rate_limited_total{action="waited",limit="webhook"} 0`,
		`rms_rate_limited_total{action="deferred",limit="webhook"} 0`,
		`rms_rate_limited_total{action="refused",limit="api"} 0`)
	m.Observe("webhook_rate_limit_waited", 2)
	m.Observe("webhook_rate_limit_deferred", 3)
	m.Observe("api_rate_limited", 1)
	m.Time("rate_limit_wait", 150*time.Millisecond)
	_, body = scrape(t, m)
	expectSeries(t, body,
		`rms_rate_limited_total{action="waited",limit="webhook"} 2`,
		`rms_rate_limited_total{action="deferred",limit="webhook"} 3`,
		`rms_rate_limited_total{action="refused",limit="api"} 1`,
		`rms_latency_seconds_count{kind="rate_limit_wait"} 1`)
	if strings.Contains(body, "rate_limit_waited") || strings.Contains(body, `event="api_rate_limited"`) {
		t.Errorf("a rate-limit event among the message events:\n%s", body)
	}
}
