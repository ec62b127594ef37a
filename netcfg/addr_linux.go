package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func (ap *applier) address(l netlink.Link) error {
	p, name := ap.p, l.Attrs().Name
	ip := p.Addr.Addr()
	existing, err := ap.h.AddrList(l, family(ip))
	if err != nil {
		return fmt.Errorf("netcfg: list addresses of %s: %w", name, err)
	}
	present := false
	for _, e := range existing {
		if a, ok := netip.AddrFromSlice(e.IP); ok && a.Unmap() == ip {
			present = true
			if ones, _ := e.Mask.Size(); ones != p.Addr.Bits() {
				ap.logf("netcfg: warning: %s already has %s/%d, the iBFT says /%d; keeping it", name, ip, ones, p.Addr.Bits())
			}
		}
	}
	if !present {
		addr := p.NetlinkAddr()
		if err := ap.h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("netcfg: add %s to %s: %w", p.Addr, name, err)
		}
		ap.a.did(fmt.Sprintf("added %s to %s", p.Addr, name), func() error {
			if err := ap.h.AddrDel(l, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("remove %s from %s: %w", p.Addr, name, err)
			}
			return nil
		})
	}
	if ip.Is6() {
		return ap.waitDAD(l)
	}
	return nil
}

func (ap *applier) route(l netlink.Link, r Route) error {
	name := l.Attrs().Name
	fam := family(r.Dst.Addr())
	nr := ap.p.NetlinkRoute(l.Attrs().Index, r)
	desc := DescribeRoute(r, name)
	existing, err := ap.h.RouteListFiltered(fam, &netlink.Route{Dst: nr.Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("netcfg: list routes to %s: %w", r.Dst, err)
	}
	var advertised []netlink.Route
	for _, e := range existing {
		if e.LinkIndex == nr.LinkIndex && e.Gw.Equal(nr.Gw) {
			return nil // already in place
		}
		if e.Protocol == unix.RTPROT_RA {
			advertised = append(advertised, e)
		}
	}
	if len(existing) > len(advertised) {
		// Someone else's route: keep it. The boot targets have their own host routes.
		ap.logf("netcfg: warning: keeping the existing route %s; not adding %s", existing[0], desc)
		return nil
	}
	switch {
	case len(advertised) > 0:
		// The kernel learned this route from a router advertisement while DAD ran.
		// The iBFT's gateway is the one the firmware booted through: it goes just
		// ahead of the advertised router, which stays as a fallback. At an equal
		// metric the kernel would alternate between them.
		nr.Priority = lowestMetric(advertised) - 1
		desc += fmt.Sprintf(" metric %d (ahead of the router-advertised route)", nr.Priority)
	case nr.Priority == 0 && nr.Gw != nil && nr.Gw.To4() == nil:
		// No advertisement yet, but one may come: its route gets the kernel's
		// default metric (ra_defrtr_metric, 1024), so ours goes one ahead of that
		// now, whichever arrives first.
		nr.Priority = raDefaultMetric - 1
		desc += fmt.Sprintf(" metric %d (ahead of a router-advertised route)", nr.Priority)
	}
	if err := ap.h.RouteAdd(nr); err != nil {
		return fmt.Errorf("netcfg: add route %s: %w", desc, err)
	}
	ap.a.did("added route "+desc, func() error {
		if err := ap.h.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("remove route %s: %w", desc, err)
		}
		return nil
	})
	return nil
}

// raDefaultMetric is the metric Linux gives a route learned from a router
// advertisement (IP6_RT_PRIO_USER, the default of net.ipv6.conf.*.ra_defrtr_metric).
const raDefaultMetric = 1024

// lowestMetric is the smallest metric of rs, at least 1 so one below it exists.
func lowestMetric(rs []netlink.Route) int {
	m := rs[0].Priority
	for _, r := range rs[1:] {
		m = min(m, r.Priority)
	}
	return max(m, 1)
}

// NetlinkAddr is the plan's address as Apply adds it.
func (p *Plan) NetlinkAddr() *netlink.Addr {
	addr := &netlink.Addr{IPNet: ipNet(p.Addr)}
	if p.LinkOnly {
		addr.Scope = unix.RT_SCOPE_LINK
	}
	return addr
}

// NetlinkRoute is route r of the plan as Apply adds it on the link with index
// linkIndex: in the main table, from the plan's address.
func (p *Plan) NetlinkRoute(linkIndex int, r Route) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       ipNet(r.Dst),
		Src:       p.Addr.Addr().AsSlice(),
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
	} else if r.Dst.Addr().Is4() {
		nr.Scope = netlink.SCOPE_LINK
	}
	return nr
}

// DescribeRoute prints r on link for people, as "default via 10.0.2.2 dev eth0".
func DescribeRoute(r Route, link string) string {
	dst := r.Dst.String()
	if r.Dst.Bits() == 0 {
		dst = "default"
	}
	if r.Via.IsValid() {
		return fmt.Sprintf("%s via %s dev %s", dst, r.Via, link)
	}
	return fmt.Sprintf("%s dev %s", dst, link)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}
