package bootplan

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/isboot/isboot/ibft"
	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/iscsi"
	"github.com/isboot/isboot/netcfg"
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

func TestMakeFromIBFT(t *testing.T) {
	p, err := Make(parse(t, "isboot.debug=2"), table())
	if err != nil {
		t.Fatal(err)
	}
	d := p.ISCSI
	if d.Portals[0] != "10.0.2.2:3260" || d.TargetName != "iqn.2024-01.org.example:disk" || d.LUN != 1 ||
		d.InitiatorName != "iqn.2024-01.org.example:host" || d.CHAPSecret != "s1" || d.RevCHAPSecret != "s2" ||
		p.NIC != 0 || p.Targets != nil {
		t.Errorf("plan %+v", p)
	}
	for _, kv := range p.IBFT {
		if strings.Contains(kv.Value, "s1") || strings.Contains(kv.Value, "s2") {
			t.Errorf("secret in status keys: %v", kv)
		}
	}
}

// A second valid target with the same name and LUN is a second path: the daemon gets
// both portals, the boot-selected one first. A target for another LUN is not a path.
func TestMakeFailoverPortals(t *testing.T) {
	tb := table()
	second := tb.Targets[0]
	second.Index, second.Flags, second.IP, second.Port = 1, ibft.FlagValid, netip.MustParseAddr("10.0.3.2"), 3261
	other := second
	other.Index, other.LUN = 2, 7
	tb.Targets = append(tb.Targets, second, other)
	p, err := Make(parse(t, ""), tb)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.ISCSI.Portals, " "); got != "10.0.2.2:3260 10.0.3.2:3261" {
		t.Errorf("portals %q", got)
	}
}

// The command line wins: netroot= replaces the target and its CHAP (here: none), and
// rd.iscsi.initiator= the name. A garbage iBFT target address does not matter then.
func TestMakeOverrides(t *testing.T) {
	tb := table()
	tb.Targets[0].IP = netip.MustParseAddr("0.0.0.0")
	tb.Targets[0].Port = 0
	p, err := Make(parse(t, "netroot=iscsi:[fd00::2]:::3:iqn.x:y rd.iscsi.initiator=iqn.me"), tb)
	if err != nil {
		t.Fatal(err)
	}
	d := p.ISCSI
	if d.Portals[0] != "[fd00::2]:3260" || d.TargetName != "iqn.x:y" || d.LUN != 3 || d.CHAPUser != "" ||
		d.CHAPSecret != "" || d.InitiatorName != "iqn.me" || len(p.Targets) != 1 || p.Targets[0].String() != "fd00::2" {
		t.Errorf("plan %+v", d)
	}
	if len(p.Notes) != 2 {
		t.Errorf("notes %q", p.Notes)
	}
}

// rd.iscsi.param= digests reach the login; without them the target chooses.
func TestMakeDigests(t *testing.T) {
	p, err := Make(parse(t, "rd.iscsi.param=HeaderDigest=CRC32C rd.iscsi.param=node.conn[0].iscsi.DataDigest=CRC32C,None"), table())
	if err != nil {
		t.Fatal(err)
	}
	if p.ISCSI.HeaderDigest != iscsi.DigestCRC32C || p.ISCSI.DataDigest != iscsi.DigestPreferCRC32C {
		t.Errorf("digests %q %q", p.ISCSI.HeaderDigest, p.ISCSI.DataDigest)
	}
	if s := p.String(); !strings.Contains(s, "HeaderDigest=CRC32C is required") || !strings.Contains(s, "HeaderDigest=CRC32C, DataDigest=CRC32C,None)") {
		t.Errorf("plan does not show the digests:\n%s", s)
	}
	p, err = Make(parse(t, ""), table())
	if err != nil || p.ISCSI.HeaderDigest != iscsi.DigestAuto || p.ISCSI.DataDigest != iscsi.DigestAuto {
		t.Errorf("no rd.iscsi.param: %q %q, %v", p.ISCSI.HeaderDigest, p.ISCSI.DataDigest, err)
	}
}

func TestMakeErrors(t *testing.T) {
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
		{"ip=ibft without iBFT", "ip=ibft netroot=iscsi:10.0.0.1::::iqn.t", nil, "ip=ibft, but the boot has no iBFT"},
		{"iBFT left out", "rd.iscsi.firmware=0", table(), "no iBFT found and no netroot="},
		{"iBFT without initiator", "", noName, "set rd.iscsi.initiator="},
		{"iBFT target without address", "", noAddr, "target0 has no address"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Make(parse(t, tt.cmd), tt.t)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
}

// The plan prints for people and never shows a secret, from the iBFT or netroot=.
func TestPlanStringHasNoSecrets(t *testing.T) {
	for _, cmd := range []string{"", "netroot=iscsi:user:pw-secret:ruser:rpw-secret@10.0.9.9::::iqn.x:y"} {
		p, err := Make(parse(t, cmd), table())
		if err != nil {
			t.Fatal(err)
		}
		s := p.String()
		for _, secret := range []string{"s1", "s2", "pw-secret"} {
			if strings.Contains(s, secret) {
				t.Errorf("%q: plan shows a secret:\n%s", cmd, s)
			}
		}
		if !strings.Contains(s, "mutual CHAP") || !strings.Contains(s, "nic0") {
			t.Errorf("%q: plan:\n%s", cmd, s)
		}
	}
}

// The network half: the boot NIC unless one is named, routes to a netroot= address
// instead of the iBFT targets, a warning for a netroot= host name, isboot.dhcp.
func TestNetwork(t *testing.T) {
	tb := table()
	for _, tt := range []struct {
		cmd   string
		nic   int
		route string // destination of the last route
		warn  string
		renew bool
	}{
		{"", -1, "10.0.2.2/32", "", false},
		{"netroot=iscsi:192.0.2.99::::iqn.x:y isboot.dhcp", -1, "192.0.2.99/32", "", true},
		{"netroot=iscsi:san.example.org::::iqn.x:y", 0, "10.0.2.2/32", `netroot= server "san.example.org" is not an address`, false},
	} {
		np, err := Network(parse(t, tt.cmd), tb, tt.nic)
		if err != nil {
			t.Fatalf("%q: %v", tt.cmd, err)
		}
		last := np.Routes[len(np.Routes)-1]
		if np.NIC != 0 || last.Dst.String() != tt.route || np.Renew != tt.renew ||
			(tt.warn == "") != (len(np.Warnings) == 0) || !strings.Contains(strings.Join(np.Warnings, "\n"), tt.warn) {
			t.Errorf("%q: plan\n%s", tt.cmd, np)
		}
	}
	if _, err := Network(parse(t, ""), tb, 7); err == nil || !strings.Contains(err.Error(), "no nic7") {
		t.Errorf("nic7: %v", err)
	}
	if np, err := Network(parse(t, ""), nil, -1); err != nil || np.Mode != netcfg.ModeDHCP4 || np.Iface != "" {
		t.Errorf("no iBFT, no ip=: %v, want DHCP on the first link with carrier: %+v", err, np)
	}
}

// Without an iBFT (or with rd.iscsi.firmware=0) the command line is the whole plan:
// netroot= the target, ip= the network, rd.iscsi.initiator= or a generated name.
func TestMakeWithoutIBFT(t *testing.T) {
	SystemUUID = func() string { return "5F3C1E2A-0000-4C6E-9A1F-2B3C4D5E6F70" }
	defer func() { SystemUUID = func() string { return "" } }()
	for _, tt := range []struct {
		cmd       string
		tab       *ibft.Table
		mode      netcfg.Mode
		iface     string
		addr      string
		initiator string
		routes    []string
	}{
		{"ip=dhcp netroot=iscsi:10.0.2.2::3261:1:iqn.x:disk", nil, netcfg.ModeDHCP4, "", "invalid Prefix",
			"iqn.2026-01.org.isboot:uuid.5f3c1e2a-0000-4c6e-9a1f-2b3c4d5e6f70", nil},
		{"netroot=iscsi:10.0.2.2::3261:1:iqn.x:disk rd.iscsi.initiator=iqn.i:me", nil, netcfg.ModeDHCP4, "", "invalid Prefix", "iqn.i:me", nil},
		{"ip=eth1:dhcp6 netroot=iscsi:[fd00::2]::3261:1:iqn.x:disk rd.iscsi.initiator=iqn.i:me", nil, netcfg.ModeDHCP6, "eth1", "invalid Prefix", "iqn.i:me", nil},
		{"ip=192.0.2.5::192.0.2.1:24:h:eth0:none netroot=iscsi:198.51.100.9::3261:1:iqn.x:disk rd.iscsi.firmware=0 rd.iscsi.initiator=iqn.i:me",
			table(), netcfg.ModeStatic, "eth0", "192.0.2.5/24", "iqn.i:me", []string{"0.0.0.0/0", "198.51.100.9/32"}},
		// An iBFT and ip=: the iBFT still names the initiator, ip= the network.
		{"ip=eth0:dhcp netroot=iscsi:10.0.2.2::3261:1:iqn.x:disk", table(), netcfg.ModeDHCP4, "eth0", "invalid Prefix", "iqn.2024-01.org.example:host", nil},
	} {
		p, err := Make(parse(t, tt.cmd), tt.tab)
		if err != nil {
			t.Errorf("%q: %v", tt.cmd, err)
			continue
		}
		if p.IP == nil || p.ISCSI.InitiatorName != tt.initiator || p.ISCSI.TargetName != "iqn.x:disk" || !strings.HasSuffix(p.ISCSI.Portals[0], ":3261") {
			t.Errorf("%q: plan\n%s", tt.cmd, p)
		}
		np, err := Network(parse(t, tt.cmd), tt.tab, p.NIC)
		if err != nil {
			t.Errorf("%q: network: %v", tt.cmd, err)
			continue
		}
		var routes []string
		for _, r := range np.Routes {
			routes = append(routes, r.Dst.String())
		}
		if np.Mode != tt.mode || np.Iface != tt.iface || np.Addr.String() != tt.addr || strings.Join(routes, " ") != strings.Join(tt.routes, " ") {
			t.Errorf("%q: network plan %+v", tt.cmd, np)
		}
	}
	SystemUUID = func() string { return "00000000-0000-0000-0000-000000000000" }
	if name, how := GeneratedInitiator(); !strings.HasPrefix(name, "iqn.2026-01.org.isboot:random.") || !strings.Contains(how, "random") {
		t.Errorf("all-zero UUID: %s (%s)", name, how)
	}
}

// An iBFT DHCP address is confirmed by the daemon after the boot, or at boot with
// isboot.dhcp=1, and never with isboot.dhcp=0.
func TestNetworkRenewsIBFTLease(t *testing.T) {
	tb := table()
	tb.NICs[0].Origin = ibft.OriginDHCP
	for cmd, want := range map[string][2]bool{"": {false, true}, "isboot.dhcp=0": {false, false}, "isboot.dhcp": {true, false}} {
		np, err := Network(parse(t, cmd), tb, -1)
		if err != nil || np.Renew != want[0] || np.ConfirmLater != want[1] {
			t.Errorf("%q: renew at boot %v, confirm later %v, want %v (%v)", cmd, np.Renew, np.ConfirmLater, want, err)
		}
	}
}

func TestZonePortals(t *testing.T) {
	in := []string{"[fe80::1]:3260", "[fe80::2%eth7]:3260", "[fec0::2]:3260", "10.0.2.2:3260", "[FE80::a:b]:860", "san.example:3260"}
	want := []string{"[fe80::1%eth0]:3260", "[fe80::2%eth7]:3260", "[fec0::2]:3260", "10.0.2.2:3260", "[fe80::a:b%eth0]:860", "san.example:3260"}
	got := ZonePortals(in, "eth0")
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ZonePortals:\n got %q\nwant %q", got, want)
	}
	if in[0] != "[fe80::1]:3260" {
		t.Errorf("ZonePortals changed its argument: %q", in)
	}
}

// A link-local target from the iBFT stays without a zone in the plan (the link is
// not known yet); one from netroot= keeps the zone it names, and its host route is to
// the address alone.
func TestLinkLocalTargets(t *testing.T) {
	tb := table()
	tb.NICs[0].IP, tb.NICs[0].Prefix, tb.NICs[0].Gateway = netip.MustParseAddr("fe80::10"), 64, netip.Addr{}
	tb.Targets[0].IP = netip.MustParseAddr("fe80::1")
	p, err := Make(parse(t, ""), tb)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.ISCSI.Portals, ","); got != "[fe80::1]:3260" {
		t.Errorf("iBFT portal %q, want [fe80::1]:3260", got)
	}
	c := parse(t, "netroot=iscsi:[fe80::1%eth3]::3261:1:iqn.2024-01.org.example:disk")
	p, err = Make(c, tb)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.ISCSI.Portals, ","); got != "[fe80::1%eth3]:3261" {
		t.Errorf("netroot= portal %q, want [fe80::1%%eth3]:3261", got)
	}
	np, err := Network(c, tb, -1)
	if err != nil {
		t.Fatal(err)
	}
	var dsts []string
	for _, r := range np.Routes {
		if !r.Dst.IsValid() {
			t.Errorf("route %+v has no valid destination", r)
		}
		dsts = append(dsts, r.Dst.String())
	}
	if strings.Join(dsts, ",") != "fe80::1/128" {
		t.Errorf("routes to %q, want fe80::1/128", dsts)
	}
}

// With isboot.multipath, target1 naming the same LUN is a path of its own: its own
// portal, CHAP and NIC (configured too); without it, the plan is the failover one.
func TestMakeMultipathFromIBFT(t *testing.T) {
	tb := table()
	mac, _ := net.ParseMAC("52:54:00:12:34:57")
	tb.NICs = append(tb.NICs, ibft.NIC{Index: 1, Flags: 1, IP: netip.MustParseAddr("10.0.3.15"), Prefix: 24, MAC: mac, PCIBDF: 4 << 3})
	second := tb.Targets[0]
	second.Index, second.Flags, second.IP, second.NIC = 1, ibft.FlagValid, netip.MustParseAddr("10.0.3.2"), 1
	second.CHAPType, second.CHAPName, second.CHAPSecret = ibft.CHAPOneWay, "u2", "s3"
	tb.Targets = append(tb.Targets, second)

	p, err := Make(parse(t, "isboot.multipath=1"), tb)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Paths) != 2 || p.Paths[0].Portals[0] != "10.0.2.2:3260" || p.Paths[1].Portals[0] != "10.0.3.2:3260" ||
		p.Paths[0].CHAPSecret != "s1" || p.Paths[0].RevCHAPSecret != "s2" ||
		p.Paths[1].CHAPUser != "u2" || p.Paths[1].CHAPSecret != "s3" || p.Paths[1].RevCHAPSecret != "" ||
		p.Paths[1].InitiatorName != "iqn.2024-01.org.example:host" || p.Paths[1].LUN != 1 ||
		p.NIC != 0 || len(p.PathNICs) != 1 || p.PathNICs[0] != 1 {
		t.Errorf("paths %+v, NICs %v", p.Paths, p.PathNICs)
	}
	if s := p.String(); strings.Contains(s, "s3") {
		t.Errorf("a secret in the plan:\n%s", s)
	}
	p, err = Make(parse(t, ""), tb)
	if err != nil || p.Paths != nil || len(p.ISCSI.Portals) != 2 {
		t.Errorf("without isboot.multipath: %v, %+v", err, p)
	}
}

// Several netroot= are paths with isboot.multipath, portals to fail over to
// without it; the routes go to every server.
func TestMakeMultipathFromNetroots(t *testing.T) {
	two := "netroot=iscsi:a:b@10.0.2.2::3260:1:iqn.x:y netroot=iscsi:c:d@10.0.3.2::3261:1:iqn.x:y"
	p, err := Make(parse(t, two+" isboot.multipath"), table())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Paths) != 2 || p.Paths[0].CHAPUser != "a" || p.Paths[1].CHAPUser != "c" || p.Paths[1].Portals[0] != "10.0.3.2:3261" ||
		p.ISCSI.Portals[0] != "10.0.2.2:3260" || len(p.Targets) != 2 {
		t.Errorf("plan %+v", p)
	}
	p, err = Make(parse(t, two), table())
	if err != nil || p.Paths != nil || len(p.ISCSI.Portals) != 2 || p.ISCSI.CHAPUser != "a" {
		t.Errorf("failover: %v, %+v", err, p)
	}
}
