package netcfg

import (
	"context"
	"errors"
	"fmt"
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
	LinkTimeout, CarrierTimeout, DADTimeout, DHCPTimeout, SLAACTimeout time.Duration
}

// Default bounds for the waits. A PHY negotiating a gigabit link can take several
// seconds; IPv6 DAD takes about one second plus a random delay of up to one second.
const (
	DefaultLinkTimeout    = 15 * time.Second
	DefaultCarrierTimeout = 20 * time.Second
	DefaultDADTimeout     = 10 * time.Second
	// A host solicits a router when its link comes up and again every 4 s (RFC 4861);
	// the address then needs its DAD.
	DefaultSLAACTimeout = 15 * time.Second
)

// Applied records what Apply changed, so it can be reported and undone.
type Applied struct {
	Link    string   // the interface carrying the address (the VLAN link when tagged)
	Parent  string   // the physical interface
	Modules []string // modules loaded to make the link appear
	Changes []string // each change made, in order; empty when everything was in place
	// Lease is the DHCP lease the address came from (ip=dhcp, ip=dhcp6) or that a
	// renewal confirmed (an iBFT DHCP address); nil: none. Hand it to KeepLease.
	Lease *Lease
	// Choice says which link a plan without an iBFT took, and why.
	Choice string

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
	var parent netlink.Link
	var err error
	if len(p.MAC) == 0 {
		parent, err = ap.pickLink()
	} else {
		parent, err = ap.findLink()
	}
	if err != nil {
		return err
	}
	ap.a.Parent = parent.Attrs().Name
	if len(p.MAC) == 0 {
		p.MAC = parent.Attrs().HardwareAddr
		ap.logf("netcfg: using %s", ap.a.Choice)
	} else {
		ap.crossCheckPCI(parent.Attrs().Name)
	}
	if p.MTU > 0 && parent.Attrs().MTU != p.MTU {
		if err := ap.h.LinkSetMTU(parent, p.MTU); err != nil {
			return fmt.Errorf("netcfg: set the MTU of %s to %d: %w", parent.Attrs().Name, p.MTU, err)
		}
		ap.a.did(fmt.Sprintf("set the MTU of %s to %d", parent.Attrs().Name, p.MTU), nil)
	}
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
	if err := ap.obtain(link); err != nil {
		return err
	}
	if err := ap.address(link); err != nil {
		return err
	}
	if p.AwaitSLAAC {
		ap.waitSLAAC(link)
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
	switch {
	case p.Renew:
		ap.renewLease(link)
	case p.ConfirmLater && p.Addr.Addr().Is4():
		l := UnconfirmedLease(link.Attrs().Name, p)
		ap.a.Lease = &l
	}
	return nil
}

// obtain gets the address of a DHCP or autoconfiguration plan; a static plan has it.
func (ap *applier) obtain(l netlink.Link) error {
	switch ap.p.Mode {
	case ModeDHCP4:
		return ap.acquire4(l.Attrs().Name, l.Attrs().HardwareAddr)
	case ModeDHCP6:
		return ap.acquire6(l)
	case ModeAuto6:
		return ap.waitAuto6(l)
	}
	return nil
}
