package ebscheduler_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/ebscheduler"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// fakeScheduler stands in for the EventBridge Scheduler endpoint (the only
// AWS control-plane API the system calls) and checks the exact requests the
// SDK sends: the REST paths, the group, SigV4 signing, and that
// UpdateSchedule carries every field of the schedule back unchanged.
type fakeScheduler struct {
	t       *testing.T
	mu      sync.Mutex
	state   string
	gets    int
	updates []map[string]any
}

const scheduleJSON = `{
  "Arn": "arn:aws:scheduler:eu-west-1:123456789012:schedule/default/rms-publisher",
  "Name": "rms-publisher",
  "GroupName": "default",
  "ScheduleExpression": "rate(1 minute)",
  "ScheduleExpressionTimezone": "UTC",
  "Description": "outbox publisher",
  "FlexibleTimeWindow": {"Mode": "OFF"},
  "ActionAfterCompletion": "NONE",
  "Target": {
    "Arn": "arn:aws:lambda:eu-west-1:123456789012:function:rms-publisher",
    "RoleArn": "arn:aws:iam::123456789012:role/rms-publisher-schedule",
    "Input": "{}",
    "RetryPolicy": {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}
  },
  "CreationDate": 1764300000,
  "LastModificationDate": 1764300000,
  "State": "%s"
}`

func (f *fakeScheduler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("X-Amz-Security-Token") != "session-token" {
		f.t.Errorf("session token not sent")
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") || !strings.Contains(r.Header.Get("Authorization"), "/scheduler/aws4_request") {
		f.t.Errorf("request not signed for scheduler: %q", r.Header.Get("Authorization"))
	}
	if r.URL.Path != "/schedules/rms-publisher" {
		f.t.Errorf("unexpected path %s", r.URL.Path)
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.Method {
	case http.MethodGet:
		if g := r.URL.Query().Get("groupName"); g != "default" {
			f.t.Errorf("GetSchedule groupName %q", g)
		}
		f.gets++
		_, _ = io.WriteString(w, strings.Replace(scheduleJSON, "%s", f.state, 1))
	case http.MethodPut:
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			f.t.Errorf("UpdateSchedule body: %v", err)
		}
		f.updates = append(f.updates, body)
		f.state = body["State"].(string)
		_, _ = io.WriteString(w, `{"ScheduleArn":"arn:aws:scheduler:eu-west-1:123456789012:schedule/default/rms-publisher"}`)
	default:
		f.t.Errorf("unexpected method %s", r.Method)
	}
}

func TestToggleSchedule(t *testing.T) {
	fake := &fakeScheduler{t: t, state: "ENABLED"}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	env := map[string]string{
		"AWS_ENDPOINT_URL_SCHEDULER": srv.URL,
		"AWS_REGION":                 "eu-west-1",
		"AWS_ACCESS_KEY_ID":          "AKIDEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":      "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		"AWS_SESSION_TOKEN":          "session-token",
	}
	ctx := context.Background()
	s, err := ebscheduler.NewFromEnvironment(func(k string) string { return env[k] }, "rms-publisher", "default")
	if err != nil {
		t.Fatal(err)
	}

	st, err := s.Status(ctx)
	if err != nil || st.State != message.SchedulerStarted || st.Schedule != "rms-publisher" || st.Backend != "eventbridge-scheduler" {
		t.Fatalf("status: %+v %v", st, err)
	}
	if st, err = s.Start(ctx); err != nil || st.State != message.SchedulerStarted || len(fake.updates) != 0 {
		t.Fatalf("start while enabled must not update: %+v %v, %d updates", st, err, len(fake.updates))
	}
	if st, err = s.Stop(ctx); err != nil || st.State != message.SchedulerStopped {
		t.Fatalf("stop: %+v %v", st, err)
	}
	if len(fake.updates) != 1 {
		t.Fatalf("%d updates, want 1", len(fake.updates))
	}
	u := fake.updates[0]
	want := map[string]any{
		"GroupName": "default", "ScheduleExpression": "rate(1 minute)", "ScheduleExpressionTimezone": "UTC",
		"Description": "outbox publisher", "ActionAfterCompletion": "NONE", "State": "DISABLED",
	}
	for k, v := range want {
		if u[k] != v {
			t.Errorf("UpdateSchedule %s = %v, want %v", k, u[k], v)
		}
	}
	target, _ := u["Target"].(map[string]any)
	if target["Arn"] != "arn:aws:lambda:eu-west-1:123456789012:function:rms-publisher" ||
		target["RoleArn"] != "arn:aws:iam::123456789012:role/rms-publisher-schedule" || target["Input"] != "{}" || target["RetryPolicy"] == nil {
		t.Errorf("UpdateSchedule lost target fields: %v", target)
	}
	if ftw, _ := u["FlexibleTimeWindow"].(map[string]any); ftw["Mode"] != "OFF" {
		t.Errorf("UpdateSchedule FlexibleTimeWindow = %v", u["FlexibleTimeWindow"])
	}
	if _, ok := u["Name"]; ok {
		t.Errorf("Name belongs in the path, not the body: %v", u)
	}

	// The gate follows the schedule, and reads it at most once per cache period.
	gate := s.Gate()
	gets := fake.gets
	for range 10 {
		if open, err := gate(ctx); err != nil || open {
			t.Fatalf("gate while disabled: %v %v", open, err)
		}
	}
	if fake.gets != gets {
		t.Errorf("gate read the schedule %d times within its cache period", fake.gets-gets)
	}
	if st, err = s.Start(ctx); err != nil || st.State != message.SchedulerStarted || len(fake.updates) != 2 {
		t.Fatalf("start: %+v %v", st, err)
	}
	if open, err := gate(ctx); err != nil || !open {
		t.Fatalf("gate after start: %v %v", open, err)
	}
}
