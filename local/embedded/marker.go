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
	PID     int    `bson:"pid"`
}

// ErrNoMarker is DataDir's error for a server that does not say where it
// keeps its data: not one this package started, or one of a version
// before the marker.
var ErrNoMarker = errors.New("the server does not say where it keeps its data")

// writeMarker records dir, the server's data directory, in the server.
// The document lives in the directory itself, so it is written at every
// start: a directory moved or copied then names its new place.
func writeMarker(ctx context.Context, client *mongo.Client, dir string) error {
	m := marker{ID: markerID, DataDir: dir, PID: os.Getpid()}
	_, err := client.Database(markerDB).Collection(markerColl).
		ReplaceOne(ctx, bson.D{{Key: "_id", Value: markerID}}, m, options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record the data directory: %w", err)
	}
	return nil
}

// DataDir returns the data directory of the embedded server answering at
// uri, as its Start resolved it (absolute, symbolic links resolved).
func DataDir(ctx context.Context, uri string) (string, error) {
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetAppName("embedded-marker"))
	if err != nil {
		return "", err
	}
	defer func() { _ = client.Disconnect(context.WithoutCancel(ctx)) }()
	var m marker
	err = client.Database(markerDB).Collection(markerColl).FindOne(ctx, bson.D{{Key: "_id", Value: markerID}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", ErrNoMarker
	}
	if err != nil {
		return "", fmt.Errorf("read the data directory: %w", err)
	}
	return m.DataDir, nil
}

// SameDir reports whether dir, a Config.Dir, names the directory that
// DataDir reported as served.
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
