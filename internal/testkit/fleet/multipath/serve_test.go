package multipath_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/internal/status"
	"github.com/isboot/isboot/internal/testkit/tcpproxy"
	"github.com/isboot/isboot/internal/testkit/testtarget"
)

// TestServeMultipathStatus runs `isboot serve --paths multipath` on two proxies in
// front of one tgtd LUN: the status file lists both paths active; the idle path 1
// whose proxy is killed shows failed, then active again once the proxy is back.
func TestServeMultipathStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test (tgtd, the isboot binary): skipped under -short")
	}
	tgt := testtarget.StartTgtd(t, testtarget.TgtdOptions{Port: testtarget.FreePort(t, portLo, portHi), ControlPort: controlPort})
	p0 := tcpproxy.Start(t, "127.0.0.1:0", tgt.Addr())
	p1 := tcpproxy.Start(t, "127.0.0.1:0", tgt.Addr())
	bin := isbootBinary(t)
	dir := t.TempDir()
	st := filepath.Join(dir, "status")
	cmd := exec.Command(bin, "serve", "--portal", p0.Addr()+","+p1.Addr(), "--target", tgt.IQN, "--lun", "1",
		"--paths", "multipath", "--listen", "unix:"+filepath.Join(dir, "nbd.sock"), "--status", st)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitStatus := func(within time.Duration, want map[string]string) []status.KV {
		t.Helper()
		var kv []status.KV
		for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
			kv, _ = status.ReadFile(st)
			ok := true
			for k, v := range want {
				ok = ok && status.Value(kv, k) == v
			}
			if ok {
				return kv
			}
			if time.Now().After(deadline) {
				t.Fatalf("status after %v: %v, want %v", within, kv, want)
			}
		}
	}
	kv := waitStatus(20*time.Second, map[string]string{"net.isboot.state": "serving", "net.isboot.paths": "2",
		"net.isboot.path.0.state": "active", "net.isboot.path.1.state": "active"})
	if status.Value(kv, "net.isboot.path.0.portal") != p0.Addr() || status.Value(kv, "net.isboot.path.1.portal") != p1.Addr() ||
		!strings.HasPrefix(status.Value(kv, "net.isboot.lun.id"), "naa.") {
		t.Errorf("status: %v", kv)
	}
	killAt := time.Now()
	p1.Kill()
	waitStatus(15*time.Second, map[string]string{"net.isboot.path.1.state": "failed", "net.isboot.path.1.failovers": "1",
		"net.isboot.path.0.state": "active", "net.isboot.state": "serving"})
	failed := time.Since(killAt)
	if err := p1.Revive(); err != nil {
		t.Fatal(err)
	}
	reviveAt := time.Now()
	waitStatus(15*time.Second, map[string]string{"net.isboot.path.1.state": "active", "net.isboot.path.1.failovers": "1"})
	t.Logf("idle path 1 shown failed %v after its proxy was killed, active %v after it came back",
		failed.Round(10*time.Millisecond), time.Since(reviveAt).Round(10*time.Millisecond))
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
}
