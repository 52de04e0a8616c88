package main

import (
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

// TestRecordsStartWithTimeToRecordTheirOutcome: a record is started only
// with time left for the wait for another consumer's claim, the rate
// limiter's wait, the webhook call and the whole of the outcome's record
// after it, so that Lambda does not end the invocation between a webhook's
// 2xx and its record.
func TestRecordsStartWithTimeToRecordTheirOutcome(t *testing.T) {
	for _, webhook := range []time.Duration{time.Millisecond, 5 * time.Second, 30 * time.Second} {
		const wait = 2 * time.Second
		if r := processor.StartReserve(wait, webhook); r < processor.ClaimWait+wait+webhook+processor.RecordTimeout {
			t.Errorf("with WEBHOOK_TIMEOUT %s: reserve %s leaves less than %s to record after the call", webhook, r, processor.RecordTimeout)
		}
		// The function's 90 s timeout must still leave time for a batch.
		if r := processor.StartReserve(wait, webhook); r > 60*time.Second {
			t.Errorf("with WEBHOOK_TIMEOUT %s: reserve %s leaves too little of the 90 s timeout", webhook, r)
		}
	}
}
