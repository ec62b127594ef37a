package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/isboot/isboot/netcfg"
)

// Options are Watch's side effects and timings; the zero value watches the caller's
// network namespace.
type Options struct {
	Namespace *netns.NsHandle // nil: the caller's
	// Restored hears every pass that put something back (or failed to); nil: nobody.
	Restored func(Restore)
	// Logf reports trouble with the watch itself (a subscription lost); nil: silent.
	Logf func(format string, args ...any)
	// Settle is how long after a change the guard looks: one `ip addr flush` is
	// several messages, and a tool re-adding the same address in that time owes
	// nothing to the guard (10 ms).
	Settle time.Duration
	// Resync is how often the guard looks without being told, in case netlink
	// dropped messages (10 s).
	Resync time.Duration
}

// Watch keeps the link of s configured until ctx ends: it looks once at the start,
// then after every link, address or route change on the link, and every Resync. It
// only adds what is missing (link up, the address, a route), never removes or
// replaces anything: an equivalent configuration someone else made stays theirs.
// It returns ctx's error, or why it could not start.
func Watch(ctx context.Context, s *Spec, o Options) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if o.Settle <= 0 {
		o.Settle = 10 * time.Millisecond
	}
	if o.Resync <= 0 {
		o.Resync = 10 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	var h *netlink.Handle
	var err error
	if o.Namespace != nil {
		h, err = netlink.NewHandleAt(*o.Namespace, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return fmt.Errorf("netguard: netlink: %w", err)
	}
	defer h.Close()
	g := &guard{s: s, o: o, h: h, plan: s.plan(), name: s.Link}

	changes, lost, err := subscribe(ctx, s.Index, o.Namespace)
	if err != nil {
		return err
	}
	settle := time.NewTimer(0) // the first look, at once
	resync := time.NewTicker(o.Resync)
	defer resync.Stop()
	pending := true
	var heard time.Time     // the first change the pending look answers
	var retry time.Duration // wait before looking again after a failed look
	look := func(heard time.Time) {
		if g.check(heard) {
			retry = 0
			return
		}
		// Something could not be put back (a tool still flushing, the link gone):
		// look again soon, backing off to the resync interval.
		retry = min(max(2*retry, 100*time.Millisecond), o.Resync)
		pending = true
		settle.Reset(retry)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes:
			if !pending {
				pending, heard = true, time.Now()
				settle.Reset(o.Settle)
			}
		case err := <-lost:
			// Resubscribe; the resync ticker covers the gap, and a look now
			// covers what happened while nobody listened.
			o.Logf("netguard: %s: netlink subscription lost (%v): subscribing again", g.name, err)
			for {
				changes, lost, err = subscribe(ctx, s.Index, o.Namespace)
				if err == nil {
					break
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
			}
			if !pending {
				pending = true
				settle.Reset(0)
			}
		case <-settle.C:
			pending = false
			look(heard)
			heard = time.Time{}
		case <-resync.C:
			if !pending {
				look(time.Time{})
			}
		}
	}
}

// subscribe listens to link, address and route changes and sends on changes (never
// blocking: one pending signal is enough) for those that concern link index. lost
// gets the first subscription error; all three end with ctx or that error.
func subscribe(ctx context.Context, index int, ns *netns.NsHandle) (<-chan struct{}, <-chan error, error) {
	sctx, cancel := context.WithCancel(ctx)
	done := sctx.Done()
	changes := make(chan struct{}, 1)
	lost := make(chan error, 1)
	fail := func(err error) {
		select {
		case lost <- err:
		default:
		}
		cancel()
	}
	poke := func() {
		select {
		case changes <- struct{}{}:
		default:
		}
	}
	links := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: ns, ErrorCallback: fail}); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("netguard: subscribe to links: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: ns, ErrorCallback: fail}); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("netguard: subscribe to addresses: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: ns, ErrorCallback: fail}); err != nil {
		cancel()
		return nil, nil, fmt.Errorf("netguard: subscribe to routes: %w", err)
	}
	go func() {
		defer cancel()
		for {
			// A closed channel means its subscription ended (error or ctx).
			select {
			case u, ok := <-links:
				if !ok {
					fail(errors.New("link updates ended"))
					return
				}
				if int(u.Index) == index {
					poke()
				}
			case u, ok := <-addrs:
				if !ok {
					fail(errors.New("address updates ended"))
					return
				}
				if u.LinkIndex == index && !u.NewAddr {
					poke()
				}
			case u, ok := <-routes:
				if !ok {
					fail(errors.New("route updates ended"))
					return
				}
				if u.LinkIndex == index && u.Type == unix.RTM_DELROUTE {
					poke()
				}
			}
		}
	}()
	return changes, lost, nil
}

type guard struct {
	s    *Spec
	o    Options
	h    *netlink.Handle
	plan *netcfg.Plan
	name string // the link's current name
	// lastFailed is what the last report said could not be put back: a lasting
	// failure is said once.
	lastFailed string
}

// check looks at the link and puts back what is missing, in the order the kernel
// needs: the link up (a down link loses its IPv4 routes), the address (routes name
// it as their source), then the routes. heard is when the change was heard of (zero:
// a periodic look). It reports whether the link is whole.
func (g *guard) check(heard time.Time) bool {
	l, err := g.h.LinkByIndex(g.s.Index)
	if err != nil {
		g.report(Restore{Link: g.name, Failed: []string{fmt.Sprintf("link %d: %v", g.s.Index, err)}})
		return false
	}
	g.name = l.Attrs().Name
	r := Restore{Link: g.name}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := g.h.LinkSetUp(l); err != nil {
			r.Failed = append(r.Failed, fmt.Sprintf("link up: %v", err))
		} else {
			r.LinkUp = true
		}
	}
	if missing, err := g.addrMissing(l); err != nil {
		r.Failed = append(r.Failed, err.Error())
	} else if missing {
		a := g.plan.NetlinkAddr()
		if g.s.Addr.Addr().Is6() {
			// It was ours a moment ago: no second duplicate address detection,
			// which would hold the address tentative (unusable) for a second.
			a.Flags |= unix.IFA_F_NODAD
		}
		if err := g.h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
			r.Failed = append(r.Failed, fmt.Sprintf("address %s: %v", g.s.Addr, err))
		} else if err == nil {
			r.Addr = g.s.Addr
		}
	}
	for _, rt := range g.s.Routes {
		desc := netcfg.DescribeRoute(rt, g.name)
		missing, err := g.routeMissing(rt)
		if err != nil {
			r.Failed = append(r.Failed, fmt.Sprintf("route %s: %v", desc, err))
			continue
		}
		if !missing {
			continue
		}
		if err := g.h.RouteAdd(g.plan.NetlinkRoute(g.s.Index, rt)); err != nil && !errors.Is(err, unix.EEXIST) {
			r.Failed = append(r.Failed, fmt.Sprintf("route %s: %v", desc, err))
		} else if err == nil {
			r.Routes = append(r.Routes, desc)
		}
	}
	if r.PutBack() || len(r.Failed) > 0 {
		if !heard.IsZero() {
			r.After = time.Since(heard)
		}
		g.report(r)
	} else {
		g.lastFailed = ""
	}
	return len(r.Failed) == 0
}

// report tells Restored, except a failure like the last one with nothing put back
// (the retries of a lasting failure say nothing new).
func (g *guard) report(r Restore) {
	failed := strings.Join(r.Failed, "; ")
	if !r.PutBack() && failed == g.lastFailed {
		return
	}
	g.lastFailed = failed
	if g.o.Restored != nil {
		g.o.Restored(r)
	}
}

// addrMissing reports whether the link lacks the boot address (with any prefix
// length: someone who set it again with another one meant it).
func (g *guard) addrMissing(l netlink.Link) (bool, error) {
	want := g.s.Addr.Addr()
	fam := unix.AF_INET
	if want.Is6() {
		fam = unix.AF_INET6
	}
	have, err := g.h.AddrList(l, fam)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range have {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == want {
			return false, nil
		}
	}
	return true, nil
}

// routeMissing reports whether no route to rt's destination is in the main table:
// one through another link or gateway is someone else's choice and stays.
func (g *guard) routeMissing(rt netcfg.Route) (bool, error) {
	nr := g.plan.NetlinkRoute(g.s.Index, rt)
	fam := unix.AF_INET
	if rt.Dst.Addr().Is6() {
		fam = unix.AF_INET6
	}
	have, err := g.h.RouteListFiltered(fam, &netlink.Route{Dst: nr.Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, err
	}
	return len(have) == 0, nil
}
