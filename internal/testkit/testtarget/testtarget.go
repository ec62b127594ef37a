// Package testtarget starts real iSCSI targets (tgtd, istgt, gotgt) on loopback for tests.
// Every process it starts is killed in t.Cleanup, also when the test fails.
//
// go test runs packages in parallel and FreePort only probes (and remembers what it
// handed out in this process), so each package picks ports from its own slice. A
// tgtd whose port is taken keeps running without it; StartTgtd then fails rather
// than let the test talk to another package's target.
//
//	TCP ports    control ports  package
//	13260-13284  10-18          iscsi
//	13285-13299  19             internal/testtarget (and 13590-13591)
//	13300-13349  20-29          internal/vm
//	13350-13399  30-39          internal/initproc
//	13400-13449  43             internal/nbd
//	13450-13499  50-59          internal/resilience
//	13500-13529  40-42, 44-47   cmd/isboot
//	13530-13539  60             internal/daemon
//	13540-13549  61-62          ibft
//	13550-13559  63-64          internal/testkit/diskbench
//	13560-13569  65-66          internal/testkit/distro
//	13570-13579  67-68          internal/testkit/fleet/dhcpboot
//	13580-13583  69             iscsi (multipath tests)
//	13584-13589  70             internal/testkit/fleet/multipath
//	13600-13609  71-72          internal/testkit/fleet/guardnet
//	13610-13619  73-74          internal/testkit/fleet/ipv6boot
//	13620-13629  —              internal/testkit/fleet/lio (LIO VMs, no tgtd)
package testtarget

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Target is what every launcher returns: where to connect and what to log in to.
type Target interface {
	Addr() string // "127.0.0.1:port"
	TargetIQN() string
	LUNNumber() uint64
}

// CHAP holds one CHAP account. Empty User means no account.
type CHAP struct {
	User, Secret string
}

// CreateBacking makes a sparse backing file of size bytes in dir.
func CreateBacking(t testing.TB, dir string, size int64) string {
	t.Helper()
	path := fmt.Sprintf("%s/lun.img", dir)
	if err := sparseFile(path, size); err != nil {
		t.Fatalf("testtarget: backing file: %v", err)
	}
	return path
}

// waitListening polls until addr accepts TCP connections or the deadline passes.
func waitListening(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v: %v", addr, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitClosed polls until nothing accepts on addr any more.
func waitClosed(addr string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// handedOut holds the ports FreePort has given to tests still running: parallel
// tests in one package would otherwise both see a port free before either binds it.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on, from [lo, hi],
// and that no other test of this process holds until t ends.
func FreePort(t testing.TB, lo, hi int) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for p := lo; p <= hi; p++ {
		if handedOut.ports[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		handedOut.ports[p] = true
		t.Cleanup(func() {
			handedOut.Lock()
			delete(handedOut.ports, p)
			handedOut.Unlock()
		})
		return p
	}
	t.Fatalf("testtarget: no free port in %d-%d", lo, hi)
	return 0
}

// logTail returns the last lines of a log file for failure messages.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// tempDir is a directory that lives as long as the process (for gotgt, which does).
func tempDir() (string, error) { return os.MkdirTemp("", "isboot-gotgt-") }

func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}
