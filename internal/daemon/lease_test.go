package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/isboot/isboot/netcfg"
)

// The daemon keeps the configuration's lease from the start, while still logging in,
// publishes each step as net.isboot.dhcp.*, and stops renewing when Run ends.
func TestRunKeepsLease(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	obtained := time.Date(2026, 12, 1, 21, 0, 0, 0, time.UTC)
	cfg.Lease = &netcfg.Lease{Family: 4, Link: "eth0", Addr: netip.MustParsePrefix("10.0.2.15/24"),
		Server: netip.MustParseAddr("10.0.2.2"), Obtained: obtained, Duration: time.Hour}
	stopped := make(chan struct{})
	keep := func(ctx context.Context, l netcfg.Lease, o netcfg.KeepOptions) {
		defer close(stopped)
		o.Report(netcfg.LeaseState{Lease: l, State: "bound"})
		l.Obtained = l.Obtained.Add(30 * time.Minute)
		o.Report(netcfg.LeaseState{Lease: l, State: "bound", Renewals: 1})
		<-ctx.Done()
	}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), cfg, Options{
			Dial: func(ctx context.Context, c *Config, _ func(string, ...any)) (Session, error) {
				<-ctx.Done() // the target never answers: the lease is kept all the same
				return nil, ctx.Err()
			},
			Signals: sigs, KeepLease: keep,
		})
	}()
	want := map[string]string{
		"net.isboot.dhcp.address": "10.0.2.15/24", "net.isboot.dhcp.server": "10.0.2.2", "net.isboot.dhcp.state": "bound",
		"net.isboot.dhcp.lease_time": "3600", "net.isboot.dhcp.renewals": "1", "net.isboot.dhcp.failures": "0",
		"net.isboot.dhcp.lease_obtained": "2026-12-01T21:30:00Z", "net.isboot.dhcp.lease_expires": "2026-12-01T22:30:00Z",
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "status")); err != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		m := readStatus(t, dir)
		ok := true
		for k, v := range want {
			ok = ok && m[k] == v
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %v", m)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sigs <- syscall.SIGTERM
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the renewal outlived Run")
	}
}
