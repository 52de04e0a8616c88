// Package prom exposes the local processes' metrics in the Prometheus text
// format on GET /metrics. Lambda functions publish the same counts as
// CloudWatch EMF lines instead (shared/metrics), so this package, and
// client_golang with it, stays out of their binaries.
package prom

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/rabbitmq"
)

// Metrics is one process's registry.
type Metrics struct {
	reg         *prometheus.Registry
	events      *prometheus.CounterVec
	timings     *prometheus.HistogramVec
	rateLimited *prometheus.CounterVec
}

// Sources are read at each scrape.
type Sources struct {
	// Backlog returns the number of outbox entries due and the due time of
	// the oldest (zero if none).
	Backlog func(ctx context.Context) (int64, time.Time, error)
	// Breaker returns the webhook circuit breaker's state: "closed",
	// "half-open" or "open". Nil in a process without a processor.
	Breaker func() string
	// Failed returns the number of FAILED (dead-lettered) messages.
	Failed func(ctx context.Context) (int64, error)
	// Dependencies are the status report's checks (MongoDB, RabbitMQ,
	// Redis), run at each scrape: an alert on a dependency needs no JSON.
	Dependencies []httpapi.Check
	// Queues returns what the broker holds in the queue and the
	// dead-letter queue.
	Queues func(ctx context.Context) ([]rabbitmq.QueueDepth, error)
	// Relay returns the end of the relay's last pass that did not fail
	// (zero if none has yet) and how many passes have failed. Nil in a
	// process without a publisher.
	Relay func() (lastPass time.Time, failed int64)
}

// New returns the metrics of one process.
func New(src Sources) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rms_messages_total",
			Help: "Messages by event: accepted, published, delivered, retried, dead_lettered, deferred, recovered, requeued.",
		}, []string{"event"}),
		timings: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rms_latency_seconds",
			Help:    "Latency by kind: webhook (one webhook call), delivery (from acceptance to a 2xx answer), rate_limit_wait (a delivery's wait in place for the outbound rate limit).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"kind"}),
	}
	for _, e := range []string{"accepted", "published", "delivered", "retried", "dead_lettered", "deferred", "recovered", "requeued"} {
		m.events.WithLabelValues(e) // present from the start, at 0
	}
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rms_rate_limited_total",
		Help: "Rate limiting by limit and action: webhook waited (a delivery waited in place for the outbound limit), webhook deferred (a message put back in the outbox by it), api refused (a request answered 429).",
	}, []string{"limit", "action"})
	for _, la := range rateLimitEvents {
		m.rateLimited.WithLabelValues(la[0], la[1])
	}
	m.reg.MustRegister(m.events, m.timings, m.rateLimited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src.Breaker != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rms_circuit_breaker_state",
			Help: "Webhook circuit breaker: 0 closed, 1 half-open, 2 open.",
		}, func() float64 {
			switch src.Breaker() {
			case "open":
				return 2
			case "half-open":
				return 1
			}
			return 0
		}))
	}
	if src.Backlog != nil {
		m.reg.MustRegister(&backlog{read: src.Backlog})
	}
	if src.Failed != nil {
		m.reg.MustRegister(&failed{count: src.Failed})
	}
	if len(src.Dependencies) > 0 {
		m.reg.MustRegister(&dependencies{checks: src.Dependencies})
	}
	if src.Queues != nil {
		m.reg.MustRegister(&queues{read: src.Queues})
	}
	if src.Relay != nil {
		m.reg.MustRegister(&relay{read: src.Relay})
	}
	return m
}

// rateLimitEvents maps the rate limits' events (see processor.Processor's
// and httpapi.RateLimit's Observe) to rms_rate_limited_total's limit and
// action.
var rateLimitEvents = map[string][2]string{
	"webhook_rate_limit_waited":   {"webhook", "waited"},
	"webhook_rate_limit_deferred": {"webhook", "deferred"},
	"api_rate_limited":            {"api", "refused"},
}

// Observe counts n events; it fits the roles' Observe hooks.
func (m *Metrics) Observe(event string, n int) {
	if la, ok := rateLimitEvents[event]; ok {
		m.rateLimited.WithLabelValues(la[0], la[1]).Add(float64(n))
		return
	}
	m.events.WithLabelValues(event).Add(float64(n))
}

// Time records a latency; it fits the processor's Timing hook.
func (m *Metrics) Time(kind string, d time.Duration) {
	m.timings.WithLabelValues(kind).Observe(d.Seconds())
}

// Handler serves the registry. A collector that fails leaves its own series
// out of the scrape, not the whole scrape: an outage is when the other
// series are needed most.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// backlog reads the outbox once per scrape for both of its gauges. When the
// read fails (MongoDB down or slow), the two gauges are left out and
// rms_outbox_stats_up says 0: an invalid metric would fail the whole scrape
// with a 500 that quotes the driver's error to anyone who can reach the
// port, and Prometheus would lose every series for the outage.
type backlog struct {
	read func(ctx context.Context) (int64, time.Time, error)
}

var (
	backlogDesc = prometheus.NewDesc("rms_outbox_backlog", "Outbox entries due and not yet published.", nil, nil)
	ageDesc     = prometheus.NewDesc("rms_outbox_oldest_age_seconds", "How long the oldest due outbox entry has waited.", nil, nil)
	statsUpDesc = prometheus.NewDesc("rms_outbox_stats_up", "1 if this scrape could read the outbox's backlog from MongoDB, 0 if not (then rms_outbox_backlog and rms_outbox_oldest_age_seconds are left out).", nil, nil)
)

func (b *backlog) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- ageDesc
	ch <- statsUpDesc
}

func (b *backlog) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	n, oldest, err := b.read(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(statsUpDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(statsUpDesc, prometheus.GaugeValue, 1)
	age := 0.0
	if !oldest.IsZero() {
		age = max(time.Since(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, age)
}

// scrapeTimeout bounds each read a scrape makes, well inside Prometheus's
// default scrape timeout of 10 s.
const scrapeTimeout = 2 * time.Second

// failed reads the number of FAILED messages at each scrape; like the
// backlog, it is left out of a scrape that cannot read it.
type failed struct {
	count func(ctx context.Context) (int64, error)
}

var failedDesc = prometheus.NewDesc("rms_messages_failed", "Messages FAILED (dead-lettered) and not replayed; left out when MongoDB cannot be read.", nil, nil)

func (f *failed) Describe(ch chan<- *prometheus.Desc) { ch <- failedDesc }

func (f *failed) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	if n, err := f.count(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.GaugeValue, float64(n))
	}
}

// dependencies runs the status checks at each scrape, at once, each within
// scrapeTimeout, guarded as the status report runs them: a check that
// panics or ignores its deadline is a failed check, not a crashed process
// or a hung scrape.
type dependencies struct {
	checks []httpapi.Check
}

var upDesc = prometheus.NewDesc("rms_dependency_up", "1 if the dependency answered this scrape's check, 0 if not.", []string{"dependency"}, nil)

func (d *dependencies) Describe(ch chan<- *prometheus.Desc) { ch <- upDesc }

func (d *dependencies) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range d.checks {
		wg.Go(func() {
			up := 1.0
			if httpapi.RunCheck(ctx, c).Status != httpapi.HealthOK {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, c.Name)
		})
	}
	wg.Wait()
}

// queues reads the broker's queue depths at each scrape; like the backlog,
// they are left out of a scrape that cannot read them
// (rms_dependency_up{dependency="rabbitmq"} tells why).
type queues struct {
	read func(ctx context.Context) ([]rabbitmq.QueueDepth, error)
}

var (
	readyDesc     = prometheus.NewDesc("rms_queue_messages_ready", "Messages waiting in the queue for a consumer (not those delivered and unacknowledged).", []string{"queue"}, nil)
	consumersDesc = prometheus.NewDesc("rms_queue_consumers", "Consumers of the queue.", []string{"queue"}, nil)
)

func (q *queues) Describe(ch chan<- *prometheus.Desc) {
	ch <- readyDesc
	ch <- consumersDesc
}

func (q *queues) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	qs, err := q.read(ctx)
	if err != nil {
		return
	}
	for _, d := range qs {
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, float64(d.Ready), d.Queue)
		ch <- prometheus.MustNewConstMetric(consumersDesc, prometheus.GaugeValue, float64(d.Consumers), d.Queue)
	}
}

// relay reports the publisher's passes: an alert on the time since the last
// good one catches a relay that is stuck or failing, whatever the cause.
type relay struct {
	read func() (time.Time, int64)
}

var (
	lastPassDesc     = prometheus.NewDesc("rms_relay_last_pass_timestamp_seconds", "When the relay's last pass that did not fail ended (Unix time); left out until one has.", nil, nil)
	passFailuresDesc = prometheus.NewDesc("rms_relay_pass_failures_total", "Relay passes that failed.", nil, nil)
)

func (r *relay) Describe(ch chan<- *prometheus.Desc) {
	ch <- lastPassDesc
	ch <- passFailuresDesc
}

func (r *relay) Collect(ch chan<- prometheus.Metric) {
	last, failed := r.read()
	if !last.IsZero() {
		ch <- prometheus.MustNewConstMetric(lastPassDesc, prometheus.GaugeValue, float64(last.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(passFailuresDesc, prometheus.CounterValue, float64(failed))
}
