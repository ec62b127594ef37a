package initproc

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
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

func TestMakePlanFromIBFT(t *testing.T) {
	p, err := MakePlan(parse(t, "isboot.debug=2"), table())
	if err != nil {
		t.Fatal(err)
	}
	d := p.Daemon
	if d.Portals[0] != "10.0.2.2:3260" || d.Target != "iqn.2024-01.org.example:disk" || d.LUN != 1 ||
		d.Initiator != "iqn.2024-01.org.example:host" || d.CHAPSecret != "s1" || d.RevCHAPSecret != "s2" ||
		d.Debug != 2 || p.NIC != 0 || p.Targets != nil {
		t.Errorf("plan %+v", p)
	}
	for _, kv := range d.IBFT {
		if strings.Contains(kv.Value, "s1") || strings.Contains(kv.Value, "s2") {
			t.Errorf("secret in status keys: %v", kv)
		}
	}
}

// A second valid target with the same name and LUN is a second path: the daemon gets
// both portals, the boot-selected one first. A target for another LUN is not a path.
func TestMakePlanFailoverPortals(t *testing.T) {
	tb := table()
	second := tb.Targets[0]
	second.Index, second.Flags, second.IP, second.Port = 1, ibft.FlagValid, netip.MustParseAddr("10.0.3.2"), 3261
	other := second
	other.Index, other.LUN = 2, 7
	tb.Targets = append(tb.Targets, second, other)
	p, err := MakePlan(parse(t, ""), tb)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Daemon.Portals, " "); got != "10.0.2.2:3260 10.0.3.2:3261" {
		t.Errorf("portals %q", got)
	}
}

// The command line wins: netroot= replaces the target and its CHAP (here: none), and
// rd.iscsi.initiator= the name. A garbage iBFT target address does not matter then.
func TestMakePlanOverrides(t *testing.T) {
	tb := table()
	tb.Targets[0].IP = netip.MustParseAddr("0.0.0.0")
	tb.Targets[0].Port = 0
	p, err := MakePlan(parse(t, "netroot=iscsi:[fd00::2]:::3:iqn.x:y rd.iscsi.initiator=iqn.me"), tb)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Daemon
	if d.Portals[0] != "[fd00::2]:3260" || d.Target != "iqn.x:y" || d.LUN != 3 || d.CHAPUser != "" ||
		d.CHAPSecret != "" || d.Initiator != "iqn.me" || len(p.Targets) != 1 || p.Targets[0].String() != "fd00::2" {
		t.Errorf("plan %+v", d)
	}
	if len(p.Notes) != 2 {
		t.Errorf("notes %q", p.Notes)
	}
}

func TestMakePlanErrors(t *testing.T) {
	noName := table()
	noName.Initiator.Name = ""
	noAddr := table()
	noAddr.Targets[0].IP = netip.Addr{}
	for _, tt := range []struct {
		name, cmd string
		t         *ibft.Table
		want      string
	}{
		{"nothing", "", nil, "no iBFT found and no netroot="},
		{"netroot without iBFT", "netroot=iscsi:10.0.0.1::::iqn.t rd.iscsi.initiator=iqn.i", nil, "no usable NIC in the iBFT"},
		{"no initiator", "netroot=iscsi:10.0.0.1::::iqn.t", nil, "set rd.iscsi.initiator="},
		{"iBFT without initiator", "", noName, "set rd.iscsi.initiator="},
		{"iBFT target without address", "", noAddr, "target0 has no address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MakePlan(parse(t, tt.cmd), tt.t)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
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
