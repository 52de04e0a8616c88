package processor_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		code int
		err  error
		want processor.Class
	}{
		{200, nil, processor.ClassDelivered},
		{202, nil, processor.ClassDelivered},
		{204, nil, processor.ClassDelivered},
		{301, nil, processor.ClassPermanent},
		{302, nil, processor.ClassPermanent},
		{400, nil, processor.ClassPermanent},
		{401, nil, processor.ClassPermanent},
		{404, nil, processor.ClassPermanent},
		{408, nil, processor.ClassRetryable},
		{410, nil, processor.ClassPermanent},
		{422, nil, processor.ClassPermanent},
		{429, nil, processor.ClassRetryable},
		{500, nil, processor.ClassRetryable},
		{502, nil, processor.ClassRetryable},
		{503, nil, processor.ClassRetryable},
		{0, errors.New("connection refused"), processor.ClassRetryable},
	}
	for _, tt := range tests {
		got, reason := processor.Classify(message.WebhookResponse{StatusCode: tt.code}, tt.err)
		if got != tt.want || reason == "" {
			t.Errorf("Classify(%d, %v) = %v %q, want %v", tt.code, tt.err, got, reason, tt.want)
		}
	}
}

func TestDecodeEnvelope(t *testing.T) {
	tests := map[string]bool{
		`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":0}`:       true,
		`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":3,"x":1}`: true,
		`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":-1}`:      false,
		`{"id":"nope","seq":0}`:                                       false,
		`{"seq":0}`:                                                   false,
		`not json`:                                                    false,
		``:                                                            false,
		`[]`:                                                          false,
		`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":"0"}`:  false,
		`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":1e40}`: false,
	}
	for body, ok := range tests {
		_, err := processor.DecodeEnvelope([]byte(body))
		if (err == nil) != ok {
			t.Errorf("DecodeEnvelope(%s): err = %v, want ok=%v", body, err, ok)
		}
	}
}

// FuzzDecodeEnvelope checks that no queue payload makes the decoder panic,
// and that whatever it accepts has a valid id and seq.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add([]byte(`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":0}`))
	f.Add([]byte(`{"id":"0195f0a2-7b1c-7cde-8f00-123456789abc","seq":2,"publishedAt":"2026-11-28T10:00:00Z"}`))
	f.Add([]byte(`{"id":null}`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := processor.DecodeEnvelope(body)
		if err != nil {
			return
		}
		if !message.ValidID(env.ID) || env.Seq < 0 {
			t.Fatalf("accepted a bad envelope %+v", env)
		}
		if _, err := json.Marshal(env); err != nil {
			t.Fatal(err)
		}
	})
}
