package netcfg

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/isboot/isboot/ibft"
)

// NetConf renders the configured link as the file initramfs-tools' network setup
// leaves in /run for the real root: klibc ipconfig's /run/net-<link>.conf (DEVICE,
// PROTO, IPV4ADDR, IPV4NETMASK, IPV4GATEWAY, IPV4DNS0/1, HOSTNAME, ...) for an IPv4
// address, and for an IPv6 one /run/net6-<link>.conf as Debian and Ubuntu's DHCPv6
// hook writes it (DEVICE6, IPV6PROTO, IPV6ADDR, IPV6NETMASK, IPV6DNS0/1). Scripts
// source it (initramfs-tools' configure_networking takes it as "already configured"),
// and cloud-init reads it in the real root. name is the file name; DNS servers of
// the other address family are left out (they are in resolv.conf).
func (p *Plan) NetConf(link string) (name string, content []byte) {
	ip := p.Addr.Addr()
	none := "::"
	if ip.Is4() {
		none = "0.0.0.0" // how ipconfig spells "no address"
	}
	dns := []string{none, none}
	n := 0
	for _, d := range p.DNS {
		if d.Is4() == ip.Is4() && n < len(dns) {
			dns[n] = d.String()
			n++
		}
	}
	gateway := none
	if p.Gateway.IsValid() {
		gateway = p.Gateway.String()
	}
	dhcp := p.Origin == ibft.OriginDHCP
	var fields [][2]string
	if ip.Is4() {
		name = "net-" + link + ".conf"
		fields = [][2]string{{"DEVICE", link}, {"PROTO", pick(dhcp, "dhcp", "none")}, {"IPV4ADDR", ip.String()},
			{"IPV4BROADCAST", broadcast(p.Addr).String()}, {"IPV4NETMASK", net.IP(net.CIDRMask(p.Addr.Bits(), 32)).String()},
			{"IPV4GATEWAY", gateway}, {"IPV4DNS0", dns[0]}, {"IPV4DNS1", dns[1]},
			{"HOSTNAME", p.Hostname}, {"DNSDOMAIN", ""}, {"DOMAINSEARCH", ""}}
	} else {
		name = "net6-" + link + ".conf"
		fields = [][2]string{{"DEVICE6", link}, {"IPV6PROTO", pick(dhcp, "dhcp6", "none")}, {"IPV6ADDR", ip.String()},
			{"IPV6NETMASK", fmt.Sprint(p.Addr.Bits())}, {"IPV6GATEWAY", gateway}, {"IPV6DNS0", dns[0]}, {"IPV6DNS1", dns[1]},
			{"IPV6DOMAINSEARCH", ""}, {"HOSTNAME", p.Hostname}, {"DNSDOMAIN", ""}}
	}
	var b bytes.Buffer
	for _, f := range fields {
		// Single quotes, as ipconfig writes them: the file is sourced by sh.
		fmt.Fprintf(&b, "%s='%s'\n", f[0], strings.ReplaceAll(f[1], "'", `'\''`))
	}
	return name, b.Bytes()
}

func pick(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(pfx netip.Prefix) netip.Addr {
	a := pfx.Masked().Addr().As4()
	host := ^uint32(0) >> pfx.Bits()
	if pfx.Bits() == 0 {
		host = ^uint32(0)
	}
	for i := range 4 {
		a[i] |= byte(host >> (24 - 8*i))
	}
	return netip.AddrFrom4(a)
}
