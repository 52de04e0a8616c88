package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profile starts a CPU profile of each process (-profile), taken over
// -profile-for from now, and returns a function that waits for them to be
// written to <dir>/<role>.pprof. Read one with
// `go tool pprof -top <dir>/rms <dir>/processor.pprof`.
func (b *bench) profile(ctx context.Context) (wait func()) {
	if b.opts.Profile == "" {
		return func() {}
	}
	if err := os.MkdirAll(b.opts.Profile, 0o755); err != nil {
		b.logf("profile: %v", err)
		return func() {}
	}
	var wg sync.WaitGroup
	secs := max(int(b.opts.ProfileFor/time.Second), 1)
	for role, addr := range b.stack.pprof {
		wg.Go(func() {
			path := filepath.Join(b.opts.Profile, role+".pprof")
			if err := fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), path); err != nil {
				b.logf("profile of %s: %v", role, err)
				return
			}
			b.logf("profile of %s written to %s", role, path)
		})
	}
	// The binary, for symbols.
	if data, err := os.ReadFile(b.stack.rms); err == nil {
		_ = os.WriteFile(filepath.Join(b.opts.Profile, "rms"), data, 0o755)
	}
	return wg.Wait
}

func fetch(ctx context.Context, url, path string) error {
	resp, err := get(ctx, url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
