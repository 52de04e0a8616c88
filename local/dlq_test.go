package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// TestDeadLetterAndReplay: a permanent failure dead-letters the message with
// its reason and a notification; once the webhook is fixed, a retry through
// the API delivers it.
func TestDeadLetterAndReplay(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if broken.Load() {
			http.Error(w, "no such recipient", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"messageId":"ok"}`)
	}))
	defer hook.Close()
	env := testenv.Env(t, map[string]string{"WEBHOOK_URL": hook.URL})
	api, stop := startSystem(t, env)
	defer stop()
	json200 := map[string]string{"Content-Type": "application/json"}

	_, b := do(t, "POST", api+"/messages", `{"to":"+905551111199","content":"x"}`, json200)
	var m message.Message
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	get := func() message.Message { return getMessage(t, api, m.ID) }
	waitFor(t, 30*time.Second, func() bool { return get().Status == message.StatusFailed }, func() string { return fmt.Sprint(get()) })
	failed := get()
	if failed.FailureReason == "" || failed.LastError == "" || failed.Attempts != 1 || len(failed.Deliveries) != 1 || failed.Deliveries[0].StatusCode != 400 {
		t.Fatalf("dead-lettered message: %+v", failed)
	}
	if got := listAll(t, api, "FAILED", nil); len(got) != 1 || got[0].ID != m.ID {
		t.Fatalf("GET /messages?status=FAILED: %v", got)
	}
	// The failed index is written just after the status.
	waitFor(t, 10*time.Second, func() bool {
		_, b = do(t, "GET", api+"/status", "", nil)
		return strings.Contains(string(b), `"failedMessages":1`)
	}, func() string { return fmt.Sprintf("status does not count the failure: %s", b) })
	waitFor(t, 10*time.Second, func() bool { return testenv.QueueDepth(t, env["RABBITMQ_DLQ"]) == 1 }, func() string { return "no DLQ notification" })

	// A dry-run replay counts it; a retry puts it back with a fresh budget.
	_, b = do(t, "POST", api+"/dlq/replay", `{"dryRun":true}`, json200)
	if !strings.Contains(string(b), `"matched":1`) || !strings.Contains(string(b), `"replayed":0`) {
		t.Fatalf("dry run: %s", b)
	}
	broken.Store(false)
	if resp, b := do(t, "POST", api+"/messages/"+m.ID+"/retry", "", nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("retry: %d %s", resp.StatusCode, b)
	}
	waitFor(t, 30*time.Second, func() bool { return get().Status == message.StatusSent }, func() string { return fmt.Sprint(get()) })
	if resp, _ := do(t, "POST", api+"/messages/"+m.ID+"/retry", "", nil); resp.StatusCode != http.StatusConflict {
		t.Fatalf("retry of a SENT message: %d, want 409", resp.StatusCode)
	}
	_, b = do(t, "GET", api+"/status", "", nil)
	if !strings.Contains(string(b), `"failedMessages":0`) {
		t.Fatalf("status after replay: %s", b)
	}
}
