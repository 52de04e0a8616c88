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
	for _, want := range []string{
		`rms_messages_total{event="delivered"} 3`,
		"rms_circuit_breaker_state 2",
		"rms_outbox_stats_up 0",
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
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
	for _, want := range []string{"rms_outbox_backlog 7", "rms_outbox_stats_up 1", "rms_outbox_oldest_age_seconds 9"} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
}
