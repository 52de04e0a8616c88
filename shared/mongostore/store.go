// Package mongostore keeps messages, the outbox, idempotency records and the
// publisher's scheduler state in MongoDB. It implements outbox.Store and
// processor.Store, and works on MongoDB, Atlas, Amazon DocumentDB and the
// embedded FerretDB of local mode (local/embedded).
//
// FerretDB v1 with its SQLite backend shapes the design; measured facts that
// every change here must respect:
//
//   - Only an insert under a unique _id is atomic. A conditional update is a
//     read followed by a write, and two of them can interleave. Correctness
//     rests on _id inserts (one outbox document per dispatch, the
//     idempotency record) and on the callers' designs (see outbox.Store);
//     the conditional filters used here still shrink races to microseconds
//     and are exact on a real MongoDB.
//   - Only _id equality reaches SQLite. Every other filter and every sort is
//     a full scan decoded in Go. So hot paths address documents by _id; many
//     documents are changed with one bulkWrite of per-_id models, never with
//     {_id: {$in: [...]}} (a full scan). Only the outbox, which holds pending
//     and in-flight entries and never history, is scanned by other fields.
//   - TTL indexes are not implemented (EnsureIndexes ignores that error), so
//     the caller enforces idempotency expiry in code.
//   - $push ignores $slice: the array grows anyway (see RecordOutcome).
//   - Updates with an aggregation pipeline and findAndModify with a
//     projection are not implemented.
package mongostore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/outbox"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/processor"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/redact"
)

var (
	_ outbox.Store    = (*Store)(nil)
	_ processor.Store = (*Store)(nil)
)

// Collection names.
const (
	messagesColl    = "messages"
	outboxColl      = "outbox"
	inflightColl    = "outbox_inflight"
	idempotencyColl = "idempotency"
	schedulerColl   = "scheduler"

	// schedulerID is the _id of the one scheduler document.
	schedulerID = "publisher"
)

// Defaults for what the URI does not set. They are short because a Lambda
// function has seconds, not minutes, and a store that cannot be reached
// should fail fast with a clear error.
const (
	defaultAppName                = "reliable-messaging-system"
	defaultConnectTimeout         = 10 * time.Second
	defaultServerSelectionTimeout = 10 * time.Second
	openTimeout                   = 15 * time.Second

	// DefaultListLimit is the page size of ListMessages when Filter.Limit is 0.
	DefaultListLimit = 50
	// IdempotencyTTL is how long an idempotency key is remembered: the
	// service checks a record's age against it, and a real MongoDB's TTL
	// index deletes records older. A change here needs the index changed
	// too (collMod): creating it again with another expiry fails.
	IdempotencyTTL = 24 * time.Hour
)

// Store is a MongoDB store. It is safe for concurrent use.
type Store struct {
	client   *mongo.Client
	messages *mongo.Collection
	outbox   *mongo.Collection
	// inflight holds the outbox entries the API's fast path stored as
	// published: they wait only for their outcome (or the stale sweep), so
	// they are kept apart from the entries the relay scans every pass. On
	// FerretDB every scan decodes the whole collection; with the two mixed,
	// each relay pass decoded every message in flight.
	inflight    *mongo.Collection
	idempotency *mongo.Collection
	scheduler   *mongo.Collection
	// ferret is true on FerretDB (the embedded MongoDB), which pushes a
	// filter down to SQLite's _id index only when the filter is _id
	// equality and nothing else: {_id: x, seq: 0} is a full scan decoded in
	// Go (measured: 0.1 ms by _id alone, 4 ms with one more condition at
	// 3,200 documents, growing with the collection). On FerretDB the hot
	// paths therefore filter by _id alone and check conditions in Go. That
	// costs nothing in correctness: FerretDB's conditional updates are not
	// atomic anyway (see package outbox), and a real MongoDB keeps the
	// atomic conditional forms.
	ferret bool
}

// ErrBadURI marks Open's error for a URI the driver refuses (it parses and
// checks the URI before connecting): connecting again will not help.
var ErrBadURI = errors.New("the driver refuses the URI")

// ErrRefused marks Open's error for a server that answered and refused the
// URI's credentials (AuthenticationFailed): waiting will not change its
// answer.
var ErrRefused = errors.New("the server refuses the credentials")

// codeAuthenticationFailed is the server's error code for refused
// credentials.
const codeAuthenticationFailed = 18

// refused reports whether err is the server's refusal of the credentials.
func refused(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(codeAuthenticationFailed)
}

// Open connects to the MongoDB at uri, pings it and returns a store using
// database. Retryable writes follow the URI (retryWrites=false for Amazon
// DocumentDB). Errors name the server without the URI's password.
func Open(ctx context.Context, uri, database string) (*Store, error) {
	if database == "" {
		return nil, errors.New("open mongodb: database name is empty")
	}
	shown := redact.URL(uri)
	opts := clientOptions(uri)
	client, err := mongo.Connect(opts)
	if err != nil {
		// A mongodb+srv:// URI is resolved here: a DNS lookup that
		// failed may well succeed next time.
		if _, dns := errors.AsType[*net.DNSError](err); dns {
			return nil, scrub(fmt.Errorf("open mongodb %s: %w", shown, err), uri)
		}
		return nil, scrub(fmt.Errorf("open mongodb %s: %w: %w", shown, ErrBadURI, err), uri)
	}
	pingCtx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	if err := client.Ping(pingCtx, nil); err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		if refused(err) {
			return nil, scrub(fmt.Errorf("ping mongodb %s: %w: %w", shown, ErrRefused, err), uri)
		}
		return nil, scrub(fmt.Errorf("ping mongodb %s: %w", shown, err), uri)
	}
	db := client.Database(database)
	var info bson.M
	if err := db.RunCommand(pingCtx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, scrub(fmt.Errorf("buildInfo of mongodb %s: %w", shown, err), uri)
	}
	_, ferret := info["ferretdbVersion"]
	return &Store{
		client:      client,
		messages:    db.Collection(messagesColl),
		outbox:      db.Collection(outboxColl),
		inflight:    db.Collection(inflightColl),
		idempotency: db.Collection(idempotencyColl),
		scheduler:   db.Collection(schedulerColl),
		ferret:      ferret,
	}, nil
}

// clientOptions are the URI's options with the defaults of this store.
//
// Reads always go to the primary, whatever the URI asks: the processor reads
// a message milliseconds after the API wrote it, and a replica may not have
// it yet (DocumentDB's replicas lag up to about 100 ms), which would make a
// fresh message look unknown or a finished one look unfinished.
//
// Writes wait for a majority of the replica set unless the URI sets w: an
// accepted message must survive a failover. MongoDB 5 and later default to
// majority already, but not with an arbiter among too few data-bearing
// members, nor before 5.0; there w:1 lets a rollback drop a write the client
// was told had succeeded.
func clientOptions(uri string) *options.ClientOptions {
	opts := options.Client().ApplyURI(uri)
	if opts.AppName == nil {
		opts.SetAppName(defaultAppName)
	}
	if opts.ConnectTimeout == nil {
		opts.SetConnectTimeout(defaultConnectTimeout)
	}
	if opts.ServerSelectionTimeout == nil {
		opts.SetServerSelectionTimeout(defaultServerSelectionTimeout)
	}
	opts.SetReadPreference(readpref.Primary())
	switch {
	case opts.WriteConcern == nil:
		opts.SetWriteConcern(writeconcern.Majority())
	case opts.WriteConcern.W == nil:
		// journal=true alone makes a write concern without w.
		wc := *opts.WriteConcern
		wc.W = writeconcern.Majority().W
		opts.SetWriteConcern(&wc)
	}
	return opts
}

// byID is a filter on _id alone: the one form FerretDB answers from an
// index.
func byID(id string) bson.D { return bson.D{{Key: "_id", Value: id}} }

// Close disconnects from the server.
func (s *Store) Close(ctx context.Context) error {
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("close mongodb: %w", err)
	}
	return nil
}

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, nil); err != nil {
		return fmt.Errorf("ping mongodb: %w", err)
	}
	return nil
}

// codeNotImplemented is the server error FerretDB returns for features it
// lacks, TTL indexes among them.
const codeNotImplemented = 238

// The server's errors for dropping an index, or from a collection, that is
// not there.
const (
	codeNamespaceNotFound = 26
	codeIndexNotFound     = 27
)

// EnsureIndexes creates the indexes a real MongoDB needs. Creating an index
// that exists with the same keys and options is a no-op, so it is safe to
// call at every start. FerretDB creates the ordinary indexes but uses none of
// them (only _id equality reaches SQLite), and it answers NotImplemented for
// the TTL indexes: that error is ignored, because the caller checks an
// idempotency record's age in code and deletes expired ones itself, and the
// guards, written only while Redis is down, are few.
func (s *Store) EnsureIndexes(ctx context.Context) error {
	indexes := []struct {
		coll  *mongo.Collection
		model mongo.IndexModel
		ttl   bool
	}{
		// ListMessages with a status filter, newest first.
		{coll: s.messages, model: mongo.IndexModel{
			Keys:    bson.D{{Key: "status", Value: 1}, {Key: "_id", Value: -1}},
			Options: options.Index().SetName("status_1__id_-1"),
		}},
		// DueOutbox (publishedAt null, dueAt <= now, in dueAt and _id
		// order: with _id in the index, a batch reads its entries in
		// order instead of sorting every due entry, which a backlog after
		// an outage would make slow) and StaleOutbox (publishedAt order).
		{coll: s.outbox, model: mongo.IndexModel{
			Keys:    bson.D{{Key: "publishedAt", Value: 1}, {Key: "dueAt", Value: 1}, {Key: "_id", Value: 1}},
			Options: options.Index().SetName("publishedAt_1_dueAt_1__id_1"),
		}},
		// StaleOutbox over the fast path's entries.
		{coll: s.inflight, model: mongo.IndexModel{
			Keys:    bson.D{{Key: "publishedAt", Value: 1}},
			Options: options.Index().SetName("publishedAt_1"),
		}},
		// ListFailed, oldest first, for the replays.
		{coll: s.failed(), model: mongo.IndexModel{
			Keys:    bson.D{{Key: "failedAt", Value: 1}},
			Options: options.Index().SetName("failedAt_1"),
		}},
		// The guards written while Redis was down, once no one reads
		// them.
		{coll: s.guards(), ttl: true, model: mongo.IndexModel{
			Keys:    bson.D{{Key: "purgeAt", Value: 1}},
			Options: options.Index().SetName("purgeAt_ttl").SetExpireAfterSeconds(0),
		}},
		{coll: s.idempotency, ttl: true, model: mongo.IndexModel{
			Keys: bson.D{{Key: "createdAt", Value: 1}},
			Options: options.Index().SetName("createdAt_ttl").
				SetExpireAfterSeconds(int32(IdempotencyTTL / time.Second)),
		}},
	}
	// One createIndexes per index: FerretDB fails a whole command that
	// contains a TTL index.
	for _, ix := range indexes {
		_, err := ix.coll.Indexes().CreateOne(ctx, ix.model)
		var ce mongo.CommandError
		if ix.ttl && errors.As(err, &ce) && ce.Code == codeNotImplemented {
			continue
		}
		if err != nil {
			return fmt.Errorf("ensure index %s on %s: %w", *indexName(ix.model), ix.coll.Name(), err)
		}
	}
	// Indexes that one above replaced: every write would keep them up to
	// date for nothing.
	for _, old := range []struct {
		coll *mongo.Collection
		name string
	}{{s.outbox, "publishedAt_1_dueAt_1"}} {
		err := old.coll.Indexes().DropOne(ctx, old.name)
		var ce mongo.CommandError
		if err != nil && !(errors.As(err, &ce) && (ce.Code == codeIndexNotFound || ce.Code == codeNamespaceNotFound)) {
			return fmt.Errorf("drop superseded index %s on %s: %w", old.name, old.coll.Name(), err)
		}
	}
	return nil
}

func indexName(m mongo.IndexModel) *string {
	var o options.IndexOptions
	for _, set := range m.Options.List() {
		_ = set(&o)
	}
	return o.Name
}

// CreateMessage inserts e, then m. A duplicate e is the same dispatch and is
// fine; a duplicate m is an ECONFLICT error. The order is deliberate: see
// outbox.Store. There are no transactions on FerretDB to make it one write.
func (s *Store) CreateMessage(ctx context.Context, m message.Message, e message.OutboxEntry) error {
	return s.CreateMessages(ctx, []outbox.NewMessage{{Message: m, Entry: e}})[0]
}

// GetMessage returns the message with this ID, or message.ErrNotFound.
func (s *Store) GetMessage(ctx context.Context, id string) (message.Message, error) {
	var m message.Message
	err := s.messages.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return message.Message{}, message.ErrNotFound
	}
	if err != nil {
		return message.Message{}, fmt.Errorf("get message: %w", err)
	}
	return m, nil
}

// ListMessages returns a page of messages, newest first. IDs are UUIDv7
// strings, so descending _id order is creation order, newest first, and the
// cursor is the last ID of the previous page. Deliveries are left out.
//
// On a real MongoDB the {status, _id} index serves this; on FerretDB every
// page is a full scan of messages sorted in Go, acceptable for local mode
// only.
func (s *Store) ListMessages(ctx context.Context, f message.Filter) (message.Page, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	filter := bson.D{}
	if f.Status != "" {
		filter = append(filter, bson.E{Key: "status", Value: f.Status})
	}
	if f.Cursor != "" {
		filter = append(filter, bson.E{Key: "_id", Value: bson.D{{Key: "$lt", Value: f.Cursor}}})
	}
	// One more than the page tells whether there is a next page.
	opts := options.Find().
		SetSort(bson.D{{Key: "_id", Value: -1}}).
		SetLimit(int64(limit) + 1).
		SetProjection(bson.D{{Key: "deliveries", Value: 0}})
	cur, err := s.messages.Find(ctx, filter, opts)
	if err != nil {
		return message.Page{}, fmt.Errorf("list messages: %w", err)
	}
	items := make([]message.Message, 0, limit+1)
	if err := cur.All(ctx, &items); err != nil {
		return message.Page{}, fmt.Errorf("list messages: %w", err)
	}
	page := message.Page{Items: items}
	if len(items) > limit {
		page.Items = items[:limit]
		page.NextCursor = page.Items[limit-1].ID
	}
	return page, nil
}

// PutIdempotencyRecord inserts r under its key, the one atomic write
// FerretDB offers. If the key exists it returns the stored record.
func (s *Store) PutIdempotencyRecord(ctx context.Context, r message.IdempotencyRecord) (message.IdempotencyRecord, bool, error) {
	// The existing record can be deleted (expired) between the failed
	// insert and the read; then the insert is tried again.
	for range 3 {
		_, err := s.idempotency.InsertOne(ctx, r)
		if err == nil {
			return r, true, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return message.IdempotencyRecord{}, false, fmt.Errorf("put idempotency record: %w", err)
		}
		var existing message.IdempotencyRecord
		err = s.idempotency.FindOne(ctx, bson.D{{Key: "_id", Value: r.Key}}).Decode(&existing)
		if err == nil {
			return existing, false, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return message.IdempotencyRecord{}, false, fmt.Errorf("read idempotency record: %w", err)
		}
	}
	return message.IdempotencyRecord{}, false, errors.New("put idempotency record: key keeps appearing and vanishing")
}

// DeleteIdempotencyRecord gives back the key of a request that was not
// accepted: it removes the record under key if it still names messageID.
func (s *Store) DeleteIdempotencyRecord(ctx context.Context, key, messageID string) error {
	filter, ok, err := s.idempotencyFilter(ctx, key, messageID)
	if err != nil || !ok {
		return err
	}
	if _, err := s.idempotency.DeleteOne(ctx, filter); err != nil {
		return fmt.Errorf("delete idempotency record: %w", err)
	}
	return nil
}

// ExpireIdempotencyRecord removes an expired record under key if it still
// names messageID: a record a concurrent request has put in its place
// since the caller read it stays. On a real MongoDB that is one atomic
// delete. On FerretDB, whose extra filter conditions are full scans and
// whose deletes are not atomic with a read, the record is read by _id and
// deleted by _id; two callers that read the same expired record would
// each delete it, the second taking away the record the first has put in
// its place, and both would create a message under the key. So a caller
// must first win a unique insert named after the record it read (the one
// atomic write FerretDB offers); a loser gets message.ErrKeyInUse.
func (s *Store) ExpireIdempotencyRecord(ctx context.Context, key, messageID string) error {
	filter, ok, err := s.idempotencyFilter(ctx, key, messageID)
	if err != nil || !ok {
		return err
	}
	if s.ferret {
		if _, err := s.takeOver(ctx, "idempotency-expired:"+messageID+":"+key, message.ErrKeyInUse); err != nil {
			return err
		}
	}
	if _, err := s.idempotency.DeleteOne(ctx, filter); err != nil {
		return fmt.Errorf("delete idempotency record: %w", err)
	}
	return nil
}

// idempotencyFilter returns the filter of a write to the record under key
// if it still names messageID, and ok false if it does not. On a real
// MongoDB the filter checks messageId itself, in the write; on FerretDB,
// where that condition would be a full scan, the record is read by _id
// here and the filter is its _id alone.
func (s *Store) idempotencyFilter(ctx context.Context, key, messageID string) (filter bson.D, ok bool, err error) {
	if !s.ferret {
		return bson.D{{Key: "_id", Value: key}, {Key: "messageId", Value: messageID}}, true, nil
	}
	var cur message.IdempotencyRecord
	err = s.idempotency.FindOne(ctx, byID(key)).Decode(&cur)
	if errors.Is(err, mongo.ErrNoDocuments) || (err == nil && cur.MessageID != messageID) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read idempotency record: %w", err)
	}
	return byID(key), true, nil
}

// AbandonIdempotencyRecord marks the record under key abandoned if it
// still names messageID. On FerretDB the record is read by _id and updated
// by _id (see idempotencyFilter): a record put in its place between the
// two may be marked instead, which only lets a repeat take that key over
// sooner, under that record's own message id, which yields one message all
// the same.
func (s *Store) AbandonIdempotencyRecord(ctx context.Context, key, messageID string) error {
	filter, ok, err := s.idempotencyFilter(ctx, key, messageID)
	if err != nil || !ok {
		return err
	}
	if _, err := s.idempotency.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{{Key: "abandoned", Value: true}}}}); err != nil {
		return fmt.Errorf("abandon idempotency record: %w", err)
	}
	return nil
}

// A takeover marker is a guard document under a unique _id that one
// caller at a time wins by inserting it (see ExpireIdempotencyRecord and
// ClaimReplay). A marker not marked done stands for takeoverStale: its
// caller's writes take milliseconds, and one older belongs to a caller
// that died or failed midway, whose work may be taken over. One marked
// done stands until a real MongoDB purges it, guardKeep later; FerretDB,
// which has no TTL indexes, keeps it, a few bytes each.
type takeoverMarker struct {
	ID      string    `bson:"_id"`
	At      time.Time `bson:"at"`
	Done    bool      `bson:"done,omitempty"`
	PurgeAt time.Time `bson:"purgeAt"`
}

// takeoverStale is the age after which a takeover marker not done no
// longer stands.
const takeoverStale = 30 * time.Second

// takeOver inserts the marker id, or replaces one not done and older than
// takeoverStale, if it wins that takeover (winTakeover); busy if a marker
// that stands is there, or another caller took it over. It returns the
// marker's time, which settleTakeover needs.
func (s *Store) takeOver(ctx context.Context, id string, busy error) (time.Time, error) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	marker := takeoverMarker{ID: id, At: now, PurgeAt: now.Add(guardKeep)}
	_, err := s.guards().InsertOne(ctx, marker)
	if err == nil {
		return now, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return now, fmt.Errorf("take over %s: %w", id, err)
	}
	var cur takeoverMarker
	if err := s.guards().FindOne(ctx, byID(id)).Decode(&cur); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return now, busy // gone meanwhile: a repeat sorts it out
		}
		return now, fmt.Errorf("take over %s: %w", id, err)
	}
	if cur.Done || now.Sub(cur.At) < takeoverStale {
		return now, busy
	}
	if beforeTakeover != nil {
		beforeTakeover()
	}
	won, err := s.winTakeover(ctx, id, strconv.FormatInt(cur.At.UnixMilli(), 10))
	if err != nil {
		return now, err
	}
	if !won {
		return now, busy
	}
	// Won, but perhaps late: a caller that stalled between its read and its
	// win may find the generation it read taken over and settled since
	// (a replay made, its marker done). Only the marker as read is replaced:
	// on MongoDB by the filter, on FerretDB (which would scan for it) by a
	// read by _id.
	filter := byID(id)
	if s.ferret {
		var again takeoverMarker
		if err := s.guards().FindOne(ctx, byID(id)).Decode(&again); err != nil || again.Done || !again.At.Equal(cur.At) {
			return now, busy
		}
	} else {
		filter = append(filter, bson.E{Key: "at", Value: cur.At}, bson.E{Key: "done", Value: bson.D{{Key: "$ne", Value: true}}})
	}
	res, err := s.guards().ReplaceOne(ctx, filter, marker)
	if err != nil {
		return now, fmt.Errorf("take over %s: %w", id, err)
	}
	if res.MatchedCount == 0 {
		return now, busy
	}
	return now, nil
}

// beforeTakeover, if set (by tests), runs in takeOver between its read of
// a stale marker and its bid to take it over.
var beforeTakeover func()

// ClaimReplay makes the caller the one replay of dispatch seq of message
// id, or returns message.ErrReplayed if another request is replaying it or
// has replayed it. On the embedded MongoDB a replay's read-then-write is
// not atomic, and every one of several replays at once would be told it
// had made the replay; on a real MongoDB the losers' writes were refused,
// but only after each had put the next dispatch's entry back to pending.
// settle ends the claim: the marker of a replay made is marked done, so
// that a request that read the message before the replay, however long
// ago, cannot make it again; that of a replay that failed is dropped, so
// that the client can try again at once.
func (s *Store) ClaimReplay(ctx context.Context, id string, seq int) (settle func(ctx context.Context, replayed bool) error, err error) {
	marker := fmt.Sprintf("replay:%s:%d", id, seq)
	at, err := s.takeOver(ctx, marker, message.ErrReplayed)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, replayed bool) error {
		// Only this caller's marker: one that outlived takeoverStale may
		// have been taken over since.
		mine := byID(marker)
		if !s.ferret {
			mine = append(mine, bson.E{Key: "at", Value: at})
		}
		if replayed {
			if _, err := s.guards().UpdateOne(ctx, mine, bson.D{{Key: "$set", Value: bson.D{{Key: "done", Value: true}}}}); err != nil {
				return fmt.Errorf("mark replay %s done: %w", marker, err)
			}
			return nil
		}
		if _, err := s.guards().DeleteOne(ctx, mine); err != nil {
			return fmt.Errorf("drop replay %s: %w", marker, err)
		}
		return nil
	}, nil
}

// DueOutbox returns up to limit unpublished entries due at or before now,
// earliest first. On FerretDB this is a full scan of the outbox, which is
// fine only because the outbox holds pending and in-flight work alone.
func (s *Store) DueOutbox(ctx context.Context, now time.Time, limit int) ([]message.OutboxEntry, error) {
	if limit <= 0 {
		return nil, nil // a limit of 0 would mean "all" to the server
	}
	// publishedAt: null matches a missing field too.
	filter := bson.D{
		{Key: "publishedAt", Value: nil},
		{Key: "dueAt", Value: bson.D{{Key: "$lte", Value: now}}},
	}
	opts := options.Find().SetSort(bson.D{{Key: "dueAt", Value: 1}, {Key: "_id", Value: 1}}).SetLimit(int64(limit))
	entries, err := findEntries(ctx, s.outbox, filter, opts)
	if err != nil {
		return nil, fmt.Errorf("due outbox: %w", err)
	}
	return entries, nil
}

// StaleOutbox returns up to limit entries published before before, oldest
// first, from the outbox and the fast path's in-flight entries. A date
// comparison never matches a missing or null publishedAt.
func (s *Store) StaleOutbox(ctx context.Context, before time.Time, limit int) ([]message.OutboxEntry, error) {
	if limit <= 0 {
		return nil, nil
	}
	filter := bson.D{{Key: "publishedAt", Value: bson.D{{Key: "$lte", Value: before}}}}
	// publishedAt alone, which both collections' indexes give in order:
	// entries published together tie, and any of them will do.
	opts := options.Find().SetSort(bson.D{{Key: "publishedAt", Value: 1}}).SetLimit(int64(limit))
	var all []message.OutboxEntry
	for _, c := range []*mongo.Collection{s.outbox, s.inflight} {
		entries, err := findEntries(ctx, c, filter, opts)
		if err != nil {
			return nil, fmt.Errorf("stale outbox: %w", err)
		}
		all = append(all, entries...)
	}
	slices.SortFunc(all, func(a, b message.OutboxEntry) int {
		if c := a.PublishedAt.Compare(*b.PublishedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	if len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

func findEntries(ctx context.Context, c *mongo.Collection, filter bson.D, opts *options.FindOptionsBuilder) ([]message.OutboxEntry, error) {
	cur, err := c.Find(ctx, filter, opts)
	if err != nil {
		return nil, err
	}
	var entries []message.OutboxEntry
	if err := cur.All(ctx, &entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// MarkProcessing moves the message of each entry from UNSENT to PROCESSING
// if it is still at the entry's Seq, and returns the IDs of the messages
// that do not exist or are at an earlier Seq than their entry. One
// unordered bulkWrite of per-_id updates: each reaches SQLite by _id on
// FerretDB, where the condition on seq and status is then checked in Go,
// not atomically, on the message read first. A real MongoDB checks
// atomically, and one find by _id tells the messages not ready.
func (s *Store) MarkProcessing(ctx context.Context, entries []message.OutboxEntry, at time.Time) ([]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: "status", Value: message.StatusProcessing}, {Key: "updatedAt", Value: at}}},
		{Key: "$unset", Value: bson.D{{Key: "nextAttemptAt", Value: ""}}},
	}
	var notReady []string
	models := make([]mongo.WriteModel, 0, len(entries))
	for _, e := range entries {
		filter := bson.D{
			{Key: "_id", Value: e.MessageID},
			{Key: "seq", Value: e.Seq},
			{Key: "status", Value: message.StatusUnsent},
		}
		if s.ferret {
			// Check the condition here and write by _id alone.
			var cur struct {
				Seq    int            `bson:"seq"`
				Status message.Status `bson:"status"`
			}
			err := s.messages.FindOne(ctx, byID(e.MessageID)).Decode(&cur)
			if errors.Is(err, mongo.ErrNoDocuments) {
				notReady = append(notReady, e.MessageID)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("mark messages processing: %w", err)
			}
			if cur.Seq < e.Seq {
				notReady = append(notReady, e.MessageID)
				continue
			}
			if cur.Seq != e.Seq || cur.Status != message.StatusUnsent {
				continue
			}
			filter = byID(e.MessageID)
		}
		models = append(models, mongo.NewUpdateOneModel().SetFilter(filter).SetUpdate(update))
	}
	if err := bulkWrite(ctx, s.messages, models); err != nil {
		return nil, fmt.Errorf("mark messages processing: %w", err)
	}
	if s.ferret {
		return notReady, nil
	}
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.MessageID
	}
	cur, err := s.messages.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
		options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}, {Key: "seq", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mark messages processing: %w", err)
	}
	var found []struct {
		ID  string `bson:"_id"`
		Seq int    `bson:"seq"`
	}
	if err := cur.All(ctx, &found); err != nil {
		return nil, fmt.Errorf("mark messages processing: %w", err)
	}
	seqs := make(map[string]int, len(found))
	for _, f := range found {
		seqs[f.ID] = f.Seq
	}
	for _, e := range entries {
		if seq, ok := seqs[e.MessageID]; !ok || seq < e.Seq {
			notReady = append(notReady, e.MessageID)
		}
	}
	return notReady, nil
}

// MarkPublished sets publishedAt on these entries, each if it is still the
// one read: an entry written again since under its key (a replay tried
// again, an Idempotency-Key taken over) has another createdAt and stays
// due, for the relay to publish in its turn. A missing entry matches
// nothing and is no error. An entry published again gets the later time,
// which is right. Per-_id updates, for the reason on Store.ferret; on
// FerretDB, where the createdAt condition would make each update a full
// scan, the entries are read in one query first (one scan of the pending
// entries, as DueOutbox makes every pass) and written by _id alone.
func (s *Store) MarkPublished(ctx context.Context, entries []message.OutboxEntry, at time.Time) error {
	if len(entries) == 0 {
		return nil
	}
	var stored map[string]bson.DateTime
	if s.ferret {
		keys := make([]string, len(entries))
		for i, e := range entries {
			keys[i] = e.Key
		}
		cur, err := s.outbox.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: keys}}}},
			options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}, {Key: "createdAt", Value: 1}}))
		if err != nil {
			return fmt.Errorf("mark outbox published: %w", err)
		}
		var found []struct {
			Key       string        `bson:"_id"`
			CreatedAt bson.DateTime `bson:"createdAt"`
		}
		if err := cur.All(ctx, &found); err != nil {
			return fmt.Errorf("mark outbox published: %w", err)
		}
		stored = make(map[string]bson.DateTime, len(found))
		for _, f := range found {
			stored[f.Key] = f.CreatedAt
		}
	}
	update := bson.D{{Key: "$set", Value: bson.D{{Key: "publishedAt", Value: at}}}}
	models := make([]mongo.WriteModel, 0, len(entries))
	for _, e := range entries {
		filter := bson.D{{Key: "_id", Value: e.Key}, {Key: "createdAt", Value: e.CreatedAt}}
		if s.ferret {
			// As stored: BSON dates keep milliseconds.
			if c, ok := stored[e.Key]; !ok || c != bson.NewDateTimeFromTime(e.CreatedAt) {
				continue
			}
			filter = byID(e.Key)
		}
		models = append(models, mongo.NewUpdateOneModel().SetFilter(filter).SetUpdate(update))
	}
	if err := bulkWrite(ctx, s.outbox, models); err != nil {
		return fmt.Errorf("mark outbox published: %w", err)
	}
	return nil
}

// maxBulkUpdates bounds the update statements of one command. FerretDB
// v1.24 (SQLite) holds one of its 100 pooled SQLite connections per update
// statement until the command ends: measured here, a bulkWrite of 99
// updates took 65 ms and one of 100 never answered. Chunks stay far below
// that, so that several commands in flight at once cannot exhaust the pool
// either. A real MongoDB does not care.
const maxBulkUpdates = 25

// bulkWrite runs models as unordered bulkWrites of at most maxBulkUpdates.
func bulkWrite(ctx context.Context, c *mongo.Collection, models []mongo.WriteModel) error {
	for len(models) > 0 {
		n := min(len(models), maxBulkUpdates)
		if _, err := c.BulkWrite(ctx, models[:n], options.BulkWrite().SetOrdered(false)); err != nil {
			return err
		}
		models = models[n:]
	}
	return nil
}

// HasOutboxEntry reports whether the outbox entry with this key exists,
// pending or in flight.
func (s *Store) HasOutboxEntry(ctx context.Context, key string) (bool, error) {
	for _, c := range []*mongo.Collection{s.inflight, s.outbox} {
		err := c.FindOne(ctx, byID(key)).Err()
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return false, fmt.Errorf("find outbox entry %s: %w", key, err)
		}
	}
	return false, nil
}

// EnsureOutbox inserts e unless an entry with its key exists. The unique
// _id makes this atomic even on FerretDB.
func (s *Store) EnsureOutbox(ctx context.Context, e message.OutboxEntry) error {
	if _, err := s.outbox.InsertOne(ctx, e); err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("insert outbox entry %s: %w", e.Key, err)
	}
	return nil
}

// ReplaceOutbox stores e as the pending entry of its key, replacing the
// one there (due or published), then removes an in-flight entry of that key.
// The key never goes without an entry: a write that fails leaves the old one.
func (s *Store) ReplaceOutbox(ctx context.Context, e message.OutboxEntry) error {
	if err := replaceEntry(ctx, s.outbox, e); err != nil {
		return err
	}
	if _, err := s.inflight.DeleteOne(ctx, byID(e.Key)); err != nil {
		return fmt.Errorf("delete in-flight outbox entry %s: %w", e.Key, err)
	}
	return nil
}

// replaceEntry writes e over the entry of its key in c, or inserts it. A
// duplicate key (two upserts racing on a real MongoDB) means the other one
// wrote an entry: the key has one either way.
func replaceEntry(ctx context.Context, c *mongo.Collection, e message.OutboxEntry) error {
	if _, err := c.ReplaceOne(ctx, byID(e.Key), e, options.Replace().SetUpsert(true)); err != nil && !isDuplicateKey(err) {
		return fmt.Errorf("replace outbox entry %s: %w", e.Key, err)
	}
	return nil
}

// DropOutbox removes entry e, pending or in flight, if it is still the one
// read: an entry written again since under its key (by an Idempotency-Key's
// repeat, see CreateMessages) has another createdAt and stays.
func (s *Store) DropOutbox(ctx context.Context, e message.OutboxEntry) error {
	return s.deleteEntry(ctx, e.Key, bson.D{{Key: "_id", Value: e.Key}, {Key: "createdAt", Value: e.CreatedAt}})
}

// DeleteOutbox removes the entry with this key, pending or in flight, if
// any.
func (s *Store) DeleteOutbox(ctx context.Context, key string) error {
	return s.deleteEntry(ctx, key, byID(key))
}

// deleteEntry deletes the entry of key that filter matches from both the
// in-flight and the pending entries.
func (s *Store) deleteEntry(ctx context.Context, key string, filter bson.D) error {
	for _, c := range []*mongo.Collection{s.inflight, s.outbox} {
		if _, err := c.DeleteOne(ctx, filter); err != nil {
			return fmt.Errorf("delete outbox entry %s: %w", key, err)
		}
	}
	return nil
}

// SchedulerState returns the stored publisher state and when it was set, or
// def and the zero time if none is stored.
func (s *Store) SchedulerState(ctx context.Context, def message.SchedulerState) (message.SchedulerState, time.Time, error) {
	var doc schedulerDoc
	err := s.scheduler.FindOne(ctx, bson.D{{Key: "_id", Value: schedulerID}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return def, time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("read scheduler state: %w", err)
	}
	return doc.State, doc.UpdatedAt, nil
}

// SetSchedulerState stores the publisher state.
func (s *Store) SetSchedulerState(ctx context.Context, st message.SchedulerState, at time.Time) error {
	_, err := s.scheduler.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: schedulerID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: st}, {Key: "updatedAt", Value: at}}}},
		options.UpdateOne().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("set scheduler state: %w", err)
	}
	return nil
}

type schedulerDoc struct {
	State     message.SchedulerState `bson:"state"`
	UpdatedAt time.Time              `bson:"updatedAt"`
}

// scrub returns err with any appearance of the URI's password masked, in
// case a driver error quotes it. errors.Is and errors.As still see err.
func scrub(err error, uri string) error {
	msg := redact.Scrub(err.Error(), uri)
	if msg == err.Error() {
		return err
	}
	return &scrubbedError{msg: msg, err: err}
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }
