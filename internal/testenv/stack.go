package testenv

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/app"
)

// App opens an App on the real services with the configuration of env
// (see Env) and the embedded MongoDB, closed when the test ends.
func App(t testing.TB, env map[string]string) *app.App {
	t.Helper()
	if env["MONGODB_URI"] == "" {
		env["MONGODB_URI"] = MongoURI(t)
	}
	cfg := Config(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := app.Open(ctx, cfg, logger)
	if err != nil {
		t.Fatalf("open app: %v", err)
	}
	t.Cleanup(func() { a.Close(context.Background()) })
	return a
}
