// Command rms runs the message system as plain processes: the REST API, the
// outbox publisher on a ticker, the AMQP consumer feeding the processor,
// and, when MONGODB_URI is empty, an embedded MongoDB. The same handlers run
// in AWS Lambda (see functions/).
//
// Usage: rms [all|api|publisher|processor|mongodb|receiver|setup|help]
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := stopOnSignal(os.Stderr)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "rms:", err)
		os.Exit(1)
	}
}

// stopOnSignal returns a context that ends at the first SIGINT or SIGTERM.
// Then it says so on stderr and gives the signals back their default
// action: the stop finishes the deliveries in flight and records them,
// which can take WEBHOOK_TIMEOUT and more, and a second Ctrl-C ends the
// process at once for someone who will not wait.
func stopOnSignal(stderr io.Writer) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-sigs:
			signal.Stop(sigs)
			fmt.Fprintln(stderr, "rms: stopping: finishing the deliveries in flight (Ctrl-C again to stop at once)")
			cancel()
		case <-ctx.Done(): // a return without a signal says nothing
			signal.Stop(sigs)
		}
	}()
	return ctx, cancel
}

const usage = `usage: rms [role]

roles:
  all        everything below but setup, in one process (the default)
  api        the REST API on API_ADDR
  publisher  the outbox publisher and stale-message sweep, every PUBLISH_INTERVAL, status on PUBLISHER_ADDR
  processor  the RabbitMQ consumer delivering to WEBHOOK_URL, status on PROCESSOR_ADDR
  mongodb    the embedded MongoDB alone, on EMBEDDED_MONGODB_ADDR
  receiver   the demo webhook receiver alone, on RECEIVER_ADDR
  setup      declare the RabbitMQ exchange and queues and the MongoDB indexes, then exit
  help       this text

With MONGODB_URI empty, a role uses the embedded MongoDB at
EMBEDDED_MONGODB_ADDR if one answers there, and starts one otherwise.
With WEBHOOK_URL empty, the processor delivers to the demo receiver.
`

var roles = map[string]bool{"all": true, "api": true, "publisher": true, "processor": true, "mongodb": true, "receiver": true, "setup": true}

// run is the whole program, so that tests can start it as `make run` does.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	role := "all"
	if len(args) > 0 {
		role = args[0]
	}
	switch role {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	if len(args) > 1 || !roles[role] {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown role %q", role)
	}
	return newSystem(role, getenv, stdout).run(ctx)
}
