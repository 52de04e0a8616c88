package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// rawLimits measures what the services alone can do on this machine, with
// the system idle, and puts the end-to-end figure beside the slowest.
func (b *bench) rawLimits(ctx context.Context) {
	r := b.rep
	o := b.opts
	r.section("Raw limits of the stack (same run, system idle)")
	type figure struct{ key, label string }
	groups := []struct {
		figures []figure
		run     func(context.Context) ([]float64, error)
	}{
		{[]figure{
			{"raw_rabbitmq_publish_msgs_per_s", fmt.Sprintf("RabbitMQ confirmed publish, quorum queue, confirms per 100 (%d msgs)", o.RawRabbit)},
			{"raw_rabbitmq_consume_msgs_per_s", "RabbitMQ consume, manual acks, prefetch 100"},
		}, b.rawRabbit},
		{[]figure{
			{"raw_redis_setnx_ops_per_s", fmt.Sprintf("Redis SET NX, 16 goroutines (%d ops)", o.RawRedis)},
		}, b.rawRedis},
		{[]figure{
			{"raw_mongodb_insertmany_docs_per_s", fmt.Sprintf("embedded MongoDB insertMany, batches of 100 (%d docs)", o.RawMongoMany)},
			{"raw_mongodb_insertone_docs_per_s", fmt.Sprintf("embedded MongoDB insertOne, one at a time (%d docs)", o.RawMongoOne)},
			{"raw_mongodb_findone_by_id_docs_per_s", fmt.Sprintf("embedded MongoDB findOne by _id among %d docs (not a target's base)", o.RawMongoMany)},
		}, b.rawMongo},
	}
	slowest, slowestKey := 0.0, ""
	for _, g := range groups {
		if ctx.Err() != nil {
			return
		}
		b.logf("raw: %s", g.figures[0].label)
		vals, err := g.run(ctx)
		for i, f := range g.figures {
			if err != nil {
				r.set(f.key, nil)
				continue
			}
			r.set(f.key, vals[i])
			r.line(f.label, fmt.Sprintf("%.0f /s", vals[i]))
			if f.key == "raw_mongodb_findone_by_id_docs_per_s" {
				continue
			}
			if slowestKey == "" || vals[i] < slowest {
				slowest, slowestKey = vals[i], f.key
			}
		}
		if err != nil {
			r.fail(g.figures[0].label, err)
		}
	}
	if slowestKey == "" {
		return
	}
	e2e, _ := r.vals["e2e_msgs_per_s"].(float64)
	share := 100 * e2e / slowest
	r.set("raw_slowest", slowestKey)
	r.set("e2e_share_of_slowest_raw_pct", share)
	r.line("end to end as a share of the slowest ("+strings.TrimSuffix(strings.TrimPrefix(slowestKey, "raw_"), "_per_s")+")", fmt.Sprintf("%.1f %%", share))
}

// rawRabbit publishes RawRabbit persistent 300-byte messages to a quorum
// queue of its own, waiting for the confirms of each 100, then consumes
// them with manual acks and prefetch 100.
func (b *bench) rawRabbit(ctx context.Context) ([]float64, error) {
	pub, cons, err := b.rawRabbitRates(ctx)
	return []float64{pub, cons}, err
}

func (b *bench) rawRabbitRates(ctx context.Context) (pub, cons float64, err error) {
	n := b.opts.RawRabbit
	conn, err := amqp.DialConfig(b.rabbitURI(), amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	q := b.names.rawQueue()
	defer deleteQueues(context.WithoutCancel(ctx), b.rabbitURI(), "", q)
	ch, err := conn.Channel()
	if err != nil {
		return 0, 0, err
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return 0, 0, fmt.Errorf("declare %s: %w", q, err)
	}
	if err := ch.Confirm(false); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	body := []byte(`{"id":"` + strings.Repeat("x", 280) + `","seq":0}`)
	start := time.Now()
	for sent := 0; sent < n; {
		batch := make([]*amqp.DeferredConfirmation, 0, 100)
		for ; len(batch) < 100 && sent < n; sent++ {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body})
			if err != nil {
				return 0, 0, fmt.Errorf("publish: %w", err)
			}
			batch = append(batch, dc)
		}
		for _, dc := range batch {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return 0, 0, fmt.Errorf("confirm: %w", err)
			}
			if !ok {
				return 0, 0, errors.New("the broker nacked a publish")
			}
		}
	}
	pub = rate(n, time.Since(start))

	cch, err := conn.Channel()
	if err != nil {
		return pub, 0, err
	}
	if err := cch.Qos(100, 0, false); err != nil {
		return pub, 0, err
	}
	start = time.Now()
	deliveries, err := cch.ConsumeWithContext(ctx, q, "", false, false, false, false, nil)
	if err != nil {
		return pub, 0, fmt.Errorf("consume: %w", err)
	}
	for got := 0; got < n; got++ {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return pub, 0, errors.New("consumer channel closed")
			}
			if err := d.Ack(false); err != nil {
				return pub, 0, fmt.Errorf("ack: %w", err)
			}
		case <-ctx.Done():
			return pub, 0, fmt.Errorf("consumed %d of %d: %w", got, n, ctx.Err())
		}
	}
	cons = rate(n, time.Since(start))
	_ = cch.Close()
	return pub, cons, nil
}

// rawRedis runs RawRedis SET NX EX commands from 16 goroutines, one key
// each, under the run's key prefix.
func (b *bench) rawRedis(ctx context.Context) ([]float64, error) {
	n := b.opts.RawRedis
	c := redis.NewClient(&redis.Options{Addr: b.redisAddr(), PoolSize: 32})
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	prefix := b.names.redisPrefix + "raw:"
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := c.SetNX(ctx, fmt.Sprintf("%s%d", prefix, i), "1", time.Minute).Err(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	deleteKeys(context.WithoutCancel(ctx), b.redisAddr(), prefix)
	if firstErr != nil {
		return nil, firstErr
	}
	return []float64{rate(n, took)}, nil
}

// rawMongo inserts documents shaped like messages into a scratch database
// of the embedded MongoDB, in batches of 100 and one at a time, and reads
// them back one at a time by _id.
func (b *bench) rawMongo(ctx context.Context) ([]float64, error) {
	c, err := mongo.Connect(options.Client().ApplyURI(b.stack.mongoURI).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Disconnect(context.WithoutCancel(ctx)) }()
	db := c.Database(b.names.scratchDB())
	defer func() { _ = db.Drop(context.WithoutCancel(ctx)) }()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	id := func(i int) string { return fmt.Sprintf("%s-%08d", b.names.id, i) }
	doc := func(i int) bson.D {
		now := time.Now().UTC()
		return bson.D{
			{Key: "_id", Value: id(i)},
			{Key: "to", Value: fmt.Sprintf("+90557%07d", i)},
			{Key: "content", Value: "Benchmark message: the quick brown fox jumps over the lazy dog"},
			{Key: "status", Value: "UNSENT"}, {Key: "attempts", Value: 0}, {Key: "seq", Value: 0},
			{Key: "createdAt", Value: now}, {Key: "updatedAt", Value: now},
		}
	}

	n := b.opts.RawMongoMany
	many := db.Collection("many")
	start := time.Now()
	for i := 0; i < n; i += 100 {
		batch := make([]any, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			batch = append(batch, doc(j))
		}
		if _, err := many.InsertMany(ctx, batch); err != nil {
			return nil, fmt.Errorf("insertMany: %w", err)
		}
	}
	manyRate := rate(n, time.Since(start))

	k := b.opts.RawMongoOne
	one := db.Collection("one")
	start = time.Now()
	for i := range k {
		if _, err := one.InsertOne(ctx, doc(i)); err != nil {
			return nil, fmt.Errorf("insertOne: %w", err)
		}
	}
	oneRate := rate(k, time.Since(start))

	// The embedded server adds the _id index its lookups use within a
	// second of a collection's creation (local/embedded/idindex.go); by now
	// "many" has it.
	start = time.Now()
	for i := range k {
		if err := many.FindOne(ctx, bson.D{{Key: "_id", Value: id(i * 7919 % n)}}).Err(); err != nil {
			return nil, fmt.Errorf("findOne: %w", err)
		}
	}
	findRate := rate(k, time.Since(start))
	return []float64{manyRate, oneRate, findRate}, nil
}
