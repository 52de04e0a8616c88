//go:build !unix

package lambdarie

import "context"

// lockFile does nothing where there is no flock; the emulator runs on Linux
// only anyway.
func lockFile(context.Context, string) (func(), error) { return func() {}, nil }
