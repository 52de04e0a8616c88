package mongostore

import (
	"testing"

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
	}
}
