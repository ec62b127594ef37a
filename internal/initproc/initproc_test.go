package initproc

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
)

func table() *ibft.Table {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	return &ibft.Table{
		Source:    "test",
		Signature: "iBFT",
		Initiator: ibft.Initiator{Flags: 3, Name: "iqn.2024-01.org.example:host"},
		NICs: []ibft.NIC{{Index: 0, Flags: 3, IP: netip.MustParseAddr("10.0.2.15"), Prefix: 24,
			Gateway: netip.MustParseAddr("10.0.2.2"), MAC: mac, PCIBDF: 3 << 3}},
		Targets: []ibft.Target{{Index: 0, Flags: 3, IP: netip.MustParseAddr("10.0.2.2"), Port: 3260, LUN: 1,
			Name: "iqn.2024-01.org.example:disk", CHAPType: ibft.CHAPMutual, CHAPName: "u", CHAPSecret: "s1",
			RevCHAPName: "t", RevCHAPSecret: "s2"}},
	}
}

func parse(t *testing.T, s string) *cmdline.CmdLine {
	t.Helper()
	c, err := cmdline.ParseString(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The mapping itself is bootplan's (tested there); PID 1 adds the daemon's side and
// hands it the LUN unchanged, secrets included (they travel over a pipe).
func TestMakePlanFromIBFT(t *testing.T) {
	p, err := MakePlan(parse(t, "isboot.debug=2"), table())
	if err != nil {
		t.Fatal(err)
	}
	d := p.Daemon
	if d.Portals[0] != "10.0.2.2:3260" || d.TargetName != "iqn.2024-01.org.example:disk" || d.LUN != 1 ||
		d.InitiatorName != "iqn.2024-01.org.example:host" || d.CHAPSecret != "s1" || d.RevCHAPSecret != "s2" ||
		d.Debug != 2 || d.Device != 0 || d.Connections != 2 || p.Boot.NIC != 0 || p.Boot.Targets != nil {
		t.Errorf("plan %v, daemon %v", p.Boot, &d)
	}
	if len(d.IBFT) == 0 {
		t.Error("no hw.ibft.* keys for the status file")
	}
	for _, kv := range d.IBFT {
		if strings.Contains(kv.Value, "s1") || strings.Contains(kv.Value, "s2") {
			t.Errorf("secret in status keys: %v", kv)
		}
	}
	if _, err := MakePlan(parse(t, ""), nil); err == nil {
		t.Error("no iBFT, no netroot=: planned anyway")
	}
}

func TestMountString(t *testing.T) {
	if s := earlyMounts[2].String(); s != "mount -t devtmpfs devtmpfs /dev -o nosuid,mode=0755" {
		t.Errorf("got %q", s)
	}
	m := rootMount("/dev/nbd0p2", "ext4", "noatime,discard,errors=remount-ro", false)
	if m.String() != "mount -t ext4 /dev/nbd0p2 /newroot -o ro,noatime,discard,errors=remount-ro" ||
		m.Flags != unix.MS_RDONLY|unix.MS_NOATIME || m.Data != "discard,errors=remount-ro" {
		t.Errorf("got %q flags %#x data %q", m, m.Flags, m.Data)
	}
	// rootflags=rw wins over the default ro, as with the kernel's own root mount.
	if m := rootMount("/dev/x", "xfs", "rw,nodev", false); m.Flags != unix.MS_NODEV || m.Data != "" {
		t.Errorf("rootflags=rw,nodev: flags %#x data %q", m.Flags, m.Data)
	}
	if rootMount("/dev/x", "xfs", "", true).Flags&unix.MS_RDONLY != 0 {
		t.Error("rw root mounted read-only")
	}
}

func TestCheckInit(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755)
	os.WriteFile(filepath.Join(root, "lib/systemd/systemd"), []byte("#!"), 0o755)
	os.WriteFile(filepath.Join(root, "sbin/notexec"), []byte("x"), 0o644)
	// An absolute symlink must resolve inside the new root, not in the initramfs.
	os.Symlink("/lib/systemd/systemd", filepath.Join(root, "sbin/init"))
	os.Symlink("../lib/systemd/systemd", filepath.Join(root, "sbin/rel"))
	os.Symlink("/nowhere", filepath.Join(root, "sbin/dangling"))
	os.Symlink("/sbin/loop", filepath.Join(root, "sbin/loop"))
	for init, want := range map[string]string{
		"/sbin/init": "", "/sbin/rel": "", "/sbin/missing": "no such file",
		"/sbin/dangling": "no such file", "/sbin/notexec": "not an executable", "/sbin/loop": "too many symlinks",
	} {
		err := checkInit(root, init)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("checkInit(%s) = %v, want %q", init, err, want)
		}
	}
}

func TestStepsPrintable(t *testing.T) {
	b := &boot{}
	var names []string
	for _, s := range b.steps() {
		names = append(names, s.String())
	}
	got := strings.Join(names, " → ")
	for _, want := range []string{"start the daemon → load storage modules → find the iBFT → plan the boot → configure the network → hand the daemon its target → wait for the LUN",
		"find root → mount root → switch root"} {
		if !strings.Contains(got, want) {
			t.Errorf("steps %q lack %q", got, want)
		}
	}
}

func TestCRC32CModulesFollowTheCPU(t *testing.T) {
	if got := crc32cModules([]string{"fpu", "sse4_2", "avx"}); !slices.Equal(got, []string{"crc32c_intel", "crc32c_generic"}) {
		t.Errorf("with sse4_2: %v", got)
	}
	if got := crc32cModules([]string{"fpu", "sse4_1"}); !slices.Equal(got, []string{"crc32c_generic"}) {
		t.Errorf("without sse4_2: %v", got)
	}
}
