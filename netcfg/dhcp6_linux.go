package netcfg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
)

// client6 opens a DHCPv6 client on link, bound to its link-local address, for one
// exchange.
func client6(ns *netns.NsHandle, link string, timeout time.Duration) (*nclient6.Client, error) {
	waitEntropy(timeout)
	var c *nclient6.Client
	err := inNamespace(ns, func() (err error) {
		try, n := attempts(timeout)
		c, err = nclient6.New(link, nclient6.WithTimeout(try), nclient6.WithRetry(n))
		return err
	})
	return c, err
}

// waitLinkLocal waits until l has a usable (no longer tentative) link-local IPv6
// address: the DHCPv6 client sends from it.
func (ap *applier) waitLinkLocal(l netlink.Link) error {
	timeout := ap.timeout(ap.o.DADTimeout, DefaultDADTimeout)
	return waitFor(ap.ctx, timeout, ap.subscribeAddrs, func() (bool, error) {
		addrs, err := ap.h.AddrList(l, unix.AF_INET6)
		if err != nil {
			return false, err
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return true, nil
			}
		}
		return false, nil
	}, func() error {
		ap.logf("netcfg: waiting up to %v for a link-local address on %s", timeout, l.Attrs().Name)
		return nil
	})
}

// acquire6 obtains a DHCPv6 lease (IA_NA) on l and plans the address and DNS from
// it. The default route comes from router advertisements, as DHCPv6 has none.
func (ap *applier) acquire6(l netlink.Link) error {
	link := l.Attrs().Name
	if err := ap.waitLinkLocal(l); err != nil {
		return fmt.Errorf("netcfg: ip=dhcp6: %s: %w", link, err)
	}
	timeout := ap.timeout(ap.o.DHCPTimeout, DefaultDHCPAcquireTimeout)
	c, err := client6(ap.o.Namespace, link, timeout)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp6: DHCPv6 client on %s: %w", link, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ap.ctx, timeout)
	defer cancel()
	ap.logf("netcfg: ip=dhcp6: asking for a DHCPv6 lease on %s (up to %v)", link, timeout)
	reply, err := c.RapidSolicit(ctx)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp6: no DHCPv6 lease on %s in %v: %w", link, timeout, err)
	}
	lease, err := lease6(link, l.Attrs().HardwareAddr, reply)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp6: %w", err)
	}
	p := ap.p
	p.Addr, p.DHCP, p.Origin = lease.Addr, lease.Server, ibft.OriginDHCP
	if p.DNS == nil {
		for _, d := range reply.Options.DNS() {
			if a, ok := netip.AddrFromSlice(d); ok && !a.IsUnspecified() {
				p.DNS = append(p.DNS, a)
			}
		}
	}
	p.route()
	ap.a.Lease = lease
	ap.a.did("leased "+lease.String(), nil)
	return nil
}

// lease6 turns a DHCPv6 Reply into a Lease: its first IA_NA address, as a /128
// (the prefix is the router advertisements' to give, as systemd-networkd does).
func lease6(link string, mac net.HardwareAddr, reply *dhcpv6.Message) (*Lease, error) {
	if sc := reply.Options.Status(); sc != nil && sc.StatusCode != 0 {
		return nil, fmt.Errorf("the server says %s", sc)
	}
	iana := reply.Options.OneIANA()
	if iana == nil {
		return nil, errors.New("the Reply has no IA_NA")
	}
	if sc := iana.Options.Status(); sc != nil && sc.StatusCode != 0 {
		return nil, fmt.Errorf("IA_NA: the server says %s", sc)
	}
	a := iana.Options.OneAddress()
	if a == nil {
		return nil, errors.New("the Reply's IA_NA has no address")
	}
	ip, ok := netip.AddrFromSlice(a.IPv6Addr)
	if !ok || !ip.Is6() || ip.IsUnspecified() {
		return nil, fmt.Errorf("IA_NA address %v is not an IPv6 address", a.IPv6Addr)
	}
	if a.ValidLifetime <= 0 {
		return nil, fmt.Errorf("IA_NA address %s has no valid lifetime", ip)
	}
	l := &Lease{
		Family: 6, Link: link, MAC: mac, Addr: netip.PrefixFrom(ip, 128), Obtained: time.Now(),
		Duration: a.ValidLifetime, T1: iana.T1, T2: iana.T2, Reply: reply.ToBytes(),
	}
	// DHCPv6 names its server by DUID; the status shows the DUID's link-layer address
	// when it has one.
	l.ServerID = duidString(reply.Options.ServerID())
	l.times()
	return l, nil
}

func duidString(d dhcpv6.DUID) string {
	if d == nil {
		return ""
	}
	return fmt.Sprintf("%x", d.ToBytes())
}

// renew6 sends a Renew (to the lease's server) or a Rebind (to any) for l's IA_NA.
func renew6(ctx context.Context, ns *netns.NsHandle, l *Lease, rebind bool, timeout time.Duration) (*Lease, error) {
	m, err := dhcpv6.FromBytes(l.Reply)
	if err != nil {
		return nil, fmt.Errorf("the lease's Reply: %w", err)
	}
	reply, ok := m.(*dhcpv6.Message)
	if !ok {
		return nil, errors.New("the lease's Reply is relayed")
	}
	iana := reply.Options.OneIANA()
	if iana == nil {
		return nil, errors.New("the lease's Reply has no IA_NA")
	}
	msg, err := dhcpv6.NewMessage()
	if err != nil {
		return nil, err
	}
	msg.MessageType = dhcpv6.MessageTypeRenew
	if rebind {
		msg.MessageType = dhcpv6.MessageTypeRebind
	}
	msg.AddOption(dhcpv6.OptClientID(reply.Options.ClientID()))
	if !rebind {
		msg.AddOption(dhcpv6.OptServerID(reply.Options.ServerID()))
	}
	msg.AddOption(dhcpv6.OptElapsedTime(0))
	msg.AddOption(&dhcpv6.OptIANA{IaId: iana.IaId, Options: dhcpv6.IdentityOptions{Options: []dhcpv6.Option{
		&dhcpv6.OptIAAddress{IPv6Addr: l.Addr.Addr().AsSlice()},
	}}})
	c, err := client6(ns, l.Link, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.SendAndRead(ctx, nclient6.AllDHCPRelayAgentsAndServers, msg, nclient6.IsMessageType(dhcpv6.MessageTypeReply))
	if err != nil {
		return nil, fmt.Errorf("no Reply in %v: %w", timeout, err)
	}
	nl, err := lease6(l.Link, l.MAC, resp)
	if err != nil {
		return nil, err
	}
	if nl.Addr.Addr() != l.Addr.Addr() {
		return nil, fmt.Errorf("the server gave %s, not %s", nl.Addr.Addr(), l.Addr.Addr())
	}
	return nl, nil
}

// waitAuto6 waits for the address the kernel autoconfigures from router
// advertisements (ip=auto6) and plans with it; the default route is the kernel's too.
func (ap *applier) waitAuto6(l netlink.Link) error {
	timeout := ap.timeout(ap.o.DHCPTimeout, DefaultDHCPAcquireTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeAddrs, func() (bool, error) {
		addrs, err := ap.h.AddrList(l, unix.AF_INET6)
		if err != nil {
			return false, err
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ok && a.Scope == unix.RT_SCOPE_UNIVERSE && !ip.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				ones, _ := a.Mask.Size()
				ap.p.Addr = netip.PrefixFrom(ip, ones)
				return true, nil
			}
		}
		return false, nil
	}, func() error {
		ap.logf("netcfg: ip=auto6: waiting up to %v for a router advertisement's address on %s", timeout, l.Attrs().Name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("netcfg: ip=auto6: no autoconfigured address on %s: %w", l.Attrs().Name, err)
	}
	ap.p.route()
	return nil
}
