package initproc

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isboot/isboot/netcfg"
)

// The boot NIC's DNS reaches the real root through /run: net-<link>.conf as
// initramfs-tools writes it, and a complete resolv.conf under /run/isboot.
func TestCarryNetwork(t *testing.T) {
	run := t.TempDir()
	p := &netcfg.Plan{NIC: 0, Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"),
		DNS: []netip.Addr{netip.MustParseAddr("10.0.2.3")}}
	files, err := carryNetwork(run, p, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(run, "net-eth0.conf"), filepath.Join(run, "isboot", "resolv.conf")}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("files %q, want %q", files, want)
	}
	if b, _ := os.ReadFile(want[0]); !strings.Contains(string(b), "IPV4DNS0='10.0.2.3'\n") {
		t.Errorf("%s:\n%s", want[0], b)
	}
	if b, _ := os.ReadFile(want[1]); !strings.Contains(string(b), "nameserver 10.0.2.3\n") {
		t.Errorf("%s:\n%s", want[1], b)
	}
	// No DNS servers: no resolv.conf, the interface file all the same.
	p.DNS = nil
	if files, err := carryNetwork(t.TempDir(), p, "eth0"); err != nil || len(files) != 1 {
		t.Errorf("without DNS: %q, %v", files, err)
	}
}

// The real root's network managers find their hands-off files under /run.
func TestCarryGuard(t *testing.T) {
	run := t.TempDir()
	p := &netcfg.Plan{MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, Addr: netip.MustParsePrefix("10.0.2.15/24")}
	files, err := carryGuard(run, p, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(run, "systemd/network/10-isboot-eth0.network"), filepath.Join(run, "NetworkManager/conf.d/10-isboot-eth0.conf")}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("files %q, want %q", files, want)
	}
	for i, key := range []string{"KeepConfiguration=yes\n", "managed=0\n"} {
		if b, _ := os.ReadFile(want[i]); !strings.Contains(string(b), key) {
			t.Errorf("%s has no %q:\n%s", want[i], key, b)
		}
	}
	// A /run it cannot write to: an error naming the file, and the boot goes on.
	if _, err := carryGuard("/proc/version", p, "eth0"); err == nil {
		t.Error("no error writing below a file")
	}
}
