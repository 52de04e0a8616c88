// Command invoke runs one event through one of the Lambda functions on this
// machine: it builds the function for this machine's architecture, runs it
// under the AWS Lambda Runtime Interface Emulator, and prints the function's
// response as one line of JSON, the last line of its output. The function's
// logs go to stderr before it.
//
//	go run ./internal/cmd/invoke -function api -event events/api-status.json
//	make invoke FUNCTION=api EVENT=events/api-status.json
//
// The function gets the caller's configuration: every variable shared/config
// reads, and the AWS_* ones. With MONGODB_URI unset it uses the embedded
// MongoDB answering at EMBEDDED_MONGODB_ADDR (`bin/rms mongodb`, or a
// running `make run`), or starts one for the call, with its data under
// DATA_DIR/mongodb. The exit status is 1 when the invocation failed; the
// last line is then Lambda's {"errorMessage","errorType"} document.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/lambdarie"
	"github.com/Furkan-Gulsen/reliable_messaging_system/local/embedded"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/config"
)

// modulePath is this module's path: the functions are built by import
// path, so the command works from any directory of the module.
const modulePath = "github.com/Furkan-Gulsen/reliable_messaging_system"

var functions = []string{"api", "publisher", "processor"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errInvocationFailed) {
			fmt.Fprintln(os.Stderr, "invoke:", err)
		}
		os.Exit(1)
	}
}

// errInvocationFailed: the function failed, and its error document is
// already printed.
var errInvocationFailed = errors.New("the invocation failed")

func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	function := fs.String("function", "", "the function to run: "+strings.Join(functions, ", "))
	eventPath := fs.String("event", "", "the event file (JSON), e.g. events/api-status.json")
	riePath := fs.String("rie", "", "path of aws-lambda-rie (default: bin/aws-lambda-rie of the module, installed with make if missing)")
	timeout := fs.Duration("timeout", 90*time.Second, "the function's timeout (AWS_LAMBDA_FUNCTION_TIMEOUT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !slices.Contains(functions, *function) || *eventPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("want -function %s and -event <file>", strings.Join(functions, "|"))
	}
	event, err := os.ReadFile(*eventPath)
	if err != nil {
		return fmt.Errorf("read the event: %w", err)
	}
	if !json.Valid(event) {
		return fmt.Errorf("%s is not valid JSON", *eventPath)
	}

	getenv := lookup(environ)
	cfg, err := config.Load(getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	env := functionEnv(environ)
	if cfg.MongoURI == "" {
		uri, stopMongo, err := embeddedMongo(ctx, cfg, stderr)
		if err != nil {
			return err
		}
		defer stopMongo()
		env = append(env, "MONGODB_URI="+uri)
	}

	rie := *riePath
	if rie == "" {
		root, err := lambdarie.ModuleRoot(".")
		if err != nil {
			return err
		}
		if rie, err = lambdarie.InstallRIE(ctx, root); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "rms-invoke-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bootstrap, err := lambdarie.BuildBootstrap(ctx, dir, modulePath+"/functions/"+*function)
	if err != nil {
		return err
	}

	emu, err := lambdarie.Start(ctx, lambdarie.Options{RIE: rie, Bootstrap: bootstrap, Env: env, Timeout: *timeout})
	if err != nil {
		return err
	}
	// The invocation is bounded by the function's timeout, which the
	// emulator enforces; the margin covers the cold start and the answer.
	ictx, cancel := context.WithTimeout(ctx, *timeout+30*time.Second)
	defer cancel()
	body, invokeErr := emu.Invoke(ictx, event)
	fmt.Fprint(stderr, emu.Logs())
	emu.Close()
	if d, ok := emu.InitDuration(); ok {
		fmt.Fprintf(stderr, "cold start of %s: init %v\n", *function, d.Round(100*time.Microsecond))
	}

	var ie *lambdarie.InvokeError
	switch {
	case errors.As(invokeErr, &ie):
		fmt.Fprintln(stdout, string(oneLine(body, ie)))
		return errInvocationFailed
	case invokeErr != nil:
		return invokeErr
	}
	fmt.Fprintln(stdout, string(oneLine(body, nil)))
	return nil
}

// oneLine returns the response as one line of JSON: compacted, or, for a
// failure whose answer is not JSON, Lambda's error document.
func oneLine(body []byte, ie *lambdarie.InvokeError) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, body); err == nil && buf.Len() > 0 {
		return buf.Bytes()
	}
	if ie != nil {
		return ie.Document()
	}
	// A successful answer that is not JSON (no function here returns
	// one): quoted, to keep the line JSON.
	b, _ := json.Marshal(string(body))
	return b
}

// lookup returns a getenv over environ.
func lookup(environ []string) func(string) string {
	m := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return func(k string) string { return m[k] }
}

// configNames returns the name of every variable shared/config reads, by
// watching config.Load read them, so that this list never falls behind it.
func configNames() map[string]bool {
	names := map[string]bool{}
	_, _ = config.Load(func(k string) string {
		names[k] = true
		return ""
	})
	return names
}

// functionEnv returns the entries of environ the function gets: the
// configuration's variables and the AWS_* ones (credentials, region).
func functionEnv(environ []string) []string {
	names := configNames()
	var env []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if names[k] || strings.HasPrefix(k, "AWS_") {
			env = append(env, kv)
		}
	}
	return env
}

// embeddedMongo returns the URI of the embedded MongoDB at cfg's
// EMBEDDED_MONGODB_ADDR: one already answering there, or one started for
// this call, which stop ends.
func embeddedMongo(ctx context.Context, cfg config.Config, stderr io.Writer) (uri string, stop func(), err error) {
	uri = "mongodb://" + cfg.EmbeddedMongoDBAddr + "/"
	if mongoAnswers(ctx, cfg.EmbeddedMongoDBAddr) {
		fmt.Fprintf(stderr, "using the embedded MongoDB at %s\n", cfg.EmbeddedMongoDBAddr)
		return uri, func() {}, nil
	}
	dir := filepath.Join(cfg.DataDir, "mongodb")
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := embedded.Start(ctx, embedded.Config{Addr: cfg.EmbeddedMongoDBAddr, Dir: dir, Logger: logger})
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(stderr, "started an embedded MongoDB at %s for this call (data in %s)\n", cfg.EmbeddedMongoDBAddr, dir)
	return srv.URI(), func() {
		// The function's process is gone by now, so no client holds the
		// server up.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			fmt.Fprintln(stderr, "stop the embedded MongoDB:", err)
		}
	}, nil
}

// mongoAnswers reports whether a MongoDB answers a ping at addr.
func mongoAnswers(ctx context.Context, addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + addr + "/").SetServerSelectionTimeout(2 * time.Second))
	if err != nil {
		return false
	}
	defer func() { _ = client.Disconnect(context.WithoutCancel(ctx)) }()
	return client.Ping(ctx, nil) == nil
}
