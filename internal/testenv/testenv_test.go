package testenv_test

import (
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/internal/testenv"
)

// TestFreeAddrReservesItsPort: FreeAddr hands out distinct ports outside
// the kernel's ephemeral range, each free to bind and held, through its
// lock file, against every other test process.
func TestFreeAddrReservesItsPort(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		addr := testenv.FreeAddr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if port < testenv.FreePortsFrom || port >= testenv.FreePortsTo {
			t.Fatalf("port %d is outside %d-%d", port, testenv.FreePortsFrom, testenv.FreePortsTo)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the port handed out cannot be bound: %v", err)
		}
		ln.Close()
		// Another process opens the lock file on a descriptor of its own,
		// as this does.
		f, err := os.Open(testenv.PortLockFile(port))
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close()
		if err == nil {
			t.Fatalf("port %d: another process could take its lock", port)
		}
	}
}
