package netcfg

import (
	"net/netip"
	"testing"

	"github.com/isboot/isboot/ibft"
)

// The file initramfs-tools' ipconfig leaves for the real root, and its IPv6 sibling.
func TestNetConf(t *testing.T) {
	v4, err := NewPlan(qemuTable(), 0, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	dhcp := *v4
	dhcp.Origin, dhcp.Hostname, dhcp.Addr = ibft.OriginDHCP, "it's", netip.MustParsePrefix("10.1.2.3/20")
	dhcp.DNS = []netip.Addr{netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("10.0.2.3"), netip.MustParseAddr("10.0.2.4")}
	v6 := Plan{Addr: netip.MustParsePrefix("2001:db8::15/64"), Gateway: netip.MustParseAddr("fe80::1"),
		DNS: []netip.Addr{netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("10.0.2.3")}}
	for _, tc := range []struct {
		p          *Plan
		name, want string
	}{
		{v4, "net-eth0.conf", `DEVICE='eth0'
PROTO='none'
IPV4ADDR='10.0.2.15'
IPV4BROADCAST='10.0.2.255'
IPV4NETMASK='255.255.255.0'
IPV4GATEWAY='10.0.2.2'
IPV4DNS0='10.0.2.3'
IPV4DNS1='0.0.0.0'
HOSTNAME='boot1'
DNSDOMAIN=''
DOMAINSEARCH=''
`},
		{&dhcp, "net-eth0.conf", `DEVICE='eth0'
PROTO='dhcp'
IPV4ADDR='10.1.2.3'
IPV4BROADCAST='10.1.15.255'
IPV4NETMASK='255.255.240.0'
IPV4GATEWAY='10.0.2.2'
IPV4DNS0='10.0.2.3'
IPV4DNS1='10.0.2.4'
HOSTNAME='it'\''s'
DNSDOMAIN=''
DOMAINSEARCH=''
`},
		{&v6, "net6-eth0.conf", `DEVICE6='eth0'
IPV6PROTO='none'
IPV6ADDR='2001:db8::15'
IPV6NETMASK='64'
IPV6GATEWAY='fe80::1'
IPV6DNS0='2001:db8::53'
IPV6DNS1='::'
IPV6DOMAINSEARCH=''
HOSTNAME=''
DNSDOMAIN=''
`},
	} {
		name, got := tc.p.NetConf("eth0")
		if name != tc.name || string(got) != tc.want {
			t.Errorf("NetConf for %s = %s:\n%s\nwant %s:\n%s", tc.p.Addr, name, got, tc.name, tc.want)
		}
	}
	for pfx, want := range map[string]string{"10.0.0.1/32": "10.0.0.1", "10.0.0.1/0": "255.255.255.255", "192.168.7.9/23": "192.168.7.255"} {
		if got := broadcast(netip.MustParsePrefix(pfx)).String(); got != want {
			t.Errorf("broadcast(%s) = %s, want %s", pfx, got, want)
		}
	}
}
