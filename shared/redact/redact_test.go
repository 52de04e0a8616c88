package redact_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redact"
)

func TestURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:REDACTED@127.0.0.1:5672/"},
		{"mongodb://rms:S3cr/etPass@db:27017/app", "mongodb://REDACTED@db:27017/app"},
		{"mongodb://rms:S3cr?etPass@db", "mongodb://REDACTED@db"},
		{"amqps://rms:1234#abc@broker:5671/", "amqps://REDACTED@broker:5671/"},
		{"mongodb://rms:p@ss@db/", "mongodb://REDACTED@db/"},
		{"redis://s3cret@cache:6379/0", "redis://REDACTED@cache:6379/0"},
		{"REDIS://s3cret@cache:6379/0", "REDIS://REDACTED@cache:6379/0"},
		{"rediss://app:s3cret@cache:6380", "rediss://app:REDACTED@cache:6380"},
		{"mongodb://app@db/", "mongodb://app@db/"},
		{"mongodb://db:27017/?tls=true&tlsCertificateKeyFilePassword=s3cret", "mongodb://db:27017/?tls=true&tlsCertificateKeyFilePassword=REDACTED"},
		{"https://hooks.example.com/in?token=s3cret#frag", "https://hooks.example.com/in?token=REDACTED#REDACTED"},
		{"mongodb://user:s3cret@db:27017/%zz", "mongodb://user:REDACTED@db:27017/%zz"},
		{"cache:6379", "cache:6379"},
		{"user:s3cret@cache:6379", "REDACTED@cache:6379"},
		{"https://h.example/p?q=%zz", "https://h.example/p?REDACTED"},
		{"amqps://u:p@broker/vh?s3cretTokenXYZ&heartbeat=10&x=1", "amqps://u:REDACTED@broker/vh?REDACTED&heartbeat=10&x=REDACTED"},
		{"mongodb://db/?w=majority&&retryWrites=true", "mongodb://db/?w=majority&&retryWrites=true"},
	} {
		if got := redact.URL(c.in); got != c.want {
			t.Errorf("URL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestEndpoint(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://hooks.slack.com/services/T000/B000/XXXXXXXX", "https://hooks.slack.com/REDACTED"},
		{"https://hooks.example.com/in?token=s3cret", "https://hooks.example.com/REDACTED?REDACTED"},
		{"https://hooks.example.com/", "https://hooks.example.com/"},
		{"http://127.0.0.1:9000", "http://127.0.0.1:9000"},
		{"https://u:p@h.example/x", "https://REDACTED@h.example/REDACTED"},
		// A token as the user name, with or without an empty password.
		{"https://s3cretTokenXYZ@hooks.example.com/in", "https://REDACTED@hooks.example.com/REDACTED"},
		{"https://sk_live_abc:@hooks.example.com", "https://REDACTED@hooks.example.com"},
		// A token as a bare query key, and options that URL would keep.
		{"https://hooks.example.com/?s3cretTokenXYZ", "https://hooks.example.com/?REDACTED"},
		{"https://hooks.example.com?tls=s3cret&w=t0ken#f", "https://hooks.example.com?REDACTED#REDACTED"},
		// An '@' past the authority: the host is in doubt, and masked.
		{"https://h.example/in?sig=abc@SECRETTOKEN", "https://REDACTED"},
		{"https://h.example/hooks/user@tok3nSECRET", "https://REDACTED"},
		{"https://u:pa/ss@h.example/in", "https://REDACTED"},
	} {
		if got := redact.Endpoint(c.in); got != c.want {
			t.Errorf("Endpoint(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestScrub(t *testing.T) {
	uri := "mongodb://rms:S3cr/etPass@db/"
	for _, msg := range []string{
		"error parsing uri: mongodb://rms:S3cr/etPass@db/",
		"dial tcp: lookup S3cr: no such host",
		"parse password etPass failed",
	} {
		got := redact.Scrub(msg, uri)
		for _, secret := range []string{"S3cr", "etPass"} {
			if strings.Contains(got, secret) {
				t.Errorf("Scrub(%q) = %q still holds %q", msg, got, secret)
			}
		}
	}
	if got := redact.Scrub("dial db: refused", "mongodb://db/"); got != "dial db: refused" {
		t.Errorf("no password, changed: %q", got)
	}
}

// FuzzURL: whatever the string, its password never survives URL.
func FuzzURL(f *testing.F) {
	f.Add("amqp", "user", "p/a?s#s@w:rd", "host:5672/vhost?x=1")
	f.Add("Redis", "", "s3cret", "cache:6379")
	f.Add("Redis", "", "000:", "0") // user "000", empty password: not a lone name
	f.Fuzz(func(t *testing.T, scheme, user, password, tail string) {
		if len(password) < 4 || strings.ContainsAny(scheme+user+tail, "@") || strings.Contains(scheme, "://") {
			return
		}
		// A redis:// URL's lone name is its password; with a colon in it,
		// it is a user name and a password, and not this case.
		format := "%s://%s:%s@%s"
		if user == "" && strings.EqualFold(scheme, "redis") {
			if strings.Contains(password, ":") {
				return
			}
			format = "%s://%s%s@%s"
		}
		raw := fmt.Sprintf(format, scheme, user, password, tail)
		if strings.Contains(redact.URL(fmt.Sprintf(format, scheme, user, "\x00", tail)), password) {
			return // the password's text is also in the rest of the string
		}
		if got := redact.URL(raw); strings.Contains(got, password) {
			t.Fatalf("URL(%q) = %q holds the password", raw, got)
		}
	})
}
