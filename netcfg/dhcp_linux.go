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
// (isboot.dhcp=1, or an iBFT NIC whose origin is DHCP); a confirmed lease goes to
// Applied.Lease for the daemon to keep renewing. It uses nclient4, the client under u-root's dhclient, directly:
// dhclient configures the interface itself in the caller's namespace, while here the
// static configuration is already up and stays. A failed renewal or a different
// address is a warning, never a reason to change the address under the boot.
func (ap *applier) renewLease(l netlink.Link) {
	ip, name := ap.p.Addr.Addr(), l.Attrs().Name
	if !ip.Is4() {
		ap.logf("netcfg: warning: DHCP renewal: DHCPv6 renewal is not supported; keeping %s", ip)
		return
	}
	timeout := ap.timeout(ap.o.DHCPTimeout, DefaultDHCPTimeout)
	// The client's packet socket belongs to the namespace it is opened in.
	client, err := client4(ap.o.Namespace, name, ap.p.MAC, timeout)
	if err != nil {
		ap.logf("netcfg: warning: DHCP renewal: DHCP client on %s: %v; keeping the iBFT lease", name, err)
		return
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ap.ctx, timeout)
	defer cancel()
	mods := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice()))}
	if ap.p.Hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(ap.p.Hostname)))
	}
	ap.logf("netcfg: DHCP renewal: renewing the lease of %s on %s (up to %v)", ip, name, timeout)
	lease, err := client.Request(ctx, mods...)
	if err != nil {
		ap.logf("netcfg: warning: DHCP renewal: no DHCP lease on %s: %v; keeping the iBFT lease", name, err)
		return
	}
	ack := lease.ACK
	if !ack.YourIPAddr.Equal(ip.AsSlice()) {
		ap.logf("netcfg: warning: DHCP renewal: DHCP server %s offers %s, not %s; keeping %s for the boot",
			ack.ServerIdentifier(), ack.YourIPAddr, ip, ip)
		return
	}
	ap.a.did(fmt.Sprintf("renewed the DHCP lease of %s on %s from %s for %v", ip, name, ack.ServerIdentifier(), ack.IPAddressLeaseTime(0)), nil)
	if l, err := lease4(name, ap.p.MAC, ack); err == nil {
		l.Addr = ap.p.Addr // as configured from the iBFT
		ap.a.Lease = l
	}
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
