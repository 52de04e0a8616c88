// Package config reads the system's settings from environment variables. It
// is the only place that reads the environment: everything below it takes
// values. Every setting has a default that works on a developer's machine
// with RabbitMQ and Redis on their standard ports.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redact"
)

// Config is every setting of every role. Each field names its variable.
type Config struct {
	// MongoDB. An empty MongoURI means: run the embedded server (local mode).
	MongoURI            string // MONGODB_URI
	MongoDatabase       string // MONGODB_DATABASE
	DataDir             string // DATA_DIR
	EmbeddedMongoDBAddr string // EMBEDDED_MONGODB_ADDR
	// EmbeddedMongoDBSync is the embedded MongoDB's durability: full (no
	// answer before the commits it follows are on disk; group commit) or
	// normal (commits survive a process crash but not a power loss).
	EmbeddedMongoDBSync string // EMBEDDED_MONGODB_SYNC

	// RabbitMQ.
	RabbitURI            string // RABBITMQ_URI
	Exchange             string // RABBITMQ_EXCHANGE
	Queue                string // RABBITMQ_QUEUE
	DeadLetterQueue      string // RABBITMQ_DLQ
	Prefetch             int    // RABBITMQ_PREFETCH
	ProcessorConcurrency int    // PROCESSOR_CONCURRENCY

	// Redis.
	RedisURI      string // REDIS_URI: host:port or redis:// / rediss:// URL
	RedisPassword string // REDIS_PASSWORD
	RedisDB       int    // REDIS_DB
	// RedisKeyPrefix namespaces every key, so that several deployments (or
	// test runs) can share one Redis.
	RedisKeyPrefix string // REDIS_KEY_PREFIX

	// Webhook.
	WebhookURL       string        // WEBHOOK_URL
	WebhookTimeout   time.Duration // WEBHOOK_TIMEOUT
	WebhookSecret    string        // WEBHOOK_SECRET: whsec_ + base64, several separated by spaces during a rotation
	WebhookRateLimit float64       // WEBHOOK_RATE_LIMIT: requests per second, 0 = unlimited
	WebhookRateBurst int           // WEBHOOK_RATE_BURST

	// Circuit breaker around the webhook.
	BreakerFailureRatio float64       // BREAKER_FAILURE_RATIO
	BreakerMinRequests  int           // BREAKER_MIN_REQUESTS
	BreakerWindow       time.Duration // BREAKER_WINDOW
	BreakerCooldown     time.Duration // BREAKER_COOLDOWN

	// Retries and recovery.
	MaxRetries     int           // MAX_RETRIES
	RetryBaseDelay time.Duration // RETRY_BASE_DELAY
	RetryMaxDelay  time.Duration // RETRY_MAX_DELAY
	StaleDuration  time.Duration // STALE_DURATION
	InboxTTL       time.Duration // INBOX_TTL
	// DLQAlertThreshold: a warning is logged while more messages than this
	// are FAILED.
	DLQAlertThreshold int // DLQ_ALERT_THRESHOLD

	// Outbox publisher.
	PublishInterval       time.Duration // PUBLISH_INTERVAL
	PublishWindow         time.Duration // PUBLISH_WINDOW: how long one Lambda invocation keeps publishing
	FastPath              bool          // FAST_PATH: the API publishes new messages itself while the scheduler is started
	BatchSize             int           // BATCH_SIZE
	SchedulerInitialState string        // SCHEDULER_INITIAL_STATE: started or stopped
	// ScheduleName names the EventBridge Scheduler schedule that triggers
	// the publisher Lambda. Set (in Lambda), the API's scheduler routes
	// enable and disable that schedule; empty (local mode), the state lives
	// in MongoDB.
	ScheduleName  string // SCHEDULE_NAME
	ScheduleGroup string // SCHEDULE_GROUP
	// APIBasePath is the base path that maps the API under a custom
	// domain in API Gateway (https://api.example.com/<base path>/...).
	// API Gateway passes it in the request path; the API function strips
	// it and puts it in front of Location headers. Empty: mapped at the
	// root. It has a leading slash and no trailing one.
	APIBasePath string // API_BASE_PATH
	// StackName names the deployment in the Lambda functions' metrics
	// (their Stack dimension); the template sets it.
	StackName string // STACK_NAME

	// HTTP.
	APIAddr       string // API_ADDR
	ProcessorAddr string // PROCESSOR_ADDR
	// PublisherAddr is where the publisher role, run alone, serves its
	// status and metrics; run with the others (role all), the API's
	// address serves them.
	PublisherAddr string // PUBLISHER_ADDR
	ReceiverAddr  string // RECEIVER_ADDR
	// PprofAddr, if set, serves Go's profiler (net/http/pprof) there in
	// every local process. Off by default; keep it on loopback.
	PprofAddr        string // PPROF_ADDR
	APIKey           string // API_KEY
	MaxContentLength int    // MAX_CONTENT_LENGTH
	// APIRateLimit limits each API client (API key, or address) to this
	// many requests a second, shared by every API process through Redis;
	// 0 turns it off. In AWS, API Gateway's usage plan throttles too.
	APIRateLimit float64 // API_RATE_LIMIT
	APIRateBurst int     // API_RATE_BURST

	// Logging.
	LogLevel  string // LOG_LEVEL: debug, info, warn, error
	LogFormat string // LOG_FORMAT: json or text
}

// Default returns the configuration used when no variable is set.
func Default() Config {
	return Config{
		MongoDatabase:         "messages",
		DataDir:               "./.data",
		EmbeddedMongoDBAddr:   "127.0.0.1:27018",
		EmbeddedMongoDBSync:   "full",
		RabbitURI:             "amqp://guest:guest@127.0.0.1:5672/",
		Exchange:              "messages",
		Queue:                 "messages",
		DeadLetterQueue:       "messages.dlq",
		Prefetch:              64,
		ProcessorConcurrency:  32,
		RedisURI:              "127.0.0.1:6379",
		RedisKeyPrefix:        "rms:",
		WebhookTimeout:        5 * time.Second,
		WebhookRateBurst:      100,
		BreakerFailureRatio:   0.5,
		BreakerMinRequests:    20,
		BreakerWindow:         30 * time.Second,
		BreakerCooldown:       15 * time.Second,
		MaxRetries:            3,
		RetryBaseDelay:        2 * time.Second,
		RetryMaxDelay:         5 * time.Minute,
		StaleDuration:         4 * time.Minute,
		InboxTTL:              24 * time.Hour,
		DLQAlertThreshold:     100,
		PublishInterval:       time.Second,
		FastPath:              true,
		BatchSize:             100,
		SchedulerInitialState: "started",
		ScheduleGroup:         "default",
		APIAddr:               "127.0.0.1:8080",
		ProcessorAddr:         "127.0.0.1:8081",
		PublisherAddr:         "127.0.0.1:8082",
		ReceiverAddr:          "127.0.0.1:8090",
		MaxContentLength:      250,
		APIRateBurst:          50,
		LogLevel:              "info",
		LogFormat:             "json",
	}
}

// Load reads the configuration from getenv (os.Getenv in production, a map
// in tests) over the defaults and validates it. An error names the variable.
func Load(getenv func(string) string) (Config, error) {
	c := Default()
	r := reader{getenv: getenv}
	r.str("MONGODB_URI", &c.MongoURI)
	r.str("MONGODB_DATABASE", &c.MongoDatabase)
	r.str("DATA_DIR", &c.DataDir)
	r.str("EMBEDDED_MONGODB_ADDR", &c.EmbeddedMongoDBAddr)
	r.str("EMBEDDED_MONGODB_SYNC", &c.EmbeddedMongoDBSync)
	r.str("RABBITMQ_URI", &c.RabbitURI)
	r.str("RABBITMQ_EXCHANGE", &c.Exchange)
	r.str("RABBITMQ_QUEUE", &c.Queue)
	r.str("RABBITMQ_DLQ", &c.DeadLetterQueue)
	r.int("RABBITMQ_PREFETCH", &c.Prefetch)
	r.int("PROCESSOR_CONCURRENCY", &c.ProcessorConcurrency)
	r.str("REDIS_URI", &c.RedisURI)
	r.str("REDIS_PASSWORD", &c.RedisPassword)
	r.int("REDIS_DB", &c.RedisDB)
	r.str("REDIS_KEY_PREFIX", &c.RedisKeyPrefix)
	r.str("WEBHOOK_URL", &c.WebhookURL)
	r.duration("WEBHOOK_TIMEOUT", &c.WebhookTimeout)
	r.str("WEBHOOK_SECRET", &c.WebhookSecret)
	r.float("WEBHOOK_RATE_LIMIT", &c.WebhookRateLimit)
	r.int("WEBHOOK_RATE_BURST", &c.WebhookRateBurst)
	r.float("BREAKER_FAILURE_RATIO", &c.BreakerFailureRatio)
	r.int("BREAKER_MIN_REQUESTS", &c.BreakerMinRequests)
	r.duration("BREAKER_WINDOW", &c.BreakerWindow)
	r.duration("BREAKER_COOLDOWN", &c.BreakerCooldown)
	r.int("MAX_RETRIES", &c.MaxRetries)
	r.duration("RETRY_BASE_DELAY", &c.RetryBaseDelay)
	r.duration("RETRY_MAX_DELAY", &c.RetryMaxDelay)
	r.duration("STALE_DURATION", &c.StaleDuration)
	r.duration("INBOX_TTL", &c.InboxTTL)
	r.int("DLQ_ALERT_THRESHOLD", &c.DLQAlertThreshold)
	r.duration("PUBLISH_INTERVAL", &c.PublishInterval)
	r.duration("PUBLISH_WINDOW", &c.PublishWindow)
	r.bool("FAST_PATH", &c.FastPath)
	r.int("BATCH_SIZE", &c.BatchSize)
	r.str("SCHEDULER_INITIAL_STATE", &c.SchedulerInitialState)
	r.str("SCHEDULE_NAME", &c.ScheduleName)
	r.str("SCHEDULE_GROUP", &c.ScheduleGroup)
	r.str("API_BASE_PATH", &c.APIBasePath)
	r.str("STACK_NAME", &c.StackName)
	if trimmed := strings.Trim(c.APIBasePath, "/"); trimmed != "" {
		c.APIBasePath = "/" + trimmed
	} else {
		c.APIBasePath = ""
	}
	r.str("API_ADDR", &c.APIAddr)
	r.str("PROCESSOR_ADDR", &c.ProcessorAddr)
	r.str("PUBLISHER_ADDR", &c.PublisherAddr)
	r.str("RECEIVER_ADDR", &c.ReceiverAddr)
	r.str("PPROF_ADDR", &c.PprofAddr)
	r.str("API_KEY", &c.APIKey)
	r.int("MAX_CONTENT_LENGTH", &c.MaxContentLength)
	r.float("API_RATE_LIMIT", &c.APIRateLimit)
	r.int("API_RATE_BURST", &c.APIRateBurst)
	r.str("LOG_LEVEL", &c.LogLevel)
	r.str("LOG_FORMAT", &c.LogFormat)
	if r.err != nil {
		return Config{}, r.err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// insecureMongoTLS returns the option of uri, a MongoDB URI, that turns
// off a TLS check, or "" if none does. The options are read as the driver
// reads them: separated by & or ;, names without regard to case.
func insecureMongoTLS(uri string) string {
	_, query, ok := strings.Cut(uri, "?")
	if !ok {
		return ""
	}
	for _, pair := range strings.FieldsFunc(query, func(r rune) bool { return r == '&' || r == ';' }) {
		name, value, _ := strings.Cut(pair, "=")
		name, nerr := url.QueryUnescape(name)
		value, verr := url.QueryUnescape(value)
		if nerr != nil || verr != nil {
			continue // the driver refuses such a URI itself, at start
		}
		for _, insecure := range []string{"tlsInsecure", "tlsAllowInvalidCertificates", "tlsAllowInvalidHostnames", "sslAllowInvalidCertificates", "sslAllowInvalidHostnames", "sslInsecure"} {
			if strings.EqualFold(name, insecure) && !strings.EqualFold(value, "false") {
				return insecure
			}
		}
	}
	return ""
}

// userInfoSpillsOver reports whether uri has an @ after the end of its
// authority (the first / ? or # after "://"): a user name or password with
// one of those characters not percent-encoded. The logs mask everything up to
// a URL's last @ as its user part, but amqp091 (net/url) takes the host from
// before it: a piece of the password would be dialled as the host, and
// logged.
func userInfoSpillsOver(uri string) bool {
	_, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return false
	}
	end := strings.IndexAny(rest, "/?#")
	return end >= 0 && strings.Contains(rest[end:], "@")
}

// Validate checks the values, naming the variable of the first bad one.
func (c Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if c.MongoURI != "" && !strings.HasPrefix(c.MongoURI, "mongodb://") && !strings.HasPrefix(c.MongoURI, "mongodb+srv://") {
		bad("MONGODB_URI", "must start with mongodb:// or mongodb+srv://")
	}
	if opt := insecureMongoTLS(c.MongoURI); opt != "" {
		bad("MONGODB_URI", "sets %s: certificate and host name checks are never turned off; give the server's CA with tlsCAFile instead", opt)
	}
	if c.EmbeddedMongoDBSync != "full" && c.EmbeddedMongoDBSync != "normal" {
		bad("EMBEDDED_MONGODB_SYNC", "must be full or normal")
	}
	if c.MongoDatabase == "" {
		bad("MONGODB_DATABASE", "must not be empty")
	}
	if u, err := url.Parse(c.RabbitURI); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
		bad("RABBITMQ_URI", "must be an amqp:// or amqps:// URL")
	}
	// The MongoDB driver splits a URI at its first @ and refuses an
	// unencoded / or @ in a password itself; a later @ is fine there (Azure
	// Cosmos DB's URIs end in appName=@account@).
	if userInfoSpillsOver(c.RabbitURI) {
		bad("RABBITMQ_URI", "has an @ after the host: percent-encode a / ? # or @ in the user name or password (%%2F %%3F %%23 %%40)")
	}
	for name, v := range map[string]string{"RABBITMQ_EXCHANGE": c.Exchange, "RABBITMQ_QUEUE": c.Queue, "RABBITMQ_DLQ": c.DeadLetterQueue} {
		if v == "" {
			bad(name, "must not be empty")
		}
	}
	if c.Prefetch < 1 || c.Prefetch > 65535 {
		bad("RABBITMQ_PREFETCH", "must be between 1 and 65535")
	}
	if c.ProcessorConcurrency < 1 {
		bad("PROCESSOR_CONCURRENCY", "must be at least 1")
	}
	if _, err := RedisAddr(c.RedisURI); err != nil {
		bad("REDIS_URI", "%v", err)
	}
	if c.RedisDB < 0 {
		bad("REDIS_DB", "must not be negative")
	}
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("WEBHOOK_URL", "must be an http:// or https:// URL")
		}
	}
	if c.WebhookSecret != "" {
		if _, err := DecodeWebhookSecrets(c.WebhookSecret); err != nil {
			bad("WEBHOOK_SECRET", "%v", err)
		}
	}
	if c.WebhookRateLimit < 0 {
		bad("WEBHOOK_RATE_LIMIT", "must not be negative")
	}
	if c.WebhookRateBurst < 1 {
		bad("WEBHOOK_RATE_BURST", "must be at least 1")
	}
	if c.BreakerFailureRatio <= 0 || c.BreakerFailureRatio > 1 {
		bad("BREAKER_FAILURE_RATIO", "must be in (0, 1]")
	}
	if c.BreakerMinRequests < 1 {
		bad("BREAKER_MIN_REQUESTS", "must be at least 1")
	}
	for name, d := range map[string]time.Duration{
		"WEBHOOK_TIMEOUT": c.WebhookTimeout, "BREAKER_WINDOW": c.BreakerWindow, "BREAKER_COOLDOWN": c.BreakerCooldown,
		"RETRY_BASE_DELAY": c.RetryBaseDelay, "RETRY_MAX_DELAY": c.RetryMaxDelay, "STALE_DURATION": c.StaleDuration,
		"INBOX_TTL": c.InboxTTL, "PUBLISH_INTERVAL": c.PublishInterval,
	} {
		if d <= 0 {
			bad(name, "must be a positive duration")
		}
	}
	if c.PublishWindow < 0 {
		bad("PUBLISH_WINDOW", "must not be negative")
	}
	if c.RetryMaxDelay < c.RetryBaseDelay {
		bad("RETRY_MAX_DELAY", "must not be less than RETRY_BASE_DELAY")
	}
	// Upper bounds: the durations derived from these (the claim, the taken
	// marker: twice and more) must not overflow, and the MongoDB stand-in
	// keeps its claims, which stand for taken markers, 48 hours past their
	// end (mongostore's guardKeep): longer than a taken marker lives for
	// the longest STALE_DURATION.
	if c.WebhookTimeout > maxWebhookTimeout {
		bad("WEBHOOK_TIMEOUT", "must be at most %s", maxWebhookTimeout)
	}
	if c.StaleDuration > maxStaleDuration {
		bad("STALE_DURATION", "must be at most %s", maxStaleDuration)
	}
	// A claim must outlive one delivery, and a message must stay PROCESSING
	// longer than a claim before it counts as stale.
	if c.StaleDuration <= c.ClaimTTL() {
		bad("STALE_DURATION", "must be longer than %s (twice WEBHOOK_TIMEOUT plus 10s)", c.ClaimTTL())
	}
	// A done marker must outlive the stale sweep's look at its message.
	if c.InboxTTL < 2*c.StaleDuration {
		bad("INBOX_TTL", "must be at least twice STALE_DURATION (%s)", 2*c.StaleDuration)
	}
	if c.DLQAlertThreshold < 0 {
		bad("DLQ_ALERT_THRESHOLD", "must not be negative")
	}
	if c.MaxRetries < 0 {
		bad("MAX_RETRIES", "must not be negative")
	}
	if c.BatchSize < 1 || c.BatchSize > 1000 {
		bad("BATCH_SIZE", "must be between 1 and 1000")
	}
	if c.SchedulerInitialState != "started" && c.SchedulerInitialState != "stopped" {
		bad("SCHEDULER_INITIAL_STATE", "must be started or stopped")
	}
	if c.APIBasePath != "" && !basePath.MatchString(c.APIBasePath) {
		bad("API_BASE_PATH", "must be path segments of letters, digits and ._~-, like api or api/v1")
	}
	if c.APIRateLimit < 0 {
		bad("API_RATE_LIMIT", "must not be negative")
	}
	if c.APIRateBurst < 1 {
		bad("API_RATE_BURST", "must be at least 1")
	}
	if c.MaxContentLength < 1 {
		bad("MAX_CONTENT_LENGTH", "must be at least 1")
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("LOG_LEVEL", "must be debug, info, warn or error")
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		bad("LOG_FORMAT", "must be json or text")
	}
	return errors.Join(errs...)
}

// The longest WEBHOOK_TIMEOUT and STALE_DURATION (see Validate).
const (
	maxWebhookTimeout = 10 * time.Minute
	maxStaleDuration  = 12 * time.Hour
)

// basePath is what API Gateway accepts as a base path mapping, with the
// leading slash Load adds.
var basePath = regexp.MustCompile(`^(/[A-Za-z0-9._~-]+)+$`)

// Needs lists, for each process of a deployment, the settings whose
// defaults only fit one machine (loopback addresses, the embedded MongoDB,
// the demo receiver): a container or a Lambda function must set them. The
// keys are the local roles ("api", "publisher", "processor") and the Lambda
// functions ("lambda:api", "lambda:publisher", "lambda:processor").
var Needs = map[string][]string{
	"api":              {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "API_ADDR"},
	"publisher":        {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "PUBLISHER_ADDR"},
	"processor":        {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "WEBHOOK_URL", "PROCESSOR_ADDR"},
	"lambda:api":       {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "SCHEDULE_NAME"},
	"lambda:publisher": {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI"},
	"lambda:processor": {"MONGODB_URI", "RABBITMQ_URI", "REDIS_URI", "WEBHOOK_URL"},
}

// ClaimTTL is how long an inbox claim lives: long enough for one delivery
// (the webhook call and recording its outcome), short enough that a copy
// republished after a crash is not blocked for long.
func (c Config) ClaimTTL() time.Duration { return 2*c.WebhookTimeout + 10*time.Second }

// TakenTTL is how long a dispatch's taken mark is kept: past the stale
// sweep's look at it (STALE_DURATION, and as long again for a sweep that
// comes late) and a claim. The inbox's MongoDB stand-in is read beside
// Redis for as long after a write to it.
func (c Config) TakenTTL() time.Duration { return 2*c.StaleDuration + c.ClaimTTL() }

// RedisOptions are the parts of REDIS_URI, REDIS_PASSWORD and REDIS_DB that a
// client needs.
type RedisOptions struct {
	Addr     string
	Username string
	Password string
	DB       int
	TLS      bool
}

// Redis returns the Redis connection settings. A password or database in a
// redis:// URL wins over REDIS_PASSWORD and REDIS_DB.
func (c Config) Redis() RedisOptions {
	o := RedisOptions{Password: c.RedisPassword, DB: c.RedisDB}
	o.Addr, _ = RedisAddr(c.RedisURI)
	if u, err := url.Parse(c.RedisURI); err == nil && (u.Scheme == "redis" || u.Scheme == "rediss") {
		o.TLS = u.Scheme == "rediss"
		if u.User != nil {
			o.Username = u.User.Username()
			if p, ok := u.User.Password(); ok {
				o.Password = p
			} else if o.Username != "" && o.Password == "" {
				// redis://:secret@host has the password as the user part in
				// some clients' URLs; treat a lone name as a password.
				o.Password, o.Username = o.Username, ""
			}
		}
		if db := strings.Trim(u.Path, "/"); db != "" {
			o.DB, _ = strconv.Atoi(db)
		}
	}
	return o
}

// RedisAddr returns host:port from a host:port or a redis:// URL.
func RedisAddr(uri string) (string, error) {
	if uri == "" {
		return "", errors.New("must not be empty")
	}
	if strings.Contains(uri, "://") {
		u, err := url.Parse(uri)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return "", errors.New("must be host:port or a redis:// or rediss:// URL")
		}
		if db := strings.Trim(u.Path, "/"); db != "" {
			if _, err := strconv.Atoi(db); err != nil {
				return "", errors.New("database in the URL path must be a number")
			}
		}
		host := u.Host
		if u.Port() == "" {
			host += ":6379"
		}
		return host, nil
	}
	// A password has no place in the host:port form: go-redis would dial
	// it as part of the host, and its dial error, which quotes the
	// address, would put the password in the logs.
	if strings.ContainsAny(uri, "@/?#") {
		return "", errors.New("must be host:port or a redis:// or rediss:// URL; a password goes in REDIS_PASSWORD or in the URL (redis://user:password@host:port)")
	}
	if !strings.Contains(uri, ":") {
		return uri + ":6379", nil
	}
	return uri, nil
}

// DecodeWebhookSecrets returns the keys of WEBHOOK_SECRET: one or more
// Standard Webhooks secrets separated by spaces. Two are for a rotation:
// every delivery carries a signature made with each, so that a receiver
// verifies with either while it moves from the old secret to the new.
func DecodeWebhookSecrets(s string) ([][]byte, error) {
	var keys [][]byte
	for i, f := range strings.Fields(s) {
		key, err := DecodeWebhookSecret(f)
		if err != nil {
			return nil, fmt.Errorf("secret %d: %w", i+1, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// DecodeWebhookSecret returns the key bytes of a Standard Webhooks secret
// (whsec_ followed by base64).
func DecodeWebhookSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return nil, errors.New("must start with whsec_")
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(key) < 16 {
		return nil, errors.New("must be whsec_ followed by base64 of at least 16 bytes")
	}
	return key, nil
}

// Redacted returns c with every secret replaced, safe to log.
func (c Config) Redacted() Config {
	mask := func(s string) string {
		if s == "" {
			return ""
		}
		return "REDACTED"
	}
	c.WebhookSecret = mask(c.WebhookSecret)
	c.APIKey = mask(c.APIKey)
	c.RedisPassword = mask(c.RedisPassword)
	c.MongoURI = redact.URL(c.MongoURI)
	c.RabbitURI = redact.URL(c.RabbitURI)
	c.RedisURI = redact.URL(c.RedisURI)
	// A webhook URL may carry a token in its path, query or user part.
	c.WebhookURL = redact.Endpoint(c.WebhookURL)
	return c
}

// LogValue logs the configuration with secrets redacted and durations in
// Go syntax, so that it can be logged as it is.
func (c Config) LogValue() slog.Value {
	r := c.Redacted()
	v := reflect.ValueOf(r)
	attrs := make([]slog.Attr, 0, v.NumField())
	for i := range v.NumField() {
		f := v.Field(i)
		if d, ok := f.Interface().(time.Duration); ok {
			attrs = append(attrs, slog.String(v.Type().Field(i).Name, d.String()))
			continue
		}
		attrs = append(attrs, slog.Any(v.Type().Field(i).Name, f.Interface()))
	}
	return slog.GroupValue(attrs...)
}

type reader struct {
	getenv func(string) string
	err    error
}

func (r *reader) fail(name, v, want string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %q is not %s", name, v, want)
	}
}

func (r *reader) str(name string, dst *string) {
	if v := r.getenv(name); v != "" {
		*dst = v
	}
}

func (r *reader) bool(name string, dst *bool) {
	if v := r.getenv(name); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			r.fail(name, v, "true or false")
			return
		}
		*dst = b
	}
}

func (r *reader) int(name string, dst *int) {
	if v := r.getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			r.fail(name, v, "an integer")
			return
		}
		*dst = n
	}
}

func (r *reader) float(name string, dst *float64) {
	if v := r.getenv(name); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			r.fail(name, v, "a number")
			return
		}
		*dst = f
	}
}

func (r *reader) duration(name string, dst *time.Duration) {
	if v := r.getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			r.fail(name, v, "a duration such as 5s or 4m")
			return
		}
		*dst = d
	}
}
