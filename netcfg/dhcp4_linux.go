package netcfg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/ibft"
)

// client4 opens a DHCPv4 client on link for one exchange. Never keep one open: its
// packet socket sees every IPv4 packet of the link, the iSCSI traffic included.
func client4(ns *netns.NsHandle, link string, mac net.HardwareAddr, timeout time.Duration) (*nclient4.Client, error) {
	waitEntropy(timeout)
	var c *nclient4.Client
	err := inNamespace(ns, func() (err error) {
		try, n := attempts(timeout)
		opts := []nclient4.ClientOpt{nclient4.WithTimeout(try), nclient4.WithRetry(n)}
		if mac != nil {
			opts = append(opts, nclient4.WithHWAddr(mac))
		}
		c, err = nclient4.New(link, opts...)
		return err
	})
	return c, err
}

// attempts cuts an exchange's time into tries of at most 2 s: a booting machine
// should not wait long for a lost first packet (a link that just came up drops some).
func attempts(timeout time.Duration) (try time.Duration, n int) {
	try = min(2*time.Second, max(timeout/3, 250*time.Millisecond))
	return try, max(int(timeout/try), 1)
}

// acquire4 obtains a DHCPv4 lease on l (DISCOVER, OFFER, REQUEST, ACK) and plans the
// address, gateway, routes, DNS and hostname from it.
func (ap *applier) acquire4(link string, mac net.HardwareAddr) error {
	timeout := ap.timeout(ap.o.DHCPTimeout, DefaultDHCPAcquireTimeout)
	c, err := client4(ap.o.Namespace, link, mac, timeout)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp: DHCP client on %s: %w", link, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ap.ctx, timeout)
	defer cancel()
	ap.logf("netcfg: ip=dhcp: asking for a DHCP lease on %s (up to %v)", link, timeout)
	var mods []dhcpv4.Modifier
	if ap.p.Hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(ap.p.Hostname)))
	}
	mods = append(mods, dhcpv4.WithRequestedOptions(dhcpv4.OptionHostName, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue))
	got, err := c.Request(ctx, mods...)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp: no DHCP lease on %s in %v: %w", link, timeout, err)
	}
	l, err := lease4(link, c.InterfaceAddr(), got.ACK)
	if err != nil {
		return fmt.Errorf("netcfg: ip=dhcp: %w", err)
	}
	p := ap.p
	p.Addr = l.Addr
	if r := got.ACK.Router(); len(r) > 0 {
		if gw, ok := netip.AddrFromSlice(r[0].To4()); ok && gw.Is4() && !gw.IsUnspecified() {
			p.Gateway = gw
		}
	}
	if p.DNS == nil {
		for _, d := range got.ACK.DNS() {
			if a, ok := netip.AddrFromSlice(d.To4()); ok && !a.IsUnspecified() {
				p.DNS = append(p.DNS, a)
			}
		}
	}
	if p.Hostname == "" {
		p.Hostname = got.ACK.HostName()
	}
	p.DHCP, p.Origin = l.Server, ibft.OriginDHCP // the files for the real root say dhcp
	p.route()
	ap.a.Lease = l
	ap.a.did("leased "+l.String(), nil)
	return nil
}

// lease4 turns a DHCPACK into a Lease.
func lease4(link string, mac net.HardwareAddr, ack *dhcpv4.DHCPv4) (*Lease, error) {
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return nil, errors.New("the DHCPACK has no address")
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	bits, _ := mask.Size()
	if bits == 0 {
		bits = 32
	}
	server, _ := netip.AddrFromSlice(ack.ServerIdentifier().To4())
	l := &Lease{
		Family: 4, Link: link, MAC: mac, Addr: netip.PrefixFrom(ip, bits), Server: server, Obtained: time.Now(),
		Duration: ack.IPAddressLeaseTime(0), T1: ack.IPAddressRenewalTime(0), T2: ack.IPAddressRebindingTime(0),
		Reply: ack.ToBytes(),
	}
	if l.Duration <= 0 {
		return nil, fmt.Errorf("the DHCPACK for %s has no lease time", ip)
	}
	l.times()
	return l, nil
}

// renew4 asks for l to be extended: at T1 from its server, at T2 (rebind) from any.
// The request carries the address as ciaddr; the packet leaves by broadcast, which
// needs no ARP and reaches a server on the link either way.
func renew4(ctx context.Context, ns *netns.NsHandle, l *Lease, rebind bool, timeout time.Duration) (*Lease, error) {
	ack, err := dhcpv4.FromBytes(l.Reply)
	if err != nil {
		return nil, fmt.Errorf("the lease's DHCPACK: %w", err)
	}
	c, err := client4(ns, l.Link, l.MAC, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	req, err := dhcpv4.NewRenewFromAck(ack, dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize)))
	if err != nil {
		return nil, err
	}
	match := nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)
	if !rebind && l.Server.IsValid() {
		match = nclient4.IsAll(nclient4.IsCorrectServer(l.Server.AsSlice()), match)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.SendAndRead(ctx, nclient4.DefaultServers, req, match)
	if err != nil {
		return nil, fmt.Errorf("no DHCPACK in %v: %w", timeout, err)
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		return nil, fmt.Errorf("DHCPNAK from %s: %s", resp.ServerIdentifier(), resp.Message())
	}
	nl, err := lease4(l.Link, l.MAC, resp)
	if err != nil {
		return nil, err
	}
	if nl.Addr.Addr() != l.Addr.Addr() {
		return nil, fmt.Errorf("server %s acknowledged %s, not %s", nl.Server, nl.Addr.Addr(), l.Addr.Addr())
	}
	nl.Addr = l.Addr // as configured
	return nl, nil
}

// waitEntropy waits (at most timeout) until the kernel's random pool is ready. The
// DHCP library draws its transaction IDs by polling getrandom(2) without blocking,
// for up to two minutes, and polling never starts the kernel's jitter entropy
// collection; a blocking getrandom does (Linux 5.18+), and returns within a second or
// two even under QEMU without an RNG device. Early in the boot nothing else may have
// asked yet. Once the pool is ready it returns at once.
func waitEntropy(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		var b [1]byte
		for {
			if _, err := unix.Getrandom(b[:], 0); err != unix.EINTR {
				break
			}
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
