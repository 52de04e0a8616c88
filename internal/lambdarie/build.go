package lambdarie

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// BuildBootstrap builds the Lambda function in package pkg into
// dir/bootstrap, the way mk/lambda.mk builds it for AWS (CGO_ENABLED=0,
// -tags lambda.norpc, -trimpath, -ldflags "-s -w") but for this machine's
// OS and architecture, so that the emulator can run it. pkg is a package as
// `go build` takes it in the current directory; a full import path works
// from anywhere in the module. It returns the bootstrap's path.
func BuildBootstrap(ctx context.Context, dir, pkg string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	out := filepath.Join(dir, "bootstrap")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "lambda.norpc", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+runtime.GOOS, "GOARCH="+runtime.GOARCH)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", pkg, err, strings.TrimSpace(output.String()))
	}
	return out, nil
}

// ModuleRoot returns the directory of the go.mod that governs dir: dir or
// the nearest directory above it with a go.mod.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && !fi.IsDir() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", ErrNoModule
		}
		dir = parent
	}
}

// RIEPath is where `make bin/aws-lambda-rie` installs the emulator, relative
// to the module root.
const RIEPath = "bin/aws-lambda-rie"

// InstallRIE makes sure the emulator is installed under root (the module
// root) at the version mk/invoke.mk pins, by running
// `make bin/aws-lambda-rie` there (a no-op when it is up to date), and
// returns its path. The Makefile is the one place the version is written.
func InstallRIE(ctx context.Context, root string) (string, error) {
	bin := filepath.Join(root, filepath.Dir(RIEPath))
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", fmt.Errorf("install aws-lambda-rie: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(bin, ".aws-lambda-rie.lock"))
	if err != nil {
		return "", fmt.Errorf("install aws-lambda-rie: lock: %w", err)
	}
	defer unlock()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", root, RIEPath)
	// Run from make test, the environment carries the outer make's flags
	// (its jobserver's file descriptors, which this process does not
	// hold): the inner make must not take them.
	cmd.Env = withoutMakeFlags(os.Environ())
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("install aws-lambda-rie (make %s): %w\n%s", RIEPath, err, strings.TrimSpace(output.String()))
	}
	return filepath.Join(root, RIEPath), nil
}

// withoutMakeFlags returns env without the variables through which a make
// passes its flags to the makes it runs.
func withoutMakeFlags(env []string) []string {
	var out []string
	for _, kv := range env {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES":
		default:
			out = append(out, kv)
		}
	}
	return out
}
