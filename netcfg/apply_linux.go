package netcfg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options carries Apply's side effects, so tests can run it in a network namespace
// without touching the host. The zero value configures the running system.
type Options struct {
	// Namespace to configure; nil: the caller's network namespace.
	Namespace *netns.NsHandle
	// ResolvConf is the file DNS servers go to; "": /etc/resolv.conf.
	ResolvConf string
	// SetHostname and Hostname change and read the hostname; nil: sethostname(2), uname(2).
	SetHostname func(string) error
	Hostname    func() (string, error)
	// Sysfs is where sysfs is mounted; "": /sys.
	Sysfs string
	// ModulesRoot and KernelVersion locate lib/modules/<kver>; "": / and uname -r.
	ModulesRoot   string
	KernelVersion string
	// LoadModule loads a module with its dependencies; nil: u-root's kmodule.
	LoadModule func(name string) error
	// Logf reports progress and warnings; nil: silent.
	Logf func(format string, args ...any)
	// Bounded waits; zero: the defaults below.
	LinkTimeout, CarrierTimeout, DADTimeout, DHCPTimeout time.Duration
}

// Default bounds for the waits. A PHY negotiating a gigabit link can take several
// seconds; IPv6 DAD takes about one second plus a random delay of up to one second.
const (
	DefaultLinkTimeout    = 15 * time.Second
	DefaultCarrierTimeout = 20 * time.Second
	DefaultDADTimeout     = 10 * time.Second
)

// Applied records what Apply changed, so it can be reported and undone.
type Applied struct {
	Link    string   // the interface carrying the address (the VLAN link when tagged)
	Parent  string   // the physical interface
	Modules []string // modules loaded to make the link appear
	Changes []string // each change made, in order; empty when everything was in place

	h    *netlink.Handle
	undo []func() error
}

// Undo reverts the changes in reverse order, trying every one, and releases the
// netlink handle.
func (a *Applied) Undo() error {
	var errs []error
	for i := len(a.undo) - 1; i >= 0; i-- {
		if err := a.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	a.undo = nil
	a.Close()
	return errors.Join(errs...)
}

// Close releases the netlink handle and keeps the configuration.
func (a *Applied) Close() {
	if a.h != nil {
		a.h.Close()
		a.h = nil
	}
}

func (a *Applied) did(what string, undo func() error) {
	a.Changes = append(a.Changes, what)
	if undo != nil {
		a.undo = append(a.undo, undo)
	}
}

type applier struct {
	ctx  context.Context
	p    *Plan
	o    Options
	h    *netlink.Handle
	a    *Applied
	logf func(string, ...any)
}

// Apply configures the system as p says. It is idempotent: what is already in place is
// left alone and not recorded, so a second Apply reports no changes. It never removes
// anything it did not add. On failure it undoes what it did and returns the error.
func Apply(ctx context.Context, p *Plan, o Options) (*Applied, error) {
	ap := &applier{ctx: ctx, p: p, o: o, logf: o.Logf}
	if ap.logf == nil {
		ap.logf = func(string, ...any) {}
	}
	if ap.o.Sysfs == "" {
		ap.o.Sysfs = "/sys"
	}
	if ap.o.ResolvConf == "" {
		ap.o.ResolvConf = "/etc/resolv.conf"
	}
	var err error
	if o.Namespace != nil {
		ap.h, err = netlink.NewHandleAt(*o.Namespace, unix.NETLINK_ROUTE)
	} else {
		ap.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netcfg: netlink: %w", err)
	}
	ap.a = &Applied{h: ap.h}
	if err := ap.run(); err != nil {
		if uerr := ap.a.Undo(); uerr != nil {
			ap.logf("netcfg: warning: undoing after failure: %v", uerr)
		}
		return nil, err
	}
	return ap.a, nil
}

func (ap *applier) run() error {
	p := ap.p
	parent, err := ap.findLink()
	if err != nil {
		return err
	}
	ap.a.Parent = parent.Attrs().Name
	ap.crossCheckPCI(parent.Attrs().Name)
	if err := ap.setUp(parent); err != nil {
		return err
	}
	link := parent
	if p.VLAN != 0 {
		if link, err = ap.vlan(parent); err != nil {
			return err
		}
		if err := ap.setUp(link); err != nil {
			return err
		}
	}
	ap.a.Link = link.Attrs().Name
	if err := ap.waitCarrier(link); err != nil {
		return err
	}
	if err := ap.address(link); err != nil {
		return err
	}
	for _, r := range p.Routes {
		if err := ap.route(link, r); err != nil {
			return err
		}
	}
	if err := ap.resolvConf(); err != nil {
		return err
	}
	if err := ap.hostname(); err != nil {
		return err
	}
	if p.Renew {
		ap.renewLease(link)
	}
	return nil
}

// findLink finds the link with the iBFT MAC, loading its driver first if it is missing.
func (ap *applier) findLink() (netlink.Link, error) {
	if l, err := ap.linkByMAC(); l != nil || err != nil {
		return l, err
	}
	dev := filepath.Join(ap.o.Sysfs, "bus/pci/devices", ap.p.PCI.SysfsName())
	var found netlink.Link
	var why string
	// Listen before loading, so a link that appears during the load is not missed.
	err := waitFor(ap.ctx, ap.timeout(ap.o.LinkTimeout, DefaultLinkTimeout), ap.subscribeLinks,
		func() (bool, error) {
			l, err := ap.linkByMAC()
			found = l
			return l != nil, err
		},
		func() error {
			mods, err := ap.loadDriver(dev)
			ap.a.Modules = mods
			if err != nil {
				return err
			}
			ap.logf("netcfg: waiting up to %v for a link with MAC %s to appear (loaded %s)",
				ap.timeout(ap.o.LinkTimeout, DefaultLinkTimeout), ap.p.MAC, orNone(strings.Join(mods, ", ")))
			return nil
		})
	if found != nil {
		for _, m := range ap.a.Modules {
			ap.a.did("loaded module "+m, nil)
		}
		return found, nil
	}
	if err != nil {
		why = err.Error()
	}
	if len(ap.a.Modules) > 0 {
		why = fmt.Sprintf("loaded %s, but no such link appeared: %s", strings.Join(ap.a.Modules, ", "), why)
	}
	return nil, fmt.Errorf("netcfg: nic%d: no link has MAC %s (PCI %s: %s); links present: %s",
		ap.p.NIC, ap.p.MAC, ap.p.PCI, why, ap.presentMACs())
}

func (ap *applier) loadDriver(dev string) ([]string, error) {
	// /sys/bus/pci/devices holds symlinks; walk the device's real directory.
	dev, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return nil, fmt.Errorf("no such PCI device in %s", filepath.Join(ap.o.Sysfs, "bus/pci/devices"))
	}
	root, kver := ap.o.ModulesRoot, ap.o.KernelVersion
	if root == "" {
		root = "/"
	}
	if kver == "" {
		kver = kernelRelease()
	}
	aliases, err := LoadAliases(root, kver)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve its driver: %w", err)
	}
	load := ap.o.LoadModule
	if load == nil {
		if load, err = kmoduleLoader(root, kver); err != nil {
			return nil, fmt.Errorf("cannot load its driver: %w", err)
		}
	}
	mods, err := coldplug(dev, aliases, load, ap.logf)
	if err != nil {
		return mods, fmt.Errorf("loading its driver: %w", err)
	}
	if len(mods) == 0 {
		return nil, errors.New("no driver module to load for it")
	}
	return mods, nil
}

func (ap *applier) linkByMAC() (netlink.Link, error) {
	links, err := ap.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netcfg: list links: %w", err)
	}
	// VLANs (and a bond over the NIC) share its MAC: prefer a real device, and never
	// take a link stacked on another.
	var other netlink.Link
	for _, l := range links {
		if !bytes.Equal(l.Attrs().HardwareAddr, ap.p.MAC) {
			continue
		}
		switch l.Type() {
		case "device":
			return l, nil
		case "vlan", "macvlan", "macvtap", "ipvlan":
		default:
			if other == nil {
				other = l
			}
		}
	}
	return other, nil
}

func (ap *applier) presentMACs() string {
	links, err := ap.h.LinkList()
	if err != nil {
		return "(cannot list: " + err.Error() + ")"
	}
	var s []string
	for _, l := range links {
		if len(l.Attrs().HardwareAddr) == 6 && !isZero(l.Attrs().HardwareAddr) {
			s = append(s, l.Attrs().Name+" "+l.Attrs().HardwareAddr.String())
		}
	}
	return orNone(strings.Join(s, ", "))
}

func (ap *applier) crossCheckPCI(name string) {
	got, ok := pciDeviceOf(ap.o.Sysfs, name, ap.p.MAC)
	switch {
	case !ok:
		ap.logf("netcfg: %s has no PCI device in sysfs; PCI %s not cross-checked", name, ap.p.PCI)
	case got != ap.p.PCI.SysfsName():
		ap.logf("netcfg: warning: %s (MAC %s) is PCI %s, the iBFT says %s; using the MAC", name, ap.p.MAC, got, ap.p.PCI.SysfsName())
	}
}

func (ap *applier) setUp(l netlink.Link) error {
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	name := l.Attrs().Name
	if err := ap.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("netcfg: set %s up: %w", name, err)
	}
	ap.a.did("set "+name+" up", func() error {
		if err := ap.h.LinkSetDown(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("set %s down: %w", name, err)
		}
		return nil
	})
	return nil
}

// vlan finds or creates the VLAN link for p.VLAN on parent.
func (ap *applier) vlan(parent netlink.Link) (netlink.Link, error) {
	links, err := ap.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netcfg: list links: %w", err)
	}
	for _, l := range links {
		if v, ok := l.(*netlink.Vlan); ok && v.ParentIndex == parent.Attrs().Index && v.VlanId == int(ap.p.VLAN) {
			return l, nil
		}
	}
	name := LinkName(parent.Attrs().Name, ap.p.VLAN)
	v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index}, VlanId: int(ap.p.VLAN)}
	if err := ap.h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("netcfg: create VLAN %s (id %d on %s): %w", name, ap.p.VLAN, parent.Attrs().Name, err)
	}
	l, err := ap.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netcfg: VLAN %s: %w", name, err)
	}
	ap.a.did(fmt.Sprintf("created VLAN %s (id %d on %s)", name, ap.p.VLAN, parent.Attrs().Name), func() error {
		if err := ap.h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	})
	return l, nil
}

func (ap *applier) waitCarrier(l netlink.Link) error {
	name, idx := l.Attrs().Name, l.Attrs().Index
	timeout := ap.timeout(ap.o.CarrierTimeout, DefaultCarrierTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeLinks,
		func() (bool, error) {
			cur, err := ap.h.LinkByIndex(idx)
			if err != nil {
				return false, err
			}
			return cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0, nil
		},
		func() error {
			ap.logf("netcfg: waiting up to %v for carrier on %s", timeout, name)
			return nil
		})
	if err != nil {
		return fmt.Errorf("netcfg: %s: waiting for carrier: %w", name, err)
	}
	return nil
}

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
		addr := &netlink.Addr{IPNet: ipNet(p.Addr)}
		if p.LinkOnly {
			addr.Scope = unix.RT_SCOPE_LINK
		}
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

// waitDAD waits until the kernel has finished duplicate address detection for our
// IPv6 address: until then it cannot be used as a source.
func (ap *applier) waitDAD(l netlink.Link) error {
	ip, name := ap.p.Addr.Addr(), l.Attrs().Name
	timeout := ap.timeout(ap.o.DADTimeout, DefaultDADTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeAddrs,
		func() (bool, error) {
			addrs, err := ap.h.AddrList(l, unix.AF_INET6)
			if err != nil {
				return false, err
			}
			for _, a := range addrs {
				if !a.IP.Equal(ip.AsSlice()) {
					continue
				}
				if a.Flags&unix.IFA_F_DADFAILED != 0 {
					return false, fmt.Errorf("another host on the link already uses %s", ip)
				}
				return a.Flags&unix.IFA_F_TENTATIVE == 0, nil
			}
			return false, fmt.Errorf("%s disappeared from %s", ip, name)
		},
		func() error {
			ap.logf("netcfg: waiting up to %v for duplicate address detection of %s on %s", timeout, ip, name)
			return nil
		})
	if err != nil {
		return fmt.Errorf("netcfg: %s: duplicate address detection for %s: %w", name, ip, err)
	}
	return nil
}

func (ap *applier) route(l netlink.Link, r Route) error {
	name := l.Attrs().Name
	fam := family(r.Dst.Addr())
	nr := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       ipNet(r.Dst),
		Src:       ap.p.Addr.Addr().AsSlice(),
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
	} else if fam == unix.AF_INET {
		nr.Scope = netlink.SCOPE_LINK
	}
	desc := describeRoute(r, name)
	existing, err := ap.h.RouteListFiltered(fam, &netlink.Route{Dst: nr.Dst, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("netcfg: list routes to %s: %w", r.Dst, err)
	}
	for _, e := range existing {
		if e.LinkIndex == nr.LinkIndex && e.Gw.Equal(nr.Gw) {
			return nil // already in place
		}
	}
	if len(existing) > 0 {
		// Someone else's route: keep it. The boot targets have their own host routes.
		ap.logf("netcfg: warning: keeping the existing route %s; not adding %s", existing[0], desc)
		return nil
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

func describeRoute(r Route, link string) string {
	dst := r.Dst.String()
	if r.Dst.Bits() == 0 {
		dst = "default"
	}
	if r.Via.IsValid() {
		return fmt.Sprintf("%s via %s dev %s", dst, r.Via, link)
	}
	return fmt.Sprintf("%s dev %s", dst, link)
}

func (ap *applier) resolvConf() error {
	if len(ap.p.DNS) == 0 {
		return nil
	}
	path := ap.o.ResolvConf
	restore, changed, err := writeResolvConf(path, ap.p.DNS, fmt.Sprintf("iBFT nic%d", ap.p.NIC))
	if err != nil {
		return fmt.Errorf("netcfg: %w", err)
	}
	if changed {
		ap.a.did("wrote the DNS servers to "+path, restore)
	}
	return nil
}

func (ap *applier) hostname() error {
	want := ap.p.Hostname
	if want == "" {
		return nil
	}
	set, get := ap.o.SetHostname, ap.o.Hostname
	if set == nil {
		set = func(s string) error { return unix.Sethostname([]byte(s)) }
	}
	if get == nil {
		get = utsHostname
	}
	old, err := get()
	if err != nil {
		return fmt.Errorf("netcfg: read the hostname: %w", err)
	}
	if old == want {
		return nil
	}
	if err := set(want); err != nil {
		return fmt.Errorf("netcfg: set the hostname to %q: %w", want, err)
	}
	ap.a.did(fmt.Sprintf("set the hostname to %q (was %q)", want, old), func() error {
		if err := set(old); err != nil {
			return fmt.Errorf("restore the hostname %q: %w", old, err)
		}
		return nil
	})
	return nil
}

func utsHostname() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(u.Nodename[:]), nil
}

func (ap *applier) timeout(set, def time.Duration) time.Duration {
	if set > 0 {
		return set
	}
	return def
}

func (ap *applier) subscribeLinks(done chan struct{}) (<-chan struct{}, error) {
	ch := make(chan netlink.LinkUpdate, 64)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: ap.o.Namespace})
	return wakeups(ch, done), err
}

func (ap *applier) subscribeAddrs(done chan struct{}) (<-chan struct{}, error) {
	ch := make(chan netlink.AddrUpdate, 64)
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: ap.o.Namespace})
	return wakeups(ch, done), err
}

// wakeups turns a stream of netlink updates into "something changed" signals; the
// waiter re-reads the state it cares about, which keeps it simple and race-free. It
// drains the update channel until the subscription closes it.
func wakeups[U any](updates <-chan U, done <-chan struct{}) <-chan struct{} {
	wake := make(chan struct{}, 1)
	go func() {
		defer close(wake)
		for range updates {
			select {
			case wake <- struct{}{}:
			default:
			case <-done:
			}
		}
	}()
	return wake
}

// waitFor waits until check reports true, re-checking whenever the kernel reports a
// change, for at most timeout. It subscribes before the first check (and before
// trigger, which starts whatever should make check true) so no change is missed.
// trigger runs only when the first check fails.
func waitFor(ctx context.Context, timeout time.Duration, subscribe func(done chan struct{}) (<-chan struct{}, error),
	check func() (bool, error), trigger func() error) error {
	done := make(chan struct{})
	defer close(done)
	wake, err := subscribe(done)
	if err != nil {
		return fmt.Errorf("netlink subscribe: %w", err)
	}
	if ok, err := check(); ok || err != nil {
		return err
	}
	if err := trigger(); err != nil {
		return err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if ok, err := check(); ok || err != nil {
			return err
		}
		select {
		case _, open := <-wake:
			if !open {
				return errors.New("netlink subscription ended")
			}
		case <-timer.C:
			return fmt.Errorf("gave up after %v", timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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
