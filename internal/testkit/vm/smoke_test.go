package vm_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/testkit/testtarget"
	"github.com/isboot/isboot/internal/testkit/vm"
	"github.com/isboot/isboot/internal/testkit/vm/guest"
)

// Set ISBOOT_CAPTURE_FIXTURES=1 to rewrite testdata/ibft/ipxe-*.bin from the
// tables the guests find.
const captureEnv = "ISBOOT_CAPTURE_FIXTURES"

var fixtureDir = filepath.Join("..", "..", "..", "testdata", "ibft")

func TestMain(m *testing.M) { os.Exit(vm.RunTests(m)) }

// guestTable is one iBFT the guest reported.
type guestTable struct {
	source string // "acpi:iBFT" or "mem:0x..."
	data   []byte
}

var reportLine = regexp.MustCompile(`(?m)^ISBOOT-IBFT source=(\S+) b64=(\S*)$`)

// guestOptions vary the smoke guest beyond the VM config.
type guestOptions struct {
	modules []string       // kernel modules (with dependencies) for the guest to load
	cmdline string         // appended to the kernel command line
	during  func(v *vm.VM) // runs once the guest's init is up
}

// bootGuest boots the smoke guest and returns the tables it reported.
func bootGuest(t *testing.T, cfg vm.Config, timeout time.Duration, opts ...guestOptions) []guestTable {
	t.Helper()
	var o guestOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	k := vm.DebianKernel(t)
	a := vm.GuestArchive(t, vm.BuildGo(t, "./testdata/guestinit"))
	if len(o.modules) > 0 {
		if err := a.AddModules(k.Root, k.Version, o.modules...); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Kernel = k.Image
	cfg.Initrd = vm.WriteInitrd(t, a)
	cfg.Cmdline = strings.TrimSpace("console=ttyS0 quiet panic=-1 " + o.cmdline)
	ctx := context.Background()
	v := vm.Start(t, cfg)
	up, err := v.WaitFor(ctx, timeout, `ISBOOT-GUEST-UP uptime=(\S+)`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: guest init running %.1fs after QEMU start (kernel uptime %ss)", cfg.Firmware, v.Elapsed().Seconds(), up[1])
	if o.during != nil {
		o.during(v)
	}
	if _, err := v.WaitFor(ctx, 30*time.Second, `ISBOOT-GUEST-DONE tables=\d+`); err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx, 30*time.Second); err != nil {
		t.Errorf("guest did not power off cleanly: %v", err)
	}
	if m := regexp.MustCompile(guest.ErrorPrefix + `.*`).FindString(v.Console()); m != "" {
		t.Errorf("guest: %s", m)
	}
	report, err := v.Report()
	if err != nil {
		t.Fatal(err)
	}
	var tables []guestTable
	for _, m := range reportLine.FindAllStringSubmatch(string(report), -1) {
		b, err := base64.StdEncoding.DecodeString(m[2])
		if err != nil {
			t.Fatalf("guest report %s: %v", m[1], err)
		}
		tables = append(tables, guestTable{m[1], b})
	}
	return tables
}

// oneTable returns the only table reported, which must come from source.
func oneTable(t *testing.T, tables []guestTable, source string) *ibft.Table {
	t.Helper()
	if len(tables) != 1 || !strings.HasPrefix(tables[0].source, source) {
		var got []string
		for _, tb := range tables {
			got = append(got, tb.source)
		}
		t.Fatalf("guest reported tables %v, want exactly one from %s", got, source)
	}
	tab, err := ibft.Parse(tables[0].data)
	if err != nil {
		t.Fatalf("iBFT from %s: %v", tables[0].source, err)
	}
	if sum := checksum(tables[0].data); sum != 0 {
		t.Errorf("iBFT from %s: checksum byte sum %#x, want 0", tables[0].source, sum)
	}
	return tab
}

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// fixture saves the table in capture mode; otherwise it checks that the
// committed fixture still describes what iPXE writes (the target's TCP port
// is picked at run time, so it is left out of the comparison).
func fixture(t *testing.T, name string, raw []byte, got *ibft.Table) {
	t.Helper()
	path := filepath.Join(fixtureDir, name)
	if os.Getenv(captureEnv) != "" {
		if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("captured %s (%d bytes)", path, len(raw))
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fixture: %v (capture it with %s=1)", err, captureEnv)
	}
	want, err := ibft.Parse(b)
	if err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	norm := func(tab ibft.Table) ibft.Table {
		tab.Source = ""
		tab.Targets = append([]ibft.Target(nil), tab.Targets...)
		for i := range tab.Targets {
			tab.Targets[i].Port = 0
		}
		return tab
	}
	if g, w := norm(*got), norm(*want); !reflect.DeepEqual(g, w) {
		t.Errorf("iBFT differs from fixture %s (recapture with %s=1 if iPXE changed):\n got  %+v\n want %+v", name, captureEnv, g, w)
	}
}

// startTarget starts tgtd on a port from this test's slice of the vm range.
func startTarget(t *testing.T, slot int, iqn string, chap, mutual testtarget.CHAP) *testtarget.Tgtd {
	t.Helper()
	lo := 13300 + 10*slot
	return testtarget.StartTgtd(t, testtarget.TgtdOptions{
		Port:        testtarget.FreePort(t, lo, lo+9),
		ControlPort: 20 + slot,
		IQN:         iqn,
		Size:        8 << 20,
		CHAP:        chap,
		MutualCHAP:  mutual,
	})
}

func port(t *testing.T, tgt *testtarget.Tgtd) int {
	_, p, err := net.SplitHostPort(tgt.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(p, &n)
	return n
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// checkTarget asserts the table names the target and NIC the guest booted with.
func checkTarget(t *testing.T, tab *ibft.Table, iqn string, tcpPort int, mac string) (ibft.NIC, ibft.Target) {
	t.Helper()
	nic, tgt, err := tab.Boot()
	if err != nil {
		t.Fatal(err)
	}
	if tgt.Name != iqn || tgt.IP != mustAddr(vm.HostAddr) || int(tgt.Port) != tcpPort || tgt.LUN != 1 {
		t.Errorf("target %s %v:%d lun %d, want %s %s:%d lun 1", tgt.Name, tgt.IP, tgt.Port, tgt.LUN, iqn, vm.HostAddr, tcpPort)
	}
	if nic.MAC.String() != mac {
		t.Errorf("NIC MAC %s, want %s", nic.MAC, mac)
	}
	return nic, tgt
}

// TestSmokeDirect boots -kernel/-initrd with an iBFT injected by -acpitable;
// the guest must see exactly those bytes in /sys/firmware/acpi/tables/iBFT.
func TestSmokeDirect(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	want := &ibft.Table{
		OEMID: "ISBOOT", OEMTableID: "SMOKE",
		Initiator: ibft.Initiator{Flags: ibft.FlagValid | ibft.FlagBootSelected, Name: "iqn.2026-01.org.isboot.test:direct"},
		NICs: []ibft.NIC{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: mustAddr("10.0.2.15"), Prefix: 24,
			Origin: ibft.OriginManual, Gateway: mustAddr("10.0.2.2"),
			MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, PCIBDF: 3 << 3,
		}},
		Targets: []ibft.Target{{
			Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: mustAddr("10.0.2.2"), Port: 3260,
			LUN: 1, LUNRaw: [8]byte{0, 1}, Name: "iqn.2026-01.org.isboot.test:disk",
		}},
	}
	raw, err := ibft.Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ibft.bin")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tables := bootGuest(t, vm.Config{Firmware: vm.Direct, ACPITables: []string{file}}, 90*time.Second)
	oneTable(t, tables, "acpi:iBFT")
	if !bytes.Equal(tables[0].data, raw) {
		t.Errorf("guest's ACPI iBFT differs from the injected table:\n got  %x\n want %x", tables[0].data, raw)
	}
}

// TestSmokeDirectNetwork loads the NIC driver the archive's AddModules packed
// (virtio_pci, virtio_net and dependencies), brings up the network and
// answers the host through a HostFwd rule.
func TestSmokeDirectNetwork(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	hostPort := testtarget.FreePort(t, 13340, 13349)
	tables := bootGuest(t, vm.Config{
		Firmware: vm.Direct,
		NIC:      &vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:59"},
		HostFwd:  []string{fmt.Sprintf("tcp:127.0.0.1:%d-:8080", hostPort)},
	}, 90*time.Second, guestOptions{
		modules: []string{"virtio_pci", "virtio_net"},
		cmdline: "smoke.net=10.0.2.15/24,8080",
		during: func(v *vm.VM) {
			if _, err := v.WaitFor(context.Background(), 60*time.Second, `ISBOOT-GUEST-LISTENING`); err != nil {
				t.Fatal(err)
			}
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", hostPort), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("reading the guest's answer: %v", err)
			}
			if want := "ISBOOT-GUEST-NET eth0 52:54:00:12:34:59 10.0.2.15/24\n"; line != want {
				t.Errorf("guest answered %q, want %q", line, want)
			}
		},
	})
	if len(tables) != 0 {
		t.Errorf("guest found %d iBFTs, want none", len(tables))
	}
}

// ipxeCase is one iPXE boot: firmware, NIC and script, the target tgtd
// serves, where the guest must find the iBFT and what it must say.
type ipxeCase struct {
	name     string
	fw       vm.Firmware
	nic      vm.NIC
	ipxe     vm.IPXE // Target is filled in with the tgtd's port
	chap     testtarget.CHAP
	mutual   testtarget.CHAP
	source   string // "mem:" (BIOS low-memory scan) or "acpi:iBFT"
	fixture  string
	checkNIC func(t *testing.T, nic ibft.NIC, tab *ibft.Table, tgt ibft.Target)
}

var ipxeCases = []ipxeCase{{
	// DHCP and a sanhook of a tgtd LUN; iPXE leaves the iBFT in low memory.
	name: "bios", fw: vm.BIOS, nic: vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:56"},
	source: "mem:", fixture: "ipxe-bios.bin", checkNIC: dhcpLease,
}, {
	// CHAP and mutual CHAP: iPXE records both accounts.
	name: "bios-chap", fw: vm.BIOS, nic: vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:57"},
	ipxe:   vm.IPXE{InitiatorIQN: "iqn.2026-01.org.isboot.test:initiator-chap"},
	chap:   testtarget.CHAP{User: "isboot-user", Secret: "isboot-secret-1"},
	mutual: testtarget.CHAP{User: "isboot-target", Secret: "isboot-secret-2"},
	source: "mem:", fixture: "ipxe-bios-chap.bin",
	checkNIC: func(t *testing.T, nic ibft.NIC, tab *ibft.Table, tgt ibft.Target) {
		dhcpLease(t, nic, tab, tgt)
		if tgt.CHAPType != ibft.CHAPMutual || tgt.CHAPName != "isboot-user" || tgt.CHAPSecret != "isboot-secret-1" ||
			tgt.RevCHAPName != "isboot-target" || tgt.RevCHAPSecret != "isboot-secret-2" {
			t.Errorf("target CHAP type %d names %q/%q, want mutual CHAP with the accounts used (secrets compared, not shown)",
				tgt.CHAPType, tgt.CHAPName, tgt.RevCHAPName)
		}
		if tab.Initiator.Name != "iqn.2026-01.org.isboot.test:initiator-chap" {
			t.Errorf("initiator %q", tab.Initiator.Name)
		}
	},
}, {
	// An e1000 with a custom MAC configured by hand (no dhcp command), and a hostname.
	name: "bios-static", fw: vm.BIOS, nic: vm.NIC{Model: "e1000", MAC: "02:15:b0:07:e1:00"},
	ipxe: vm.IPXE{
		Static:   &vm.StaticIP{IP: "10.0.2.77", Netmask: "255.255.255.0", Gateway: "10.0.2.2", DNS: "10.0.2.3"},
		Hostname: "isboot-static",
	},
	source: "mem:", fixture: "ipxe-bios-static-e1000.bin",
	checkNIC: func(t *testing.T, nic ibft.NIC, _ *ibft.Table, _ ibft.Target) {
		if nic.IP != mustAddr("10.0.2.77") || nic.Prefix != 24 || nic.Origin != ibft.OriginManual ||
			nic.Gateway != mustAddr("10.0.2.2") || nic.Hostname != "isboot-static" {
			t.Errorf("NIC %v/%d origin %d gw %v hostname %q, want 10.0.2.77/24 origin 1 gw 10.0.2.2 isboot-static",
				nic.IP, nic.Prefix, nic.Origin, nic.Gateway, nic.Hostname)
		}
	},
}, {
	// OVMF and iPXE's EFI ROM: the iBFT is an ACPI table.
	name: "uefi", fw: vm.UEFI, nic: vm.NIC{Model: "virtio-net-pci", MAC: "52:54:00:12:34:58"},
	source: "acpi:iBFT", fixture: "ipxe-uefi.bin", checkNIC: dhcpLease,
}}

// dhcpLease checks the NIC holds QEMU's DHCP lease.
func dhcpLease(t *testing.T, nic ibft.NIC, _ *ibft.Table, _ ibft.Target) {
	if nic.IP != mustAddr("10.0.2.15") || nic.Prefix != 24 || nic.Origin != ibft.OriginDHCP || nic.DHCP != mustAddr("10.0.2.2") {
		t.Errorf("NIC %v/%d origin %d dhcp %v, want QEMU's lease 10.0.2.15/24 origin 3 from 10.0.2.2",
			nic.IP, nic.Prefix, nic.Origin, nic.DHCP)
	}
}

// TestSmokeIPXE boots the smoke guest through iPXE for every case; the guest
// must find the iBFT iPXE wrote for the hooked target, and the table must
// match the committed fixture (ISBOOT_CAPTURE_FIXTURES=1 rewrites them).
func TestSmokeIPXE(t *testing.T) {
	vm.Require(t)
	for slot, c := range ipxeCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			iqn := "iqn.2026-01.org.isboot.test:" + c.name
			tgt := startTarget(t, slot, iqn, c.chap, c.mutual)
			ipxe := c.ipxe
			ipxe.Target = &vm.SANTarget{Port: port(t, tgt), LUN: 1, IQN: iqn}
			if c.chap.User != "" {
				ipxe.Target.CHAP = &vm.CHAP{User: c.chap.User, Secret: c.chap.Secret,
					ReverseUser: c.mutual.User, ReverseSecret: c.mutual.Secret}
			}
			nic := c.nic
			timeout := 180 * time.Second
			if c.fw == vm.UEFI {
				timeout = 240 * time.Second
			}
			tables := bootGuest(t, vm.Config{Firmware: c.fw, NIC: &nic, IPXE: ipxe}, timeout)
			tab := oneTable(t, tables, c.source)
			n, target := checkTarget(t, tab, iqn, port(t, tgt), c.nic.MAC)
			c.checkNIC(t, n, tab, target)
			fixture(t, c.fixture, tables[0].data, tab)
		})
	}
}
