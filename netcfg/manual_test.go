package netcfg

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNewManualPlan(t *testing.T) {
	a := netip.MustParseAddr
	p, err := NewManualPlan(Manual{Iface: "eth0", Addr: netip.MustParsePrefix("192.0.2.5/24"), Gateway: a("192.0.2.1"),
		DNS: []netip.Addr{a("192.0.2.53"), a("192.0.2.53")}, Hostname: "h", Targets: []netip.Addr{a("192.0.2.9"), a("198.51.100.9"), a("fd00::9")}})
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, r := range p.Routes {
		routes = append(routes, r.Dst.String()+" via "+r.Via.String())
	}
	if got := strings.Join(routes, ", "); got != "0.0.0.0/0 via 192.0.2.1, 192.0.2.9/32 via invalid IP, 198.51.100.9/32 via 192.0.2.1" {
		t.Errorf("routes %s", got)
	}
	if len(p.DNS) != 1 || len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "fd00::9 is not of the address family") || p.NIC != -1 {
		t.Errorf("plan %+v", p)
	}
	s := p.String()
	for _, want := range []string{"from the kernel command line", "eth0 (named by ip=)", "192.0.2.5/24 (static, ip=)", "hostname: h"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in\n%s", want, s)
		}
	}
	d, err := NewManualPlan(Manual{Mode: ModeDHCP4, Targets: []netip.Addr{a("10.0.2.2")}})
	if err != nil || !strings.Contains(d.String(), "the first Ethernet link with carrier") || !strings.Contains(d.String(), "by DHCPv4") {
		t.Errorf("dhcp plan: %v\n%s", err, d)
	}
	for _, m := range []Manual{
		{},
		{Addr: netip.MustParsePrefix("0.0.0.0/24")},
		{Addr: netip.MustParsePrefix("192.0.2.5/24"), Gateway: a("fd00::1")},
		{Mode: "bootp"},
	} {
		if _, err := NewManualPlan(m); err == nil {
			t.Errorf("%+v: no error", m)
		}
	}
}
