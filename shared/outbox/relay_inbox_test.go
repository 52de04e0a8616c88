package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// TestSweepCountsADeliveryFromTheDoneMarker: a processor called the
// webhook, wrote its done marker and died before MongoDB heard of it. The
// stale sweep records SENT from the marker and counts the message
// delivered, once; it was not published again, so it is not "recovered"
// in the metrics, and later passes count nothing more.
func TestSweepCountsADeliveryFromTheDoneMarker(t *testing.T) {
	env := testenv.Env(t, map[string]string{"STALE_DURATION": "1m"})
	a, id, r, advance := publishedOnce(t, env)
	ctx := context.Background()
	if err := a.Redis.Complete(ctx, id, "wh-earlier", time.Hour); err != nil {
		t.Fatal(err)
	}
	var ev testenv.Tally
	r.Observe = ev.Record
	advance(2 * time.Minute)
	if s, err := r.Pass(ctx); err != nil || s.Recovered != 1 || s.Published != 0 {
		t.Fatalf("stale pass: %+v %v", s, err)
	}
	m, err := a.Store.GetMessage(ctx, id)
	if err != nil || m.Status != message.StatusSent || m.WebhookMessageID != "wh-earlier" {
		t.Fatalf("message: %s, webhook messageId %q (%v); want SENT from the done marker", m.Status, m.WebhookMessageID, err)
	}
	for range 2 {
		advance(2 * time.Minute)
		if _, err := r.Pass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if events := ev.Counts(); len(events) != 1 || events["delivered"] != 1 {
		t.Fatalf("events %v, want the delivery counted once as delivered", events)
	}
}
