package cmdline

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// IPMethod is how dracut's ip= configures an interface.
type IPMethod string

const (
	IPDHCP   IPMethod = "dhcp"   // DHCPv4 (dracut's dhcp, on, any, single-dhcp)
	IPDHCP6  IPMethod = "dhcp6"  // DHCPv6, a stateful address (IA_NA)
	IPAuto6  IPMethod = "auto6"  // IPv6 stateless autoconfiguration from router advertisements
	IPStatic IPMethod = "static" // the address given (dracut's none, off)
	IPIBFT   IPMethod = "ibft"   // as the iBFT says
)

// IPConfig is one ip= key in one of dracut.cmdline(7)'s forms:
//
//	ip={dhcp|on|any|dhcp6|auto6|ibft}
//	ip=<interface>:{dhcp|on|any|dhcp6|auto6}[:[<mtu>][:<macaddr>]]
//	ip=<client-IP>:[<peer>]:<gateway-IP>:<netmask>:<client_hostname>:<interface>:{none|off|dhcp|on|any|dhcp6|auto6|ibft}[:[<mtu>][:<macaddr>]]
//	ip=<client-IP>:[<peer>]:<gateway-IP>:<netmask>:<client_hostname>:<interface>:{none|off|...}[:[<dns1>][:<dns2>]]
//
// IPv6 addresses stand in brackets.
type IPConfig struct {
	Iface    string // "": any interface (the first with carrier)
	Method   IPMethod
	Addr     netip.Prefix // IPStatic, or the address a DHCP form was given besides
	Peer     netip.Addr
	Gateway  netip.Addr
	Hostname string
	MTU      int
	MAC      net.HardwareAddr
	DNS      []netip.Addr
}

// String is the configuration in dracut's words, for the log.
func (c IPConfig) String() string {
	if c.Method != IPStatic && !c.Addr.IsValid() {
		if c.Iface == "" {
			return "ip=" + string(c.Method)
		}
		return "ip=" + c.Iface + ":" + string(c.Method)
	}
	s := fmt.Sprintf("ip=%s gateway %s", c.Addr, orDash(c.Gateway))
	if c.Iface != "" {
		s += " on " + c.Iface
	}
	if c.Method != IPStatic {
		s += " " + string(c.Method)
	}
	return s
}

func orDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// methodOf reads dracut's autoconf word; "" when it names none isboot knows.
func methodOf(s string) IPMethod {
	switch s {
	case "dhcp", "on", "any", "single-dhcp":
		return IPDHCP
	case "dhcp6":
		return IPDHCP6
	case "auto6":
		return IPAuto6
	case "ibft":
		return IPIBFT
	case "none", "off":
		return IPStatic
	}
	return ""
}

// ParseIP parses one ip= value.
func ParseIP(v string) (IPConfig, error) {
	if v == "" {
		return IPConfig{}, errors.New("empty value")
	}
	f, err := ipFields(v)
	if err != nil {
		return IPConfig{}, err
	}
	// dracut spells the MAC with colons, the field separator: six fields after the
	// MTU field make one MAC.
	if len(f) >= 2 && methodOf(f[1]) != "" && len(f) == 3+6 {
		f = append(f[:3], strings.Join(f[3:], ":"))
	} else if len(f) == 8+6 {
		f = append(f[:8], strings.Join(f[8:], ":"))
	}
	switch {
	case len(f) == 1:
		m := methodOf(f[0])
		if m == "" || m == IPStatic {
			return IPConfig{}, fmt.Errorf("%q: want dhcp, on, any, dhcp6, auto6, ibft, <iface>:dhcp or the static form", v)
		}
		return IPConfig{Method: m}, nil
	case methodOf(f[1]) != "": // a peer address is never a method word
		c := IPConfig{Iface: f[0], Method: methodOf(f[1])}
		if c.Iface == "" {
			return IPConfig{}, errors.New("empty interface name before the method")
		}
		if c.Method == IPStatic || c.Method == IPIBFT {
			return IPConfig{}, fmt.Errorf("<iface>:%s: want dhcp, on, any, dhcp6 or auto6", f[1])
		}
		return c, c.mtuMAC(f[2:])
	case len(f) >= 7:
		return parseStaticIP(f)
	}
	return IPConfig{}, fmt.Errorf("%q: want dhcp, dhcp6, <iface>:dhcp or <client>:[<peer>]:<gw>:<netmask>:<host>:<iface>:none", v)
}

func parseStaticIP(f []string) (IPConfig, error) {
	c := IPConfig{Hostname: f[4], Iface: f[5], Method: methodOf(f[6])}
	if c.Method == "" {
		return IPConfig{}, fmt.Errorf("method %q: want none, off, dhcp, on, any, dhcp6, auto6 or ibft", f[6])
	}
	if len(f) > 9 {
		return IPConfig{}, fmt.Errorf("%d fields: want at most 9", len(f))
	}
	var client netip.Addr
	var err error
	if f[0] != "" {
		if client, err = netip.ParseAddr(f[0]); err != nil || client.Zone() != "" {
			return IPConfig{}, fmt.Errorf("client address %q is not an IP address", f[0])
		}
	}
	for _, a := range []struct {
		name string
		s    string
		dst  *netip.Addr
	}{{"peer", f[1], &c.Peer}, {"gateway", f[2], &c.Gateway}} {
		if a.s == "" {
			continue
		}
		if *a.dst, err = netip.ParseAddr(a.s); err != nil || a.dst.Zone() != "" {
			return IPConfig{}, fmt.Errorf("%s %q is not an IP address", a.name, a.s)
		}
		if client.IsValid() && a.dst.Is4() != client.Is4() {
			return IPConfig{}, fmt.Errorf("%s %s is not of the client address's family", a.name, a.s)
		}
	}
	if client.IsValid() {
		bits, err := netmaskBits(f[3], client)
		if err != nil {
			return IPConfig{}, err
		}
		c.Addr = netip.PrefixFrom(client, bits)
	} else if c.Method == IPStatic {
		return IPConfig{}, errors.New("static configuration without a client address")
	}
	if c.Method == IPStatic && client.IsUnspecified() {
		return IPConfig{}, fmt.Errorf("client address %s is unspecified", client)
	}
	rest := f[7:]
	if len(rest) > 0 && rest[0] != "" {
		if _, err := netip.ParseAddr(rest[0]); err == nil {
			// The DNS form: both fields are addresses.
			for _, s := range rest {
				if s == "" {
					continue
				}
				d, err := netip.ParseAddr(s)
				if err != nil {
					return IPConfig{}, fmt.Errorf("dns %q is not an IP address", s)
				}
				c.DNS = append(c.DNS, d)
			}
			return c, nil
		}
	}
	return c, c.mtuMAC(rest)
}

// mtuMAC reads the optional [<mtu>][:<macaddr>] tail.
func (c *IPConfig) mtuMAC(f []string) error {
	if len(f) > 0 && f[0] != "" {
		n, err := strconv.Atoi(f[0])
		if err != nil || n < 68 || n > 65535 {
			return fmt.Errorf("mtu %q: want 68..65535", f[0])
		}
		c.MTU = n
	}
	if len(f) > 1 && f[1] != "" {
		m, err := net.ParseMAC(f[1])
		if err != nil || len(m) != 6 {
			return fmt.Errorf("mac %q is not an Ethernet address", f[1])
		}
		c.MAC = m
	}
	if len(f) > 2 {
		return fmt.Errorf("%d fields after the method: want at most [<mtu>][:<macaddr>]", len(f))
	}
	return nil
}

// netmaskBits reads dracut's netmask: a prefix length or, for IPv4, a dotted mask.
func netmaskBits(s string, client netip.Addr) (int, error) {
	if s == "" {
		return client.BitLen(), nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > client.BitLen() {
			return 0, fmt.Errorf("netmask /%d: want 1..%d", n, client.BitLen())
		}
		return n, nil
	}
	m, err := netip.ParseAddr(s)
	if err != nil || !m.Is4() || !client.Is4() {
		return 0, fmt.Errorf("netmask %q: want a prefix length or a dotted IPv4 mask", s)
	}
	b := m.As4()
	ones, bits := net.IPMask(b[:]).Size()
	if bits == 0 || ones == 0 {
		return 0, fmt.Errorf("netmask %q is not a contiguous mask", s)
	}
	return ones, nil
}

// ipFields splits an ip= value on colons, keeping bracketed IPv6 addresses whole
// (without their brackets).
func ipFields(v string) ([]string, error) {
	var f []string
	for v != "" {
		if strings.HasPrefix(v, "[") {
			end := strings.IndexByte(v, ']')
			if end < 0 {
				return nil, errors.New("missing ']' after an IPv6 address")
			}
			f = append(f, v[1:end])
			v = v[end+1:]
			if v == "" {
				return f, nil
			}
			if v[0] != ':' {
				return nil, errors.New("want ':' after ']'")
			}
			v = v[1:]
			if v == "" {
				f = append(f, "")
			}
			continue
		}
		field, rest, found := strings.Cut(v, ":")
		f = append(f, field)
		v = rest
		if found && v == "" {
			f = append(f, "")
		}
	}
	return f, nil
}
