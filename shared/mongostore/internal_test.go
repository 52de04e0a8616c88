package mongostore

import (
	"errors"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// TestClientOptionsReadThePrimaryAndWriteToAMajority: reads go to the
// primary even when the URI asks for a replica (a replica may not yet have
// a message written a moment ago), and writes wait for a majority unless
// the URI sets w itself.
func TestClientOptionsReadThePrimaryAndWriteToAMajority(t *testing.T) {
	for _, tc := range []struct {
		uri string
		w   any
	}{
		{"mongodb://127.0.0.1:27017/", "majority"},
		{"mongodb://h:27017/?replicaSet=rs0&readPreference=secondaryPreferred&retryWrites=false", "majority"},
		{"mongodb://h:27017/?readPreference=nearest&w=1", 1},
		{"mongodb://h:27017/?w=2&journal=true", 2},
		{"mongodb://h:27017/?journal=true", "majority"},
	} {
		opts := clientOptions(tc.uri)
		if opts.ReadPreference == nil || opts.ReadPreference.Mode() != readpref.PrimaryMode {
			t.Errorf("%s: read preference %v, want primary", tc.uri, opts.ReadPreference)
		}
		if opts.WriteConcern == nil || opts.WriteConcern.W != tc.w {
			t.Errorf("%s: write concern %+v, want w=%v", tc.uri, opts.WriteConcern, tc.w)
		}
		if tc.w == "majority" && !opts.WriteConcern.Acknowledged() {
			t.Errorf("%s: unacknowledged writes", tc.uri)
		}
		if j := strings.Contains(tc.uri, "journal=true"); j && (opts.WriteConcern.Journal == nil || !*opts.WriteConcern.Journal) {
			t.Errorf("%s: the journal setting was lost", tc.uri)
		}
	}
}

// TestSpreadGivesEachWriteItsOwnError: a batch that a server answers with a
// duplicate key for one write and a write concern error for the command
// reports the duplicate for that write alone, and the write concern error
// (not a duplicate) for the others, which were applied.
func TestSpreadGivesEachWriteItsOwnError(t *testing.T) {
	wce := &mongo.WriteConcernError{Code: 64, Name: "WriteConcernFailed", Message: "waiting for replication timed out"}
	dup := mongo.WriteError{Index: 1, Code: codeDuplicateKey, Message: "E11000 duplicate key error"}
	for _, tc := range []struct {
		name string
		err  error
		want []string // per write: "", "dup", "wce", "other"
	}{
		{"duplicate and write concern", mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{{WriteError: dup}}, WriteConcernError: wce},
			[]string{"wce", "dup", "wce"}},
		{"duplicate only", mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{{WriteError: dup}}},
			[]string{"", "dup", ""}},
		{"write concern only", mongo.BulkWriteException{WriteConcernError: wce},
			[]string{"wce", "wce", "wce"}},
		{"the command failed", errors.New("connection reset"),
			[]string{"other", "other", "other"}},
	} {
		errs := make([]error, 3)
		spread(tc.err, errs)
		for i, e := range errs {
			got := ""
			switch {
			case e == nil:
			case isDuplicateKey(e):
				got = "dup"
			case errors.As(e, new(*mongo.WriteConcernError)):
				got = "wce"
			default:
				got = "other"
			}
			if got != tc.want[i] {
				t.Errorf("%s: write %d got %q (%v), want %q", tc.name, i, got, e, tc.want[i])
			}
		}
	}
}
