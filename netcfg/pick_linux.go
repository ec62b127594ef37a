package netcfg

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// pickLink finds the link of a plan without an iBFT: the one ip= names, else the
// first Ethernet link with carrier. When none is there yet, the drivers of every PCI
// network controller are loaded first. Apply.Choice says which link and why.
func (ap *applier) pickLink() (netlink.Link, error) {
	have, err := ap.candidates()
	if err != nil {
		return nil, err
	}
	if len(have) == 0 {
		timeout := ap.timeout(ap.o.LinkTimeout, DefaultLinkTimeout)
		devs := pciNetworkDevices(ap.o.Sysfs)
		werr := waitFor(ap.ctx, timeout, ap.subscribeLinks,
			func() (bool, error) {
				have, err = ap.candidates()
				return len(have) > 0, err
			},
			func() error {
				if len(devs) == 0 {
					return errors.New("no PCI network controller to load a driver for")
				}
				mods, err := ap.loadDrivers(devs)
				ap.a.Modules = mods
				for _, m := range mods {
					ap.a.did("loaded module "+m, nil)
				}
				ap.logf("netcfg: waiting up to %v for a link to appear (loaded %s)", timeout, orNone(strings.Join(mods, ", ")))
				return err
			})
		if len(have) == 0 {
			what := "an Ethernet link"
			if ap.p.Iface != "" {
				what = "link " + ap.p.Iface
			}
			return nil, fmt.Errorf("netcfg: no %s (links present: %s): %v", what, ap.presentMACs(), werr)
		}
	}
	if ap.p.Iface != "" {
		ap.a.Choice = ap.p.Iface + ", named by ip="
		return have[0], nil
	}
	if len(have) == 1 {
		ap.a.Choice = have[0].Attrs().Name + ", the only Ethernet link"
		return have[0], nil
	}
	return ap.firstWithCarrier(have)
}

// candidates lists the Ethernet devices (no loopback, no stacked links), or the one
// ip= names, by interface index.
func (ap *applier) candidates() ([]netlink.Link, error) {
	links, err := ap.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netcfg: list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if ap.p.Iface != "" {
			if a.Name == ap.p.Iface {
				out = append(out, l)
			}
			continue
		}
		if l.Type() == "device" && a.Flags&net.FlagLoopback == 0 && len(a.HardwareAddr) == 6 && !isZero(a.HardwareAddr) {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	return out, nil
}

// firstWithCarrier sets every candidate up, waits for carrier on any, and takes the
// first (by index) that has it; the others go down again.
func (ap *applier) firstWithCarrier(have []netlink.Link) (netlink.Link, error) {
	names := make([]string, len(have))
	upped := map[int]bool{}
	for i, l := range have {
		names[i] = l.Attrs().Name
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := ap.h.LinkSetUp(l); err != nil {
				ap.logf("netcfg: warning: set %s up: %v", names[i], err)
				continue
			}
			upped[l.Attrs().Index] = true
		}
	}
	var chosen netlink.Link
	timeout := ap.timeout(ap.o.CarrierTimeout, DefaultCarrierTimeout)
	err := waitFor(ap.ctx, timeout, ap.subscribeLinks, func() (bool, error) {
		for _, l := range have {
			cur, err := ap.h.LinkByIndex(l.Attrs().Index)
			if err == nil && cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
				chosen = cur
				return true, nil
			}
		}
		return false, nil
	}, func() error {
		ap.logf("netcfg: waiting up to %v for carrier on any of %s", timeout, strings.Join(names, ", "))
		return nil
	})
	for _, l := range have {
		if upped[l.Attrs().Index] && (chosen == nil || l.Attrs().Index != chosen.Attrs().Index) {
			if err := ap.h.LinkSetDown(l); err != nil {
				ap.logf("netcfg: warning: set %s down again: %v", l.Attrs().Name, err)
			}
		}
	}
	if chosen == nil {
		return nil, fmt.Errorf("netcfg: no carrier on any of %s: %v", strings.Join(names, ", "), err)
	}
	// setUp records the undo for the chosen link, which is up already: do it here.
	if upped[chosen.Attrs().Index] {
		l := chosen
		ap.a.did("set "+l.Attrs().Name+" up", func() error {
			if err := ap.h.LinkSetDown(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("set %s down: %w", l.Attrs().Name, err)
			}
			return nil
		})
	}
	ap.a.Choice = fmt.Sprintf("%s, the first link with carrier of %s", chosen.Attrs().Name, strings.Join(names, ", "))
	return chosen, nil
}
