package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// A started server names its data directory in a document of its own, so
// that a process that finds a server already answering at its address can
// tell whether that server keeps its data where the process was told to
// (DATA_DIR), instead of using another directory's database unawares.
const (
	markerDB   = "rms_embedded"
	markerColl = "server"
	markerID   = "server"
)

type marker struct {
	ID      string `bson:"_id"`
	DataDir string `bson:"dataDir"`
	Sync    string `bson:"sync"`
	PID     int    `bson:"pid"`
}

// Served is what a running server records of itself.
type Served struct {
	// DataDir is its data directory, as Start resolved it (absolute,
	// symbolic links resolved).
	DataDir string
	// Sync is its Config.Sync, "full" or "normal"; empty from a server
	// of a version before it was recorded.
	Sync string
}

// ErrNoMarker is Describe's error for a server that does not say where it
// keeps its data: not one this package started, or one of a version
// before the marker.
var ErrNoMarker = errors.New("the server does not say where it keeps its data")

// writeMarker records dir, the server's data directory, and its sync mode
// in the server. The document lives in the directory itself, so it is
// written at every start: a directory moved or copied then names its new
// place.
func writeMarker(ctx context.Context, client *mongo.Client, dir, sync string) error {
	m := marker{ID: markerID, DataDir: dir, Sync: sync, PID: os.Getpid()}
	_, err := client.Database(markerDB).Collection(markerColl).
		ReplaceOne(ctx, bson.D{{Key: "_id", Value: markerID}}, m, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record the data directory: %w", err)
	}
	return nil
}

// Describe returns what the embedded server answering at uri records of
// itself.
func Describe(ctx context.Context, uri string) (Served, error) {
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetAppName("embedded-marker"))
	if err != nil {
		return Served{}, err
	}
	defer func() { _ = client.Disconnect(context.WithoutCancel(ctx)) }()
	var m marker
	err = client.Database(markerDB).Collection(markerColl).FindOne(ctx, bson.D{{Key: "_id", Value: markerID}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Served{}, ErrNoMarker
	}
	if err != nil {
		return Served{}, fmt.Errorf("read the data directory: %w", err)
	}
	return Served{DataDir: m.DataDir, Sync: m.Sync}, nil
}

// SameDir reports whether dir, a Config.Dir, names the directory that
// Describe reported as served.
func SameDir(dir, served string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	return abs == served
}
