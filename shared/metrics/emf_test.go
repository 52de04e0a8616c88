package metrics_test

import (
	"bytes"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/metrics"
)

func TestEMFLine(t *testing.T) {
	var buf bytes.Buffer
	e := &metrics.EMF{Namespace: "ReliableMessaging", Function: "processor", W: &buf, Now: func() time.Time { return time.UnixMilli(1764300000000) }}
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatalf("an empty flush writes nothing: %q %v", buf.String(), err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); e.Add("delivered", 1) }()
	}
	wg.Wait()
	e.Add("retried", 2)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	var line struct {
		AWS struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		} `json:"_aws"`
		Function  string
		Delivered int `json:"delivered"`
		Retried   int `json:"retried"`
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%s: %v", buf.String(), err)
	}
	cw := line.AWS.CloudWatchMetrics
	if line.AWS.Timestamp != 1764300000000 || len(cw) != 1 || cw[0].Namespace != "ReliableMessaging" ||
		len(cw[0].Metrics) != 2 || cw[0].Dimensions[0][0] != "Function" || line.Function != "processor" ||
		line.Delivered != 10 || line.Retried != 2 {
		t.Fatalf("unexpected EMF line %s", buf.String())
	}
	buf.Reset()
	if err := e.Flush(); err != nil || buf.Len() != 0 {
		t.Fatal("a flush resets the counters")
	}
}
