package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	c, err := config.Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.APIAddr != "127.0.0.1:8080" || c.ProcessorAddr != "127.0.0.1:8081" || c.Queue != "messages" ||
		c.DeadLetterQueue != "messages.dlq" || c.MaxRetries != 3 || c.StaleDuration != 4*time.Minute ||
		c.EmbeddedMongoDBAddr != "127.0.0.1:27018" || c.MongoURI != "" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestLoadNamesTheBadVariable(t *testing.T) {
	tests := map[string]string{
		"WEBHOOK_TIMEOUT":    "5",
		"MAX_RETRIES":        "three",
		"STALE_DURATION":     "1s",
		"WEBHOOK_SECRET":     "not-a-secret",
		"WEBHOOK_URL":        "ftp://x",
		"RABBITMQ_URI":       "http://x",
		"MONGODB_URI":        "localhost:27017",
		"REDIS_URI":          "http://x",
		"BATCH_SIZE":         "0",
		"LOG_LEVEL":          "loud",
		"WEBHOOK_RATE_LIMIT": "NaN",
		"API_RATE_LIMIT":     "+Inf",
		"RABBITMQ_PREFETCH":  "65536",
		"INBOX_TTL":          "5m",
		"FAST_PATH":          "sometimes",
		"PUBLISH_WINDOW":     "-1s",
		"API_BASE_PATH":      "api/v 1",
	}
	for name, value := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := config.Load(env(map[string]string{name: value}))
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("want an error naming %s, got %v", name, err)
			}
		})
	}
}

// TestDurationsHaveUpperBounds: a WEBHOOK_TIMEOUT or STALE_DURATION so
// long that the durations made from them overflow (a claim of -1124095h)
// or outlive what the MongoDB stand-in keeps is refused, naming it; the
// longest allowed pass.
func TestDurationsHaveUpperBounds(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		name string // "" if valid
	}{
		{map[string]string{"WEBHOOK_TIMEOUT": "2000000h"}, "WEBHOOK_TIMEOUT"},
		{map[string]string{"WEBHOOK_TIMEOUT": "11m", "STALE_DURATION": "1h"}, "WEBHOOK_TIMEOUT"},
		{map[string]string{"WEBHOOK_TIMEOUT": "10m", "STALE_DURATION": "1h"}, ""},
		{map[string]string{"STALE_DURATION": "30h", "INBOX_TTL": "60h"}, "STALE_DURATION"},
		{map[string]string{"STALE_DURATION": "12h", "INBOX_TTL": "24h"}, ""},
	} {
		c, err := config.Load(env(tc.env))
		switch {
		case tc.name == "" && err != nil:
			t.Errorf("%v: %v, want it accepted", tc.env, err)
		case tc.name != "" && (err == nil || !strings.Contains(err.Error(), tc.name)):
			t.Errorf("%v: accepted (claim %s), want an error naming %s", tc.env, c.ClaimTTL(), tc.name)
		}
	}
}

// TestTLSChecksCannotBeTurnedOff: a MongoDB URI that turns off the
// server's certificate or host name check is refused, naming the option,
// whatever its case; the same option set to false is fine.
func TestTLSChecksCannotBeTurnedOff(t *testing.T) {
	for _, q := range []string{"&tlsInsecure=true", "&tlsAllowInvalidCertificates=true", "&TLSALLOWINVALIDHOSTNAMES=true", "&sslAllowInvalidCertificates=1", ";tlsInsecure=true", "&tls%49nsecure=true"} {
		uri := "mongodb://rms:pw@db.example.com:27017/?tls=true" + q
		_, err := config.Load(env(map[string]string{"MONGODB_URI": uri}))
		if err == nil || !strings.Contains(err.Error(), "MONGODB_URI") || !strings.Contains(err.Error(), "MONGODB_URI: sets ") {
			t.Errorf("MONGODB_URI with %s: %v, want an error naming the variable and the option", q, err)
		}
	}
	if _, err := config.Load(env(map[string]string{"MONGODB_URI": "mongodb://db.example.com:27017/?tls=true&tlsInsecure=false&tlsCAFile=/etc/ssl/ca.pem"})); err != nil {
		t.Errorf("MONGODB_URI with tlsInsecure=false: %v", err)
	}
}

// TestRedisPasswordOutsideAURLIsRefused: a password in the host:port form
// of REDIS_URI is refused without quoting it: go-redis would dial it as
// part of the address, and its error would carry it into the logs.
func TestRedisPasswordOutsideAURLIsRefused(t *testing.T) {
	for _, uri := range []string{"default:Sup3rSecretPw@127.0.0.1:6379", "Sup3rSecretPw@cache", "cache:6379/0"} {
		_, err := config.Load(env(map[string]string{"REDIS_URI": uri}))
		if err == nil || !strings.Contains(err.Error(), "REDIS_URI") || strings.Contains(err.Error(), "Sup3rSecretPw") {
			t.Errorf("REDIS_URI=%s: %v, want an error naming the variable without the password", uri, err)
		}
	}
}

// TestUnencodedPasswordIsRefused: a RabbitMQ URI whose password has a / ?
// or # not percent-encoded, followed later by an @, is refused without
// quoting it: amqp091 would dial a piece of the password as the host.
// Encoded, or with an @ in the password alone, it is fine, and so are
// MongoDB URIs with an @ in a query value (the MongoDB driver splits at the
// first @).
func TestUnencodedPasswordIsRefused(t *testing.T) {
	const bad = "amqp://guest:p@Secret9/x@127.0.0.1:5672/"
	_, err := config.Load(env(map[string]string{"RABBITMQ_URI": bad}))
	if err == nil || !strings.Contains(err.Error(), "RABBITMQ_URI") || strings.Contains(err.Error(), "Secret9") {
		t.Errorf("RABBITMQ_URI=%s: %v, want an error naming the variable without the password", bad, err)
	}
	for name, uri := range map[string]string{
		"RABBITMQ_URI": "amqp://guest:p%40Secret9%2Fx@127.0.0.1:5672/vhost",
		"MONGODB_URI":  "mongodb://acct:key@acct.mongo.cosmos.azure.com:10255/?ssl=true&replicaSet=globaldb&retrywrites=false&appName=@acct@",
	} {
		if _, err := config.Load(env(map[string]string{name: uri})); err != nil {
			t.Errorf("%s=%s: %v", name, uri, err)
		}
	}
}

// TestAPIBasePathForms: a base path is written as API Gateway shows it,
// with or without slashes around it; the result has a leading slash only.
func TestAPIBasePathForms(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", "api": "/api", "/api/": "/api", "api/v1": "/api/v1"} {
		c, err := config.Load(env(map[string]string{"API_BASE_PATH": in}))
		if err != nil || c.APIBasePath != want {
			t.Errorf("API_BASE_PATH=%q: %q, %v; want %q", in, c.APIBasePath, err, want)
		}
	}
}

// TestWebhookSecretRotation: WEBHOOK_SECRET takes several secrets
// separated by spaces, each of which must be valid.
func TestWebhookSecretRotation(t *testing.T) {
	const a, b = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", "whsec_ZmVkY2JhOTg3NjU0MzIxMA=="
	if _, err := config.Load(env(map[string]string{"WEBHOOK_SECRET": a + " " + b})); err != nil {
		t.Fatalf("two secrets: %v", err)
	}
	if keys, err := config.DecodeWebhookSecrets(" " + a + "  " + b + " "); err != nil || len(keys) != 2 {
		t.Fatalf("two secrets with extra spaces: %d keys, %v", len(keys), err)
	}
	_, err := config.Load(env(map[string]string{"WEBHOOK_SECRET": a + " whsec_"}))
	if err == nil || !strings.Contains(err.Error(), "WEBHOOK_SECRET") || !strings.Contains(err.Error(), "secret 2") {
		t.Fatalf("a bad second secret: %v", err)
	}
	if strings.Contains(err.Error(), "MDEy") {
		t.Fatalf("the error shows a secret: %v", err)
	}
}

func TestRedisURIForms(t *testing.T) {
	tests := []struct {
		uri  string
		want config.RedisOptions
	}{
		{"127.0.0.1:6379", config.RedisOptions{Addr: "127.0.0.1:6379", Password: "pw", DB: 2}},
		{"redis://cache:6380/3", config.RedisOptions{Addr: "cache:6380", Password: "pw", DB: 3}},
		{"rediss://user:secret@cache", config.RedisOptions{Addr: "cache:6379", Username: "user", Password: "secret", DB: 2, TLS: true}},
		{"redis://:secret@cache:6379", config.RedisOptions{Addr: "cache:6379", Password: "secret", DB: 2}},
	}
	for _, tt := range tests {
		c, err := config.Load(env(map[string]string{"REDIS_URI": tt.uri, "REDIS_PASSWORD": "pw", "REDIS_DB": "2"}))
		if err != nil {
			t.Fatalf("%s: %v", tt.uri, err)
		}
		if got := c.Redis(); got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.uri, got, tt.want)
		}
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	c, err := config.Load(env(map[string]string{
		"API_KEY":        "k3y",
		"WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"RABBITMQ_URI":   "amqps://user:hunter2@broker:5671/",
		"MONGODB_URI":    "mongodb://user:hunter3@db:27017/",
		"REDIS_PASSWORD": "hunter4",
	}))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Join([]string{c.Redacted().APIKey, c.Redacted().WebhookSecret, c.Redacted().RabbitURI, c.Redacted().MongoURI, c.Redacted().RedisPassword}, " ")
	for _, secret := range []string{"k3y", "MfKQ9r8", "hunter2", "hunter3", "hunter4"} {
		if strings.Contains(s, secret) {
			t.Errorf("redacted config still holds %q: %s", secret, s)
		}
	}
}

func TestRedactedHidesSecretsInEveryURLForm(t *testing.T) {
	for _, tt := range []struct {
		name, uri, secret, keep string
	}{
		{"redis lone name is the password", "redis://s3cret@cache:6379/0", "s3cret", "cache:6379"},
		{"redis user and password", "rediss://app:s3cret@cache:6380", "s3cret", "app"},
		{"mongodb key-file password in the query", "mongodb://db:27017/?tls=true&tlsCertificateKeyFilePassword=s3cret", "s3cret", "tls=true"},
		{"mongodb session token in the query", "mongodb+srv://cluster.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:s3cret", "s3cret", "authMechanism=MONGODB-AWS"},
		{"a URL that does not parse", "mongodb://user:s3cret@db:27017/%zz", "s3cret", "REDACTED"},
		{"plain host:port", "cache:6379", "", "cache:6379"},
		{"webhook token in the query", "https://hooks.example.com/in?token=s3cret", "s3cret", "hooks.example.com"},
		{"password with an unescaped slash", "mongodb://rms:S3cr/etPass@db/", "etPass", "db/"},
		{"password with an unescaped hash", "amqps://rms:1234#abc@broker:5671/", "1234", "broker:5671"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			c.MongoURI, c.RedisURI, c.WebhookURL = tt.uri, tt.uri, tt.uri
			r := c.Redacted()
			for i, got := range []string{r.MongoURI, r.RedisURI, r.WebhookURL} {
				if tt.secret != "" && strings.Contains(got, tt.secret) {
					t.Errorf("redacted %q still holds the secret: %s", tt.uri, got)
				}
				// The webhook URL is masked more: its whole user part and
				// query (redact.Endpoint).
				if i < 2 && !strings.Contains(got, tt.keep) {
					t.Errorf("redacted %q lost %q: %s", tt.uri, tt.keep, got)
				}
			}
		})
	}
}

// A webhook's token may be its user name, with no password (basic auth
// with an API key), or a bare query key: connection strings keep a lone
// user name, the webhook URL does not.
func TestRedactedHidesWebhookTokens(t *testing.T) {
	for _, uri := range []string{
		"https://s3cretTokenXYZ@hooks.example.com/in",
		"https://s3cretTokenXYZ:@hooks.example.com/",
		"https://hooks.example.com/?s3cretTokenXYZ",
	} {
		c := config.Default()
		c.WebhookURL = uri
		if got := c.Redacted().WebhookURL; strings.Contains(got, "s3cretTokenXYZ") || !strings.Contains(got, "hooks.example.com") {
			t.Errorf("redacted webhook URL %q: %s", uri, got)
		}
	}
}

func TestLogValueRedacts(t *testing.T) {
	c, err := config.Load(env(map[string]string{"API_KEY": "k3y-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.LogValue().String(); strings.Contains(s, "k3y-secret") || !strings.Contains(s, "5s") {
		t.Fatalf("LogValue: %s", s)
	}
}
