package netcfg

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// findLink finds the link with the iBFT MAC, loading its driver first if it is missing.
func (ap *applier) findLink() (netlink.Link, error) {
	if l, err := ap.linkByMAC(); l != nil || err != nil {
		return l, err
	}
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
			mods, err := ap.loadDriver()
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

// loadDriver loads the drivers of the iBFT NIC's PCI function. The iBFT gives only
// bus/device/function, so every network function at that address is a candidate, in
// whichever PCI domain (pciDevicesAt); usually there is one, in domain 0000. With
// several, each gets its drivers: loading a driver for a second NIC is harmless, and the
// MAC then picks the link.
func (ap *applier) loadDriver() ([]string, error) {
	devs := pciDevicesAt(ap.o.Sysfs, ap.p.PCI)
	if len(devs) == 0 {
		return nil, fmt.Errorf("no network device at PCI %s, in any domain, in %s", ap.p.PCI, filepath.Join(ap.o.Sysfs, "bus/pci/devices"))
	}
	if len(devs) > 1 {
		ap.logf("netcfg: PCI %s is in several domains (%s); loading the drivers of each", ap.p.PCI, strings.Join(devs, ", "))
	}
	return ap.loadDrivers(devs)
}

// loadDrivers loads the drivers of the PCI functions devs (sysfs names).
func (ap *applier) loadDrivers(devs []string) ([]string, error) {
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
	var mods []string
	var errs []error
	for _, name := range devs {
		// /sys/bus/pci/devices holds symlinks; walk the device's real directory.
		dev, err := filepath.EvalSymlinks(filepath.Join(ap.o.Sysfs, "bus/pci/devices", name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		// Two candidates of one model share their modules: load each once.
		got, err := coldplug(dev, aliases, func(m string) error {
			if slices.Contains(mods, m) {
				return nil
			}
			return load(m)
		}, ap.logf)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		for _, m := range got {
			if !slices.Contains(mods, m) {
				mods = append(mods, m)
			}
		}
	}
	if len(mods) == 0 && len(errs) > 0 {
		return nil, fmt.Errorf("loading its driver: %w", errors.Join(errs...))
	}
	for _, err := range errs {
		ap.logf("netcfg: warning: %v", err)
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

// crossCheckPCI compares the link's PCI function with the iBFT's. The iBFT has no
// domain, so a function in another domain with the same bus/device/function matches.
func (ap *applier) crossCheckPCI(name string) {
	got, ok := pciDeviceOf(ap.o.Sysfs, name, ap.p.MAC)
	same, otherDomain := samePCIFunction(got, ap.p.PCI)
	switch {
	case !ok:
		ap.logf("netcfg: %s has no PCI device in sysfs; PCI %s not cross-checked", name, ap.p.PCI)
	case !same:
		ap.logf("netcfg: warning: %s (MAC %s) is PCI %s, the iBFT says %s; using the MAC", name, ap.p.MAC, got, ap.p.PCI)
	case otherDomain:
		ap.logf("netcfg: %s (MAC %s) is PCI %s: the iBFT's %s, which records no domain", name, ap.p.MAC, got, ap.p.PCI)
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
