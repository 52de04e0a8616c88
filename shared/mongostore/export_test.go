package mongostore

import (
	"context"

	"go.mongodb.org/mongo-driver/v2/mongo"
)

// SetBeforeUnindex sets the hook IndexFailed runs between its read of the
// message and its removal of the entry it wrote, until the returned
// function is called.
func SetBeforeUnindex(f func()) (restore func()) {
	beforeUnindex = f
	return func() { beforeUnindex = nil }
}

// FailedCollection is the failed index's collection.
func (s *Store) FailedCollection() *mongo.Collection { return s.failed() }

// GuardsCollection is the collection of the inbox, lease and takeover
// markers.
func (s *Store) GuardsCollection() *mongo.Collection { return s.guards() }

// Ferret reports whether s talks to FerretDB, the embedded MongoDB.
func (s *Store) Ferret() bool { return s.ferret }

// SetMongoDBForms makes s write as it does on a real MongoDB (true), with
// the conditions in the filters, which FerretDB runs too (by a full scan),
// or as on FerretDB (false).
func (s *Store) SetMongoDBForms(on bool) { s.ferret = !on }

// WinTakeover is winTakeover.
func (s *Store) WinTakeover(ctx context.Context, id, gen string) (bool, error) {
	return s.winTakeover(ctx, id, gen)
}

// SetBeforeTakeover sets the hook takeOver runs between its read of a
// stale marker and its bid, until the returned function is called.
func SetBeforeTakeover(f func()) (restore func()) {
	beforeTakeover = f
	return func() { beforeTakeover = nil }
}
