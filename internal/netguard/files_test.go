package netguard

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/isboot/isboot/netcfg"
)

func plan(t *testing.T) *netcfg.Plan {
	t.Helper()
	mac, err := net.ParseMAC("52:54:00:AA:BB:01")
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("10.0.2.2")
	return &netcfg.Plan{
		MAC: mac, Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: gw,
		DNS: []netip.Addr{netip.MustParseAddr("10.0.2.3")},
		Routes: []netcfg.Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: gw, Purpose: "default"},
			{Dst: netip.MustParsePrefix("10.0.2.2/32"), Purpose: "target0 iqn.t:disk"},
			{Dst: netip.MustParsePrefix("192.0.2.9/32"), Via: netip.MustParseAddr("10.9.0.1"), OnLink: true, Purpose: "target1 iqn.t:disk"},
		},
	}
}

// sections parses an ini file into "section" -> "key=value" lines, comments dropped.
func sections(content string) map[string][]string {
	out := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(content, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			cur = strings.Trim(l, "[]")
			out[cur] = append(out[cur], "") // several [Route] sections: "" separates them
		default:
			out[cur] = append(out[cur], l)
		}
	}
	return out
}

func TestFilesPaths(t *testing.T) {
	files := Files(plan(t), "eth0")
	var got []string
	for _, f := range files {
		got = append(got, f.Path)
	}
	want := "systemd/network/10-isboot-eth0.network NetworkManager/conf.d/10-isboot-eth0.conf"
	if strings.Join(got, " ") != want {
		t.Errorf("paths %q, want %s", got, want)
	}
}

// systemd-networkd: match the NIC by MAC, keep its configuration, and describe it
// as booted (address, DNS, every route with its gateway and source).
func TestNetworkdFile(t *testing.T) {
	s := sections(string(Files(plan(t), "eth0")[0].Content))
	want := map[string]string{
		"Match":   "|MACAddress=52:54:00:aa:bb:01|Type=ether",
		"Network": "|KeepConfiguration=yes|DHCP=no|DNS=10.0.2.3",
		"Address": "|Address=10.0.2.15/24",
		"Route": "|Gateway=10.0.2.2|PreferredSource=10.0.2.15" +
			"||Destination=10.0.2.2/32|Scope=link|PreferredSource=10.0.2.15" +
			"||Destination=192.0.2.9/32|Gateway=10.9.0.1|GatewayOnLink=yes|PreferredSource=10.0.2.15",
	}
	for sec, w := range want {
		if got := strings.Join(s[sec], "|"); got != w {
			t.Errorf("[%s]: %q, want %q", sec, got, w)
		}
	}
	if len(s) != len(want) {
		t.Errorf("sections %v, want those of %v", s, want)
	}
}

// A VLAN link shares its parent's MAC: it is matched by name and kind instead. A
// link-scope IPv6 address keeps its scope.
func TestNetworkdFileVLANIPv6(t *testing.T) {
	p := plan(t)
	p.VLAN = 5
	p.Addr, p.LinkOnly, p.Routes, p.DNS = netip.MustParsePrefix("fe80::15/64"), true, nil, nil
	s := sections(string(Files(p, "eth0.5")[0].Content))
	if got := strings.Join(s["Match"], "|"); got != "|Name=eth0.5|Type=vlan" {
		t.Errorf("[Match]: %q", got)
	}
	if got := strings.Join(s["Address"], "|"); got != "|Address=fe80::15/64|Scope=link" {
		t.Errorf("[Address]: %q", got)
	}
	if _, ok := s["Route"]; ok {
		t.Errorf("routes without a plan route: %v", s["Route"])
	}
}

// NetworkManager: a [device-*] section of our own marks the NIC unmanaged by MAC and
// name, and keyfile.unmanaged-devices is appended to, not replaced.
func TestNetworkManagerFile(t *testing.T) {
	s := sections(string(Files(plan(t), "eth0")[1].Content))
	if got := strings.Join(s["device-isboot-eth0"], "|"); got != "|match-device=mac:52:54:00:aa:bb:01,interface-name:eth0|managed=0" {
		t.Errorf("[device-isboot-eth0]: %q", got)
	}
	if got := strings.Join(s["keyfile"], "|"); got != "|unmanaged-devices+=mac:52:54:00:aa:bb:01;interface-name:eth0" {
		t.Errorf("[keyfile]: %q", got)
	}
}

func TestSpecValidate(t *testing.T) {
	good := SpecOf(plan(t), "eth0", 2)
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"index", func(s *Spec) { s.Index = 0 }, "netguard: index 0"},
		{"addr", func(s *Spec) { s.Addr = netip.Prefix{} }, "netguard: addr"},
		{"route family", func(s *Spec) {
			s.Routes = append(s.Routes, netcfg.Route{Dst: netip.MustParsePrefix("fd00::1/128")})
		}, "netguard: routes[3]"},
	} {
		s := *good
		s.Routes = append([]netcfg.Route(nil), good.Routes...)
		tt.mod(&s)
		if err := s.Validate(); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q...", tt.name, err, tt.want)
		}
	}
}

func TestRestoreString(t *testing.T) {
	for _, tt := range []struct {
		r    Restore
		want string
	}{
		{Restore{Link: "eth0", LinkUp: true, Addr: netip.MustParsePrefix("10.0.2.15/24"), Routes: []string{"default via 10.0.2.2 dev eth0"}, After: 12 * time.Millisecond},
			"eth0: put back link up, address 10.0.2.15/24, route default via 10.0.2.2 dev eth0 (12ms after the change)"},
		{Restore{Link: "eth0", Failed: []string{"link 2: Link not found"}}, "eth0: put back nothing; failed: link 2: Link not found"},
	} {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%q, want %q", got, tt.want)
		}
		if tt.r.PutBack() != (tt.r.Failed == nil) {
			t.Errorf("%q: PutBack %v", tt.want, tt.r.PutBack())
		}
	}
}
