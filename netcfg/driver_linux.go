package netcfg

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// maxColdplugRounds bounds the coldplug loop; real chains are two deep (virtio_pci, then
// virtio_net for the virtio device virtio_pci creates).
const maxColdplugRounds = 8

// coldplug loads the drivers for the PCI device dev (a sysfs directory) and for every
// device that appears below it, repeating until a round loads nothing new: a driver may
// create child devices that need drivers of their own. Module loads run synchronously
// and so do the probes they trigger for already-present devices, so a new child is in
// sysfs when load returns.
func coldplug(dev string, aliases *Aliases, load func(module string) error, logf func(string, ...any)) ([]string, error) {
	seenAlias := map[string]bool{}
	tried := map[string]bool{}
	var loaded []string
	var errs []error
	for round := 0; round < maxColdplugRounds; round++ {
		progress := false
		for _, alias := range modaliasesUnder(dev) {
			if seenAlias[alias] {
				continue
			}
			seenAlias[alias] = true
			mods := aliases.Lookup(alias)
			if len(mods) == 0 {
				logf("netcfg: no module for %s (built in, or no driver)", alias)
			}
			for _, m := range mods {
				if tried[m] {
					continue
				}
				tried[m] = true
				logf("netcfg: loading %s for %s", m, alias)
				if err := load(m); err != nil {
					errs = append(errs, fmt.Errorf("load %s: %w", m, err))
					continue
				}
				loaded = append(loaded, m)
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	if len(loaded) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		logf("netcfg: warning: %v", err)
	}
	return loaded, nil
}

// modaliasesUnder lists the modalias of dev and of every device below it. WalkDir does
// not follow symlinks, which keeps the walk inside the device's own subtree.
func modaliasesUnder(dev string) []string {
	var out []string
	filepath.WalkDir(dev, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		if b, err := os.ReadFile(path); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				out = append(out, s)
			}
		}
		return nil
	})
	return out
}

// kmoduleLoader loads modules with their dependencies from <root>/lib/modules/<kver>.
func kmoduleLoader(root, kver string) (func(string) error, error) {
	p, err := kmodule.NewProber(kmodule.ProbeOpts{RootDir: root, KVer: kver})
	if err != nil {
		return nil, err
	}
	return func(name string) error { return p.Probe(name, "") }, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// splitPCIName splits a PCI function's sysfs name, domain:bus:device.function, into
// its domain and its bus:device.function ("0000:00:02.0" is "0000" and "00:02.0"), or
// reports false. Domains are four hex digits on most machines but wider elsewhere:
// Intel VMD puts the devices behind it in domains from 10000. Written out rather than
// a regexp: this was the binary's only one, and compiling it at start-up cost every
// isboot process (PID 1 above all, whose code TCG translates cold) about 10 ms.
func splitPCIName(name string) (domain, bdf string, ok bool) {
	i := strings.IndexByte(name, ':')
	if i < 4 || i > 8 || len(name)-i-1 != len("00:00.0") {
		return "", "", false
	}
	domain, bdf = name[:i], name[i+1:]
	if !lowerHex(domain) || !lowerHex(bdf[0:2]) || bdf[2] != ':' || !lowerHex(bdf[3:5]) ||
		bdf[5] != '.' || bdf[6] < '0' || bdf[6] > '7' {
		return "", "", false
	}
	return domain, bdf, true
}

// lowerHex reports whether s is all lowercase hex digits, as sysfs writes them.
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// pciDevicesAt lists the sysfs names of the PCI functions at bus/device/function bdf in
// every PCI domain, domain 0000 first and the others in numeric order. The iBFT records
// no domain (and the kernel's iscsi_ibft only looks in domain 0), but a server's NIC can
// sit in another one, e.g. 0001:3b:00.0 behind a second host bridge. A function whose
// class says it is not a network controller (class 02) is left out: the iBFT NIC is one.
func pciDevicesAt(sysfs string, bdf PCIAddr) []string {
	ents, err := os.ReadDir(filepath.Join(sysfs, "bus/pci/devices"))
	if err != nil {
		return nil
	}
	type dev struct {
		name   string
		domain uint64
	}
	var devs []dev
	for _, e := range ents {
		domain, fn, ok := splitPCIName(e.Name())
		if !ok || fn != bdf.String() {
			continue
		}
		class, err := os.ReadFile(filepath.Join(sysfs, "bus/pci/devices", e.Name(), "class"))
		if err == nil && !strings.HasPrefix(strings.TrimSpace(string(class)), "0x02") {
			continue
		}
		d, _ := strconv.ParseUint(domain, 16, 32)
		devs = append(devs, dev{e.Name(), d})
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].domain < devs[j].domain })
	names := make([]string, len(devs))
	for i, d := range devs {
		names[i] = d.name
	}
	return names
}

// pciNetworkDevices lists the sysfs names of every network controller (class 02)
// on the PCI buses: a boot without an iBFT knows no address to start from.
func pciNetworkDevices(sysfs string) []string {
	ents, err := os.ReadDir(filepath.Join(sysfs, "bus/pci/devices"))
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		class, err := os.ReadFile(filepath.Join(sysfs, "bus/pci/devices", e.Name(), "class"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(class)), "0x02") {
			names = append(names, e.Name())
		}
	}
	return names
}

// samePCIFunction reports whether the sysfs name dev is the function bdf, in any
// domain, and whether it is in another domain than 0000.
func samePCIFunction(dev string, bdf PCIAddr) (same, otherDomain bool) {
	domain, fn, ok := splitPCIName(dev)
	if !ok || fn != bdf.String() {
		return false, false
	}
	d, _ := strconv.ParseUint(domain, 16, 32)
	return true, d != 0
}

// pciDeviceOf finds the PCI device behind the network interface name with MAC mac,
// walking up from the device link because virtio NICs hang below a virtio device, not
// the PCI one. sysfs shows the interfaces of the namespace it was mounted in, so an
// interface of that name whose MAC differs is someone else's: no answer.
func pciDeviceOf(sysfs, name string, mac net.HardwareAddr) (string, bool) {
	b, err := os.ReadFile(filepath.Join(sysfs, "class/net", name, "address"))
	if err != nil || strings.TrimSpace(string(b)) != mac.String() {
		return "", false
	}
	dev, err := filepath.EvalSymlinks(filepath.Join(sysfs, "class/net", name, "device"))
	if err != nil {
		return "", false
	}
	for d := dev; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, _, ok := splitPCIName(filepath.Base(d)); ok {
			return filepath.Base(d), true
		}
	}
	return "", false
}
