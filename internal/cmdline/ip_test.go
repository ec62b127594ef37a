package cmdline

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseIP(t *testing.T) {
	a := netip.MustParseAddr
	pfx := netip.MustParsePrefix
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	for _, tt := range []struct {
		in   string
		want IPConfig
	}{
		{"dhcp", IPConfig{Method: IPDHCP}},
		{"on", IPConfig{Method: IPDHCP}},
		{"any", IPConfig{Method: IPDHCP}},
		{"dhcp6", IPConfig{Method: IPDHCP6}},
		{"auto6", IPConfig{Method: IPAuto6}},
		{"ibft", IPConfig{Method: IPIBFT}},
		{"eth0:dhcp", IPConfig{Iface: "eth0", Method: IPDHCP}},
		{"enp1s0:dhcp6:9000", IPConfig{Iface: "enp1s0", Method: IPDHCP6, MTU: 9000}},
		{"eth1:on::52:54:00:12:34:56", IPConfig{Iface: "eth1", Method: IPDHCP, MAC: mac}},
		{"10.0.2.15::10.0.2.2:24::eth0:none:1400:52:54:00:12:34:56",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2"), MTU: 1400, MAC: mac}},
		{"10.0.2.15::10.0.2.2:255.255.255.0:host1:eth0:none",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2"), Hostname: "host1"}},
		{"10.0.2.15::10.0.2.2:24::eth0:off",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2")}},
		{"10.0.2.15::10.0.2.2:24:::none",
			IPConfig{Method: IPStatic, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2")}},
		{"192.0.2.5:192.0.2.1:192.0.2.1:16:h:eth2:none:1500",
			IPConfig{Iface: "eth2", Method: IPStatic, Addr: pfx("192.0.2.5/16"), Peer: a("192.0.2.1"), Gateway: a("192.0.2.1"), Hostname: "h", MTU: 1500}},
		{"10.0.2.15::10.0.2.2:24::eth0:none:10.0.2.3:10.0.2.4",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2"), DNS: []netip.Addr{a("10.0.2.3"), a("10.0.2.4")}}},
		{"[fd00::15]::[fd00::1]:64:h6:eth0:none",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("fd00::15/64"), Gateway: a("fd00::1"), Hostname: "h6"}},
		{"[fd00::15]::[fd00::1]:64:h6:eth0:none:[fd00::53]",
			IPConfig{Iface: "eth0", Method: IPStatic, Addr: pfx("fd00::15/64"), Gateway: a("fd00::1"), Hostname: "h6", DNS: []netip.Addr{a("fd00::53")}}},
		{"10.0.2.15::10.0.2.2:24::eth0:dhcp",
			IPConfig{Iface: "eth0", Method: IPDHCP, Addr: pfx("10.0.2.15/24"), Gateway: a("10.0.2.2")}},
	} {
		got, err := ParseIP(tt.in)
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseIPErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"ip=", "ip: empty value"},
		{"ip=bootp", `ip: "bootp": want dhcp`},
		{"ip=none", `ip: "none": want dhcp`},
		{"ip=:dhcp", "ip: empty interface name"},
		{"ip=eth0:none", "ip: <iface>:none"},
		{"ip=eth0:dhcp:20", `ip: mtu "20"`},
		{"ip=10.0.2.15::10.0.2.2:24::eth0:static", `ip: method "static"`},
		{"ip=10.0.2.x::10.0.2.2:24::eth0:none", `ip: client address "10.0.2.x"`},
		{"ip=10.0.2.15::gw:24::eth0:none", `ip: gateway "gw"`},
		{"ip=10.0.2.15::[fd00::1]:24::eth0:none", "ip: gateway fd00::1 is not of the client address's family"},
		{"ip=10.0.2.15::10.0.2.2:33::eth0:none", "ip: netmask /33"},
		{"ip=10.0.2.15::10.0.2.2:255.0.255.0::eth0:none", `ip: netmask "255.0.255.0" is not a contiguous`},
		{"ip=::10.0.2.2:24::eth0:none", "ip: static configuration without a client address"},
		{"ip=[fd00::15", "ip: missing ']'"},
		{"ip=eth0:dhcp::52:54:00:12:34", `ip: mac "52" is not an Ethernet address`},
		{"ip=eth0:dhcp::zz:54:00:12:34:56", `ip: mac "zz:54:00:12:34:56"`},
		{"ip=10.0.2.15::10.0.2.2:24::eth0:none:10.0.2.3:dns2", `ip: dns "dns2"`},
		{"ip=1:2:3", `ip: "1:2:3": want`},
	} {
		_, err := ParseString(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want %q", tt.in, err, tt.want)
		}
		if fatal, _ := Split(err); fatal == nil {
			t.Errorf("%q: a malformed ip= must stop the boot", tt.in)
		}
	}
}

// Several netroot= keep their order; several ip= too; the iBFT switches; unknown
// rd.iscsi.* keys are warnings that never quote the value.
func TestParseDracutBoot(t *testing.T) {
	c, err := ParseString("ip=dhcp ip=eth1:dhcp6 rd.iscsi.firmware=0 netroot=iscsi:10.0.2.2::3260:1:iqn.a:one " +
		"netroot=iscsi:[fd00::2]::3261:1:iqn.a:one rd.iscsi.initiator=iqn.2026-01.org.example:h")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Netroots) != 2 || c.Netroot != c.Netroots[0] || c.Netroots[0].Server != "10.0.2.2" || c.Netroots[1].Server != "fd00::2" {
		t.Errorf("netroots %v, first %v", c.Netroots, c.Netroot)
	}
	if len(c.IP) != 2 || c.IP[0].Method != IPDHCP || c.IP[1].Iface != "eth1" || c.IP[1].Method != IPDHCP6 {
		t.Errorf("ip %+v", c.IP)
	}
	if !c.FirmwareSet || c.Firmware {
		t.Errorf("rd.iscsi.firmware=0: set %v, value %v", c.FirmwareSet, c.Firmware)
	}
	if c, _ := ParseString("rd.iscsi.ibft"); !c.FirmwareSet || !c.Firmware {
		t.Error("bare rd.iscsi.ibft does not ask for the iBFT")
	}
	c, err = ParseString("rd.iscsi.password=hunter2-secret rd.iscsi.target.ip=10.0.0.1 rd.iscsi.firmware=1 root=LABEL=r")
	fatal, warnings := Split(err)
	if fatal != nil || len(warnings) != 2 || c.Root.Value != "r" {
		t.Fatalf("fatal %v, warnings %v", fatal, warnings)
	}
	for _, w := range warnings {
		if strings.Contains(w.Error(), "hunter2") || strings.Contains(w.Error(), "10.0.0.1") || !strings.Contains(w.Error(), "not supported by isboot") {
			t.Errorf("warning %q", w)
		}
	}
}
