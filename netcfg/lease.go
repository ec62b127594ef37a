package netcfg

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Lease is a DHCP lease the boot obtained (ip=dhcp, ip=dhcp6) or confirmed (an iBFT
// NIC whose origin is DHCP). It is plain data, so PID 1 can hand it to the daemon,
// which keeps renewing it for the life of the system (KeepLease).
type Lease struct {
	Family   int              // 4 or 6
	Link     string           // the interface holding the address
	MAC      net.HardwareAddr // the link's
	Addr     netip.Prefix     // the leased address, as configured
	Server   netip.Addr       // who leased it (the DHCPv4 server identifier)
	ServerID string           // DHCPv6: the server DUID in hex
	Obtained time.Time        // when the server last acknowledged it
	Duration time.Duration    // lease time (DHCPv6: the address's valid lifetime)
	T1, T2   time.Duration    // renew and rebind times, from Obtained
	// Reply is the server's last DHCPACK (v4) or Reply (v6): renewals are built
	// from it (client and server identifiers, IA_NA).
	Reply []byte
}

// Expires is when the lease ends unless renewed.
func (l *Lease) Expires() time.Time { return l.Obtained.Add(l.Duration) }

// String describes the lease for the log.
func (l *Lease) String() string {
	return fmt.Sprintf("%s on %s from %s for %v (renew after %v, rebind after %v)",
		l.Addr, l.Link, l.ServerName(), l.Duration, l.T1, l.T2)
}

// ServerName is the server's address, or for DHCPv6 its DUID.
func (l *Lease) ServerName() string {
	if l.Server.IsValid() {
		return l.Server.String()
	}
	if l.ServerID != "" {
		return "DUID " + l.ServerID
	}
	return "an unnamed server"
}

// times fills in what a server left out, as RFC 2131 4.4.5 and RFC 8415 21.4 say:
// T1 at half the lease, T2 at seven eighths.
func (l *Lease) times() {
	if l.T1 <= 0 || l.T1 >= l.Duration {
		l.T1 = l.Duration / 2
	}
	if l.T2 <= 0 || l.T2 >= l.Duration || l.T2 < l.T1 {
		l.T2 = l.Duration * 7 / 8
	}
}

// LeaseState is what KeepLease reports after each step, for the status file.
type LeaseState struct {
	Lease     Lease
	State     string // "bound", "renewing", "rebinding" or "expired" (the address is kept)
	Renewals  uint64 // acknowledged renewals since KeepLease started
	Failures  uint64 // renewal attempts that got no acknowledgement
	LastError string
}
