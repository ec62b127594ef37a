// Package netcfg brings up the NIC the firmware booted from, with the identity the iBFT
// records: driver, VLAN, address, routes to the boot targets, DNS and hostname.
//
// It works in two steps so the boot can be printed before it is done: NewPlan turns an
// iBFT NIC and its targets into a Plan (pure, portable), and Apply carries a Plan out with
// netlink, returning an Applied that can Undo exactly what was changed.
package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/isboot/isboot/ibft"
)

// Plan is what Apply will do, decided from the iBFT (NewPlan) or from the kernel
// command line's ip= (NewManualPlan) before touching the system.
type Plan struct {
	Source   string           // where the iBFT came from, for messages
	NIC      int              // iBFT NIC index; -1 for a plan without an iBFT
	Mode     Mode             // how the address is obtained
	Iface    string           // without an iBFT: the link by name; "" and no MAC: the first link with carrier
	MTU      int              // 0: left alone
	Targets  []netip.Addr     // the boot targets, routed once a lease gives the address (DHCP modes)
	MAC      net.HardwareAddr // identifies the link
	PCI      PCIAddr          // cross-check, and where to find the driver if the link is missing
	VLAN     uint16           // 0: untagged
	Addr     netip.Prefix     // the address and prefix length to configure
	LinkOnly bool             // IPv6 address of link scope (the NIC "global" flag is clear)
	Origin   uint8            // ibft.Origin*; informative: every origin is applied as a static lease
	DHCP     netip.Addr       // the DHCP server iPXE recorded; informative only
	Gateway  netip.Addr       // zero: no gateway
	Routes   []Route          // default route and one host route per boot target
	DNS      []netip.Addr
	Hostname string
	Renew    bool // renew the lease by DHCP after the static configuration (isboot.dhcp=1)
	// ConfirmLater: an iBFT DHCP address whose lease the daemon confirms after the
	// boot and then keeps renewing (Applied.Lease, unconfirmed), so the boot never
	// waits for a DHCP server (or, in an emulator, for the entropy its client needs).
	ConfirmLater bool
	Warnings     []string // oddities in the table that Apply works around

	// AwaitSLAAC: a target is IPv6 but the NIC's address IPv4, as old iPXE records an
	// IPv6 boot (it writes only the IPv4 side). The kernel configures IPv6 from router
	// advertisements by itself; Apply waits for that address, so the login does not
	// race it.
	AwaitSLAAC bool
}

// Mode is how Apply obtains the address.
type Mode string

const (
	ModeStatic Mode = ""      // Addr as planned (the iBFT's, or a static ip=)
	ModeDHCP4  Mode = "dhcp"  // a DHCPv4 lease
	ModeDHCP6  Mode = "dhcp6" // a DHCPv6 lease (IA_NA)
	ModeAuto6  Mode = "auto6" // the address the kernel autoconfigures from router advertisements
)

// Manual is a network configuration from the kernel command line (dracut's ip=),
// for a boot without an iBFT.
type Manual struct {
	Iface    string // "": the first link with carrier
	Mode     Mode
	Addr     netip.Prefix // ModeStatic
	Gateway  netip.Addr
	Hostname string
	DNS      []netip.Addr
	MTU      int
	Targets  []netip.Addr // the boot targets, which get host routes
}

// NewManualPlan plans a configuration without an iBFT. It fails, naming the field,
// on a configuration that cannot work.
func NewManualPlan(m Manual) (*Plan, error) {
	p := &Plan{Source: "command line", NIC: -1, Mode: m.Mode, Iface: m.Iface, MTU: m.MTU, Hostname: m.Hostname, Targets: m.Targets}
	switch m.Mode {
	case ModeDHCP4, ModeDHCP6, ModeAuto6:
		p.DNS = m.DNS
		return p, nil
	case ModeStatic:
	default:
		return nil, fmt.Errorf("netcfg: mode %q: want static, dhcp, dhcp6 or auto6", m.Mode)
	}
	ip := m.Addr.Addr()
	if !m.Addr.IsValid() || ip.IsUnspecified() {
		return nil, errors.New("netcfg: ip=: a static configuration needs the client address")
	}
	p.Addr = m.Addr
	if gw := m.Gateway; gw.IsValid() && !gw.IsUnspecified() {
		if gw.Is4() != ip.Is4() {
			return nil, fmt.Errorf("netcfg: ip=: gateway %s is not of the address family of %s", gw, ip)
		}
		p.Gateway = gw
	}
	for _, d := range m.DNS {
		if d.IsValid() && !d.IsUnspecified() && !slices.Contains(p.DNS, d) {
			p.DNS = append(p.DNS, d)
		}
	}
	p.route()
	return p, nil
}

// route plans the default route and a host route per boot target (p.Targets), once
// the address is known.
func (p *Plan) route() {
	ip := p.Addr.Addr()
	p.Routes = nil
	if p.Gateway.IsValid() {
		p.Routes = append(p.Routes, p.routeTo(netip.PrefixFrom(unspecified(ip), 0), "default"))
	}
	seen := map[netip.Addr]bool{}
	for _, tg := range p.Targets {
		tg = tg.Unmap()
		switch {
		case !tg.IsValid() || tg.IsUnspecified():
		case tg.Is4() != ip.Is4():
			p.warnf("target address %s is not of the address family of %s: no route", tg, ip)
		case tg == ip:
			p.warnf("target address %s is our own address: no route", tg)
		case !seen[tg]:
			seen[tg] = true
			p.Routes = append(p.Routes, p.routeTo(netip.PrefixFrom(tg, tg.BitLen()), "target (command line)"))
		}
	}
}

// Route is one route Apply installs on the configured link.
type Route struct {
	Dst     netip.Prefix
	Via     netip.Addr // zero: on-link
	OnLink  bool       // the gateway is outside the link's prefix: mark the next hop on-link
	Purpose string     // "default" or "target N iqn...", for people reading the plan
}

// Overrides replace parts of what the iBFT says (from the kernel command line).
type Overrides struct {
	Targets  []netip.Addr // the boot targets, e.g. from netroot=; nil: the iBFT's
	Hostname string
	DNS      []netip.Addr
	Renew    bool // isboot.dhcp=1
}

// PCIAddr is a PCI bus/device/function as the iBFT stores it: bus<<8 | dev<<3 | fn.
// The iBFT has no PCI domain (segment): the NIC is found by its MAC, and when its driver
// must be loaded first, by this bus/device/function in any domain, 0000 first.
type PCIAddr uint16

// String is the lspci form, "00:03.0".
func (p PCIAddr) String() string { return ibft.BDFString(uint16(p)) }

// SysfsName is the device's directory name under /sys/bus/pci/devices if it is in
// domain 0000, as the kernel's iscsi_ibft assumes.
func (p PCIAddr) SysfsName() string { return "0000:" + p.String() }

func findNIC(t *ibft.Table, index int) (*ibft.NIC, error) {
	for i := range t.NICs {
		if t.NICs[i].Index == index {
			return &t.NICs[i], nil
		}
	}
	have := make([]string, 0, len(t.NICs))
	for _, n := range t.NICs {
		have = append(have, fmt.Sprintf("nic%d", n.Index))
	}
	return nil, fmt.Errorf("netcfg: the iBFT has no nic%d (it has: %s)", index, orNone(strings.Join(have, ", ")))
}

// NewPlan decides how to configure iBFT NIC nic (Table.BootChoice picks the boot NIC) and reach the targets
// that use it. It fails, naming the field, when the NIC cannot be configured.
func NewPlan(t *ibft.Table, nic int, ov Overrides) (*Plan, error) {
	if t == nil {
		return nil, errors.New("netcfg: no iBFT")
	}
	n, err := findNIC(t, nic)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("netcfg: nic%d", n.Index)
	if n.Flags&ibft.FlagValid == 0 {
		return nil, fmt.Errorf("%s: block not marked valid (flags %#x)", name, n.Flags)
	}
	if len(n.MAC) != 6 || isZero(n.MAC) {
		return nil, fmt.Errorf("%s: mac %q is not a usable Ethernet address", name, n.MAC)
	}
	ip := n.IP.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		return nil, fmt.Errorf("%s: ip: no address", name)
	}
	if n.VLAN > 4094 {
		return nil, fmt.Errorf("%s: vlan %d out of range 0..4094", name, n.VLAN)
	}
	p := &Plan{
		Source: t.Source, NIC: n.Index, MAC: n.MAC, PCI: PCIAddr(n.PCIBDF), VLAN: n.VLAN,
		Origin: n.Origin, DHCP: n.DHCP.Unmap(), Hostname: n.Hostname, Renew: ov.Renew,
	}
	prefix := n.Prefix
	if prefix <= 0 || prefix > ip.BitLen() {
		p.warnf("prefix %d invalid for %s: using a host address (/%d), targets and gateway on-link", prefix, ip, ip.BitLen())
		prefix = ip.BitLen()
	}
	p.Addr = netip.PrefixFrom(ip, prefix)
	if ip.Is6() {
		global := n.Flags&ibft.FlagNICGlobal != 0
		p.LinkOnly = !global
		switch {
		case global && ip.IsLinkLocalUnicast():
			p.warnf("global flag set on link-local address %s", ip)
		case !global && !ip.IsLinkLocalUnicast():
			p.warnf("global flag clear on %s: configured with link scope as the flag says", ip)
		}
	}
	if ov.Hostname != "" {
		p.Hostname = ov.Hostname
	}

	if gw := n.Gateway.Unmap(); gw.IsValid() && !gw.IsUnspecified() {
		if gw.Is4() != ip.Is4() {
			p.warnf("gateway %s is not of the address family of %s: ignored", gw, ip)
		} else {
			p.Gateway = gw
		}
	}
	if p.Gateway.IsValid() {
		p.Routes = append(p.Routes, p.routeTo(netip.PrefixFrom(unspecified(ip), 0), "default"))
	}

	type target struct {
		ip  netip.Addr
		why string
	}
	var targets []target
	if ov.Targets != nil {
		for _, a := range ov.Targets {
			targets = append(targets, target{a.Unmap(), "target (command line)"})
		}
	} else {
		for _, tg := range t.Targets {
			if tg.NIC != n.Index || tg.Flags&ibft.FlagValid == 0 {
				continue
			}
			targets = append(targets, target{tg.IP.Unmap(), fmt.Sprintf("target%d %s", tg.Index, tg.Name)})
		}
	}
	seen := map[netip.Addr]bool{}
	for _, tg := range targets {
		switch {
		case !tg.ip.IsValid() || tg.ip.IsUnspecified():
			p.warnf("%s has no address: no route", tg.why)
		case tg.ip.Is6() && ip.Is4():
			p.AwaitSLAAC = true
			p.warnf("%s address %s is IPv6 and the NIC's %s is IPv4: no route; waiting for an IPv6 address from router advertisements (SLAAC)", tg.why, tg.ip, ip)
		case tg.ip.Is4() != ip.Is4():
			p.warnf("%s address %s is not of the address family of %s: no route", tg.why, tg.ip, ip)
		case tg.ip == ip:
			p.warnf("%s address %s is our own address: no route", tg.why, tg.ip)
		case !seen[tg.ip]:
			seen[tg.ip] = true
			p.Routes = append(p.Routes, p.routeTo(netip.PrefixFrom(tg.ip, tg.ip.BitLen()), tg.why))
		}
	}

	dns := ov.DNS
	if dns == nil {
		for _, d := range n.DNS {
			dns = append(dns, d.Unmap())
		}
	}
	for _, d := range dns {
		if d.IsValid() && !d.IsUnspecified() && !slices.Contains(p.DNS, d) {
			p.DNS = append(p.DNS, d)
		}
	}
	return p, nil
}

// routeTo routes dst on-link when it is inside the link's prefix or there is no gateway,
// else through the gateway. Host routes pin the boot targets to this link even if the
// real system later installs other default routes.
func (p *Plan) routeTo(dst netip.Prefix, purpose string) Route {
	r := Route{Dst: dst, Purpose: purpose}
	if dst.IsSingleIP() && (p.Addr.Contains(dst.Addr()) || dst.Addr() == p.Gateway) {
		return r
	}
	if !p.Gateway.IsValid() {
		return r
	}
	r.Via = p.Gateway
	// A link-local gateway is on-link by definition; any other outside the prefix needs
	// the onlink flag or the kernel refuses the route.
	r.OnLink = !p.Addr.Contains(p.Gateway) && !p.Gateway.IsLinkLocalUnicast()
	return r
}

func (p *Plan) warnf(format string, args ...any) {
	p.Warnings = append(p.Warnings, fmt.Sprintf(format, args...))
}

// OriginName names an iBFT origin value.
func OriginName(o uint8) string {
	switch o {
	case ibft.OriginOther:
		return "other"
	case ibft.OriginManual:
		return "manual"
	case ibft.OriginWellKnown:
		return "well-known"
	case ibft.OriginDHCP:
		return "dhcp"
	case ibft.OriginRA:
		return "router-advertisement"
	case ibft.OriginUnchanged, 0x0f:
		return "unchanged"
	}
	return fmt.Sprintf("origin %d", o)
}

// LinkName is the name of the VLAN link Apply creates on top of parent.
func LinkName(parent string, vlan uint16) string {
	if vlan == 0 {
		return parent
	}
	name := fmt.Sprintf("%s.%d", parent, vlan)
	if len(name) > 15 { // IFNAMSIZ-1
		name = fmt.Sprintf("vlan%d", vlan)
	}
	return name
}

// String prints the plan for people (isboot netcfg --dry-run).
func (p *Plan) String() string {
	var b strings.Builder
	src := ""
	if p.Source != "" {
		src = " (" + p.Source + ")"
	}
	line := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "  %-9s %s\n", k+":", fmt.Sprintf(format, args...))
	}
	if p.NIC < 0 {
		p.manualString(&b, line)
		return b.String()
	}
	fmt.Fprintf(&b, "network plan for iBFT nic%d%s\n", p.NIC, src)
	line("link", "MAC %s at PCI %s (if no link has that MAC, load the driver by the device's modalias)", p.MAC, p.PCI)
	if p.VLAN != 0 {
		line("vlan", "%d: create <link>.%d on top and configure that", p.VLAN, p.VLAN)
	}
	lease := "static address"
	switch p.Origin {
	case ibft.OriginManual:
	case ibft.OriginDHCP:
		lease = "DHCP lease, kept as a static address"
		if p.DHCP.IsValid() && !p.DHCP.IsUnspecified() {
			lease += ", server " + p.DHCP.String()
		}
	default:
		lease = "origin " + OriginName(p.Origin) + ", applied as a static address"
	}
	if p.Origin == ibft.OriginManual && p.DHCP.IsValid() && !p.DHCP.IsUnspecified() {
		lease += " (dhcp field " + p.DHCP.String() + " ignored: origin is manual)"
	}
	scope := ""
	if p.Addr.Addr().Is6() {
		scope = ", global scope"
		if p.LinkOnly {
			scope = ", link scope"
		}
	}
	line("address", "%s (%s%s)", p.Addr, lease, scope)
	switch {
	case p.Addr.Addr().Is6():
		line("wait", "for carrier, then for duplicate address detection of %s", p.Addr.Addr())
	case p.AwaitSLAAC:
		line("wait", "for carrier, then for an IPv6 address from router advertisements (SLAAC), for the IPv6 target")
	default:
		line("wait", "for carrier")
	}
	if len(p.Routes) == 0 {
		line("routes", "none beyond the prefix route")
	}
	for _, r := range p.Routes {
		via := "on-link"
		if r.Via.IsValid() {
			via = "via " + r.Via.String()
			if r.OnLink {
				via += " (gateway outside the prefix: onlink)"
			}
		}
		dst := r.Dst.String()
		if r.Dst.Bits() == 0 {
			dst = "default"
		} else if r.Dst.IsSingleIP() {
			dst = r.Dst.Addr().String()
		}
		line("route", "%s %s, src %s (%s)", dst, via, p.Addr.Addr(), r.Purpose)
	}
	if len(p.DNS) > 0 {
		s := make([]string, len(p.DNS))
		for i, d := range p.DNS {
			s[i] = d.String()
		}
		line("dns", "nameserver %s (written to resolv.conf)", strings.Join(s, ", "))
	} else {
		line("dns", "none (resolv.conf left alone)")
	}
	if p.Hostname != "" {
		line("hostname", "%s", p.Hostname)
	} else {
		line("hostname", "none (left alone)")
	}
	switch {
	case p.Renew:
		line("dhcp", "renew the lease by DHCP afterwards and keep renewing it (isboot.dhcp=1)")
	case p.ConfirmLater:
		line("dhcp", "the daemon confirms the lease after the boot and keeps renewing it (an iBFT DHCP address; isboot.dhcp=0: never)")
	}
	for _, w := range p.Warnings {
		line("warning", "%s", w)
	}
	return b.String()
}

// manualString prints a plan without an iBFT.
func (p *Plan) manualString(b *strings.Builder, line func(k, format string, args ...any)) {
	b.WriteString("network plan from the kernel command line (ip=)\n")
	switch {
	case p.Iface != "":
		line("link", "%s (named by ip=)", p.Iface)
	case len(p.MAC) != 0:
		line("link", "MAC %s", p.MAC)
	default:
		line("link", "the first Ethernet link with carrier (drivers of every PCI network controller loaded if none is there)")
	}
	if p.MTU > 0 {
		line("mtu", "%d", p.MTU)
	}
	switch p.Mode {
	case ModeDHCP4:
		line("address", "by DHCPv4, with gateway, DNS and hostname from the lease; renewed for the life of the system")
	case ModeDHCP6:
		line("address", "by DHCPv6 (IA_NA, as a /128), DNS from the reply; renewed for the life of the system")
	case ModeAuto6:
		line("address", "autoconfigured from router advertisements (SLAAC)")
	default:
		line("address", "%s (static, ip=)", p.Addr)
	}
	for _, r := range p.Routes {
		via := "on-link"
		if r.Via.IsValid() {
			via = "via " + r.Via.String()
		}
		line("route", "%s %s (%s)", r.Dst, via, r.Purpose)
	}
	if p.Mode != ModeStatic {
		for _, t := range p.Targets {
			line("route", "%s/%d, once the address is known (target)", t, t.BitLen())
		}
	}
	for _, d := range p.DNS {
		line("dns", "nameserver %s", d)
	}
	if p.Hostname != "" {
		line("hostname", "%s", p.Hostname)
	}
	for _, w := range p.Warnings {
		line("warning", "%s", w)
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
