package netcfg

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// DefaultDHCPTimeout bounds the lease renewal at boot (isboot.dhcp=1, an iBFT DHCP
// address); DefaultDHCPAcquireTimeout a new lease (ip=dhcp, ip=dhcp6), for which
// the boot has no other way on.
const (
	DefaultDHCPTimeout        = 10 * time.Second
	DefaultDHCPAcquireTimeout = 30 * time.Second
)

// renewLease asks a DHCP server to confirm the address the firmware leased
// (isboot.dhcp=1) during the boot; a confirmed lease goes to Applied.Lease for the
// daemon to keep renewing. A failed renewal or a different address is a warning,
// never a reason to change the address under the boot.
func (ap *applier) renewLease(l netlink.Link) {
	ip, name := ap.p.Addr.Addr(), l.Attrs().Name
	if !ip.Is4() {
		ap.logf("netcfg: warning: DHCP renewal: DHCPv6 renewal is not supported; keeping %s", ip)
		return
	}
	timeout := ap.timeout(ap.o.DHCPTimeout, DefaultDHCPTimeout)
	ap.logf("netcfg: DHCP renewal: renewing the lease of %s on %s (up to %v)", ip, name, timeout)
	lease, err := confirm4(ap.ctx, ap.o.Namespace, UnconfirmedLease(name, ap.p), ap.p.Hostname, timeout)
	if err != nil {
		ap.logf("netcfg: warning: DHCP renewal: %v; keeping the iBFT lease", err)
		return
	}
	ap.a.did(fmt.Sprintf("renewed the DHCP lease of %s on %s from %s for %v", ip, name, lease.ServerName(), lease.Duration), nil)
	ap.a.Lease = lease
}

// UnconfirmedLease is the DHCPv4 lease behind an iBFT address whose origin is DHCP,
// as far as the table tells it: address and link, no times. KeepLease confirms it
// with the server before it renews it.
func UnconfirmedLease(link string, p *Plan) Lease {
	l := Lease{Family: 4, Link: link, MAC: p.MAC, Addr: p.Addr, Obtained: time.Now()}
	if p.DHCP.Is4() && !p.DHCP.IsUnspecified() {
		l.Server = p.DHCP
	}
	return l
}

// confirm4 asks the DHCP servers to acknowledge l's address (a DHCPREQUEST from
// INIT-REBOOT, RFC 2131 4.3.2) and returns the lease as acknowledged. It uses nclient4,
// the client under u-root's dhclient, directly: dhclient configures the interface
// itself, while here the address is up and stays.
func confirm4(ctx context.Context, ns *netns.NsHandle, l Lease, hostname string, timeout time.Duration) (*Lease, error) {
	client, err := client4(ns, l.Link, l.MAC, timeout)
	if err != nil {
		return nil, fmt.Errorf("DHCP client on %s: %w", l.Link, err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ip := l.Addr.Addr()
	mods := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice()))}
	if hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(hostname)))
	}
	got, err := client.Request(ctx, mods...)
	if err != nil {
		return nil, fmt.Errorf("no DHCP lease on %s: %w", l.Link, err)
	}
	ack := got.ACK
	if !ack.YourIPAddr.Equal(ip.AsSlice()) {
		return nil, fmt.Errorf("DHCP server %s offers %s, not %s", ack.ServerIdentifier(), ack.YourIPAddr, ip)
	}
	nl, err := lease4(l.Link, l.MAC, ack)
	if err != nil {
		return nil, err
	}
	nl.Addr = l.Addr // as configured from the iBFT
	return nl, nil
}

// inNamespace runs fn on a thread in ns (nil: as is), for calls that open sockets.
// The thread stays locked, so it exits with its goroutine instead of carrying the
// namespace back into the runtime's pool.
func inNamespace(ns *netns.NsHandle, fn func() error) error {
	if ns == nil {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(*ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
