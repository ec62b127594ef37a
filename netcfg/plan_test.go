package netcfg

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/isboot/isboot/ibft"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// qemuTable is what iPXE writes for QEMU's user network with a static (origin 1) NIC:
// note the dhcp field, set although the NIC is static.
func qemuTable() *ibft.Table {
	return &ibft.Table{
		Source: "test",
		NICs: []ibft.NIC{{
			Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected,
			IP: netip.MustParseAddr("::ffff:10.0.2.15"), Prefix: 24, Origin: ibft.OriginManual,
			Gateway: netip.MustParseAddr("10.0.2.2"),
			DNS:     [2]netip.Addr{netip.MustParseAddr("10.0.2.3")},
			DHCP:    netip.MustParseAddr("10.0.2.2"),
			MAC:     mac("52:54:00:12:34:56"), PCIBDF: 0x0018, Hostname: "boot1",
		}},
		Targets: []ibft.Target{
			{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("10.0.2.2"), Port: 3260, NIC: 0, Name: "iqn.2025-01.test:near"},
			{Index: 1, Flags: ibft.FlagValid, IP: netip.MustParseAddr("192.0.2.7"), Port: 3260, NIC: 0, Name: "iqn.2025-01.test:far"},
		},
	}
}

func TestNewPlanStatic(t *testing.T) {
	p, err := NewPlan(qemuTable(), 0, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Addr.String(), "10.0.2.15/24"; got != want {
		t.Errorf("Addr = %s, want %s (IPv4-mapped form must be unmapped)", got, want)
	}
	if p.PCI.String() != "00:03.0" || p.PCI.SysfsName() != "0000:00:03.0" {
		t.Errorf("PCI = %s / %s, want 00:03.0", p.PCI, p.PCI.SysfsName())
	}
	want := []Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("10.0.2.2"), Purpose: "default"},
		{Dst: netip.MustParsePrefix("10.0.2.2/32"), Purpose: "target0 iqn.2025-01.test:near"},
		{Dst: netip.MustParsePrefix("192.0.2.7/32"), Via: netip.MustParseAddr("10.0.2.2"), Purpose: "target1 iqn.2025-01.test:far"},
	}
	if len(p.Routes) != len(want) {
		t.Fatalf("routes = %+v, want %+v", p.Routes, want)
	}
	for i := range want {
		if p.Routes[i] != want[i] {
			t.Errorf("route %d = %+v, want %+v", i, p.Routes[i], want[i])
		}
	}
	planSays(t, p, "MAC 52:54:00:12:34:56", "PCI 00:03.0", "10.0.2.15/24",
		"dhcp field 10.0.2.2 ignored: origin is manual",
		"route:    default via 10.0.2.2", "192.0.2.7 via 10.0.2.2", "10.0.2.2 on-link",
		"nameserver 10.0.2.3", "hostname: boot1")
}

func TestNewPlanDHCPOriginAndOverrides(t *testing.T) {
	tb := qemuTable()
	tb.NICs[0].Origin = ibft.OriginDHCP
	p, err := NewPlan(tb, 0, Overrides{Targets: []netip.Addr{netip.MustParseAddr("198.51.100.9")}, Hostname: "over", Renew: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Routes) != 2 || p.Routes[1].Dst.Addr() != netip.MustParseAddr("198.51.100.9") {
		t.Errorf("routes = %+v: want default + the command-line target only", p.Routes)
	}
	planSays(t, p, "DHCP lease, kept as a static address, server 10.0.2.2", "hostname: over", "renew the lease")
}

func TestNewPlanIPv6AndOddities(t *testing.T) {
	tb := &ibft.Table{
		NICs: []ibft.NIC{{
			Index: 1, Flags: ibft.FlagValid | ibft.FlagNICGlobal, IP: netip.MustParseAddr("2001:db8:5::10"), Prefix: 64,
			Origin: ibft.OriginManual, Gateway: netip.MustParseAddr("fe80::1"), MAC: mac("02:00:00:00:00:01"), VLAN: 5,
		}},
		Targets: []ibft.Target{
			{Index: 0, Flags: ibft.FlagValid | ibft.FlagBootSelected, IP: netip.MustParseAddr("2001:db8:99::5"), NIC: 1, Name: "iqn.x:a"},
			{Index: 1, Flags: ibft.FlagValid, IP: netip.MustParseAddr("10.0.0.1"), NIC: 1, Name: "iqn.x:garbage"}, // old iPXE for IPv6
			{Index: 2, Flags: ibft.FlagValid, IP: netip.MustParseAddr("2001:db8:99::6"), NIC: 0, Name: "iqn.x:other-nic"},
		},
	}
	p, err := NewPlan(tb, 1, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if p.LinkOnly {
		t.Error("global flag set, but plan says link scope")
	}
	if len(p.Routes) != 2 || p.Routes[0].Dst.String() != "::/0" || p.Routes[0].OnLink ||
		p.Routes[1].Dst.String() != "2001:db8:99::5/128" || p.Routes[1].Via.String() != "fe80::1" {
		t.Errorf("routes = %+v", p.Routes)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "10.0.0.1") {
		t.Errorf("warnings = %q, want one about the IPv4 target", p.Warnings)
	}
	planSays(t, p, "vlan:     5", "duplicate address detection of 2001:db8:5::10", "global scope")
}

func TestNewPlanHostPrefix(t *testing.T) {
	tb := qemuTable()
	tb.NICs[0].Prefix = 0 // some clouds hand out a /32 with a gateway outside it
	p, err := NewPlan(tb, 0, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Addr.Bits() != 32 || len(p.Warnings) != 1 {
		t.Errorf("Addr = %s, warnings %q: want a /32 and one warning", p.Addr, p.Warnings)
	}
	for _, r := range p.Routes {
		if r.Dst.Addr() == tb.NICs[0].Gateway {
			if r.Via.IsValid() {
				t.Errorf("route to the gateway %+v: want on-link", r)
			}
			continue
		}
		if !r.OnLink || r.Via != tb.NICs[0].Gateway {
			t.Errorf("route %+v: want via the gateway, marked onlink", r)
		}
	}
	planSays(t, p, "(gateway outside the prefix: onlink)")
}

func TestNewPlanErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*ibft.Table)
		nic  int
		want string
	}{
		{"no such nic", func(*ibft.Table) {}, 3, "no nic3 (it has: nic0)"},
		{"invalid", func(t *ibft.Table) { t.NICs[0].Flags = 0 }, 0, "not marked valid"},
		{"no ip", func(t *ibft.Table) { t.NICs[0].IP = netip.Addr{} }, 0, "nic0: ip: no address"},
		{"zero mac", func(t *ibft.Table) { t.NICs[0].MAC = make(net.HardwareAddr, 6) }, 0, "nic0: mac"},
		{"vlan", func(t *ibft.Table) { t.NICs[0].VLAN = 4095 }, 0, "vlan 4095 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := qemuTable()
			tc.edit(tb)
			_, err := NewPlan(tb, tc.nic, Overrides{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLinkName(t *testing.T) {
	for _, tc := range []struct {
		parent string
		vid    uint16
		want   string
	}{{"eth0", 0, "eth0"}, {"eth0", 5, "eth0.5"}, {"enp0s31f6xxxxx", 4094, "vlan4094"}} {
		if got := LinkName(tc.parent, tc.vid); got != tc.want {
			t.Errorf("LinkName(%q, %d) = %q, want %q", tc.parent, tc.vid, got, tc.want)
		}
	}
}

func TestResolvConfIdempotentAndKeepsOthers(t *testing.T) {
	servers := []netip.Addr{netip.MustParseAddr("10.0.2.3"), netip.MustParseAddr("2001:db8::53")}
	old := []byte("search example.org\nnameserver 10.0.2.3\nnameserver 192.0.2.53")
	once := ResolvConf(old, servers, "iBFT nic0")
	want := "# nameservers from the iBFT nic0, written by isboot\nnameserver 10.0.2.3\nnameserver 2001:db8::53\nsearch example.org\nnameserver 192.0.2.53\n"
	if string(once) != want {
		t.Errorf("got:\n%s\nwant:\n%s", once, want)
	}
	if twice := ResolvConf(once, servers, "iBFT nic0"); string(twice) != string(once) {
		t.Errorf("second application changed the file:\n%s", twice)
	}
}

// planSays checks that the printed plan contains every fragment.
func planSays(t *testing.T, p *Plan, frags ...string) {
	t.Helper()
	s := p.String()
	for _, frag := range frags {
		if !strings.Contains(s, frag) {
			t.Errorf("plan text lacks %q:\n%s", frag, s)
		}
	}
}
