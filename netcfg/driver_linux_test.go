package netcfg

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/u-root/pkg/kmodule"
)

// TestKmoduleResolvesDebianVirtioNet checks that u-root's kmodule finds virtio_net and its
// dependencies in the Debian tree, without loading anything (DryRunCB).
func TestKmoduleResolvesDebianVirtioNet(t *testing.T) {
	root, kver := debianModules(t)
	var (
		mu    sync.Mutex
		paths []string
	)
	err := kmodule.ProbeOptions("virtio_net", "", kmodule.ProbeOpts{
		RootDir: root, KVer: kver, IgnoreProcMods: true,
		// kmodule loads a module's dependencies from goroutines of their own, so
		// the callback runs concurrently: unguarded, appends got lost (1 run in 5).
		DryRunCB: func(p string) {
			mu.Lock()
			paths = append(paths, p)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".ko"))
	}
	for _, want := range []string{"virtio_net", "virtio", "virtio_ring", "failover"} {
		if !slices.Contains(names, want) {
			t.Errorf("probing virtio_net would load %q, want it to include %s", names, want)
		}
	}
	if names[len(names)-1] != "virtio_net" {
		t.Errorf("virtio_net must load after its dependencies: %q", names)
	}
}

// TestColdplugVirtioChain drives the coldplug loop over a sysfs tree that grows the way
// the kernel's does: loading virtio_pci makes the virtio device (and its modalias)
// appear below the PCI device, which then needs virtio_net.
func TestColdplugVirtioChain(t *testing.T) {
	root, kver := debianModules(t)
	a, err := LoadAliases(root, kver)
	if err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(t.TempDir(), "devices/pci0000:00/0000:00:03.0")
	writeFile(t, filepath.Join(dev, "modalias"), virtioPCIModalias+"\n")
	var loads []string
	load := func(m string) error {
		loads = append(loads, m)
		if m == "virtio_pci" {
			writeFile(t, filepath.Join(dev, "virtio0/modalias"), virtioNetModalias+"\n")
		}
		return nil
	}
	mods, err := coldplug(dev, a, load, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(mods, []string{"virtio_pci", "virtio_net"}) || !slices.Equal(loads, mods) {
		t.Errorf("loaded %q (calls %q), want [virtio_pci virtio_net]", mods, loads)
	}

	// A device nothing claims, and a failing load, are reported.
	bad := filepath.Join(t.TempDir(), "0000:00:04.0")
	writeFile(t, filepath.Join(bad, "modalias"), e1000Modalias)
	_, err = coldplug(bad, a, func(string) error { return os.ErrPermission }, t.Logf)
	if err == nil || !strings.Contains(err.Error(), "load e1000") {
		t.Errorf("failing load: err = %v, want it to name e1000", err)
	}
}

func TestPCIDeviceOf(t *testing.T) {
	sys := t.TempDir()
	// A virtio NIC: class/net/eth0/device -> the virtio device below the PCI device.
	writeFile(t, filepath.Join(sys, "devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/address"), "52:54:00:12:34:56\n")
	must(t, os.MkdirAll(filepath.Join(sys, "class/net"), 0o755))
	must(t, os.Symlink("../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0", filepath.Join(sys, "class/net/eth0")))
	must(t, os.Symlink("../../../virtio0", filepath.Join(sys, "devices/pci0000:00/0000:00:03.0/virtio0/net/eth0/device")))
	if got, ok := pciDeviceOf(sys, "eth0", mac("52:54:00:12:34:56")); !ok || got != "0000:00:03.0" {
		t.Errorf("pciDeviceOf = %q, %v; want 0000:00:03.0", got, ok)
	}
	if _, ok := pciDeviceOf(sys, "eth0", mac("02:00:00:00:00:01")); ok {
		t.Error("an eth0 with another MAC (another namespace's) was taken for ours")
	}
	if _, ok := pciDeviceOf(sys, "eth1", mac("52:54:00:12:34:56")); ok {
		t.Error("a missing interface has a PCI device")
	}
}

// pciFunction lays out a PCI function as sysfs does: the device under devices/, a
// symlink to it in bus/pci/devices, its modalias and (when class is not "") its class.
func pciFunction(t *testing.T, sys, hostBridge, name, modalias, class string) string {
	t.Helper()
	dev := filepath.Join(sys, "devices", hostBridge, name)
	writeFile(t, filepath.Join(dev, "modalias"), modalias+"\n")
	if class != "" {
		writeFile(t, filepath.Join(dev, "class"), class+"\n")
	}
	must(t, os.MkdirAll(filepath.Join(sys, "bus/pci/devices"), 0o755))
	must(t, os.Symlink(filepath.Join("../../../devices", hostBridge, name), filepath.Join(sys, "bus/pci/devices", name)))
	return dev
}

// The iBFT's bus/device/function is looked up in every PCI domain, domain 0000 first;
// functions that are not network controllers are not candidates.
func TestPCIDevicesAt(t *testing.T) {
	sys := t.TempDir()
	pciFunction(t, sys, "pci0001:3a/0001:3a:00.0", "0001:3b:00.0", e1000Modalias, "0x020000")
	pciFunction(t, sys, "pci10000:00", "10000:3b:00.0", e1000Modalias, "0x020000") // behind Intel VMD
	pciFunction(t, sys, "pci0000:00", "0000:3b:00.0", e1000Modalias, "0x010802")   // an NVMe drive
	pciFunction(t, sys, "pci0000:00", "0000:00:03.0", e1000Modalias, "0x020000")
	pciFunction(t, sys, "pci0002:00", "0002:3b:00.1", e1000Modalias, "0x020000")
	for _, tc := range []struct {
		bdf  PCIAddr
		want []string
	}{
		{0x3b00, []string{"0001:3b:00.0", "10000:3b:00.0"}},
		{0x0018, []string{"0000:00:03.0"}},
		{0x3b01, []string{"0002:3b:00.1"}},
		{0x3c00, nil},
	} {
		if got := pciDevicesAt(sys, tc.bdf); !slices.Equal(got, tc.want) {
			t.Errorf("pciDevicesAt(%s) = %q, want %q", tc.bdf, got, tc.want)
		}
	}
	// Domain 0000 comes first when the address is in several.
	pciFunction(t, sys, "pci0000:00", "0000:3b:00.1", e1000Modalias, "0x020000")
	if got := pciDevicesAt(sys, 0x3b01); !slices.Equal(got, []string{"0000:3b:00.1", "0002:3b:00.1"}) {
		t.Errorf("pciDevicesAt(3b:00.1) = %q, want domain 0000 first", got)
	}
	if got := pciDevicesAt(t.TempDir(), 0x0018); got != nil {
		t.Errorf("pciDevicesAt in an empty sysfs = %q", got)
	}
}

// fakeApplier is an applier for the iBFT NIC at bdf over the sysfs tree sys, whose
// modules.alias knows e1000 and virtio_pci. It records the modules it loads and the
// lines it logs.
func fakeApplier(t *testing.T, sys string, bdf PCIAddr) (ap *applier, loads, logs *[]string) {
	modRoot := t.TempDir()
	writeFile(t, filepath.Join(modRoot, "lib/modules/test/modules.alias"),
		"alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci\n")
	loads, logs = new([]string), new([]string)
	return &applier{
		p: &Plan{MAC: mac("02:1b:00:00:00:10"), PCI: bdf},
		o: Options{Sysfs: sys, ModulesRoot: modRoot, KernelVersion: "test",
			LoadModule: func(m string) error { *loads = append(*loads, m); return nil }},
		logf: func(f string, args ...any) { *logs = append(*logs, fmt.Sprintf(f, args...)) },
	}, loads, logs
}

// A NIC in PCI domain 0001: its driver is found by the iBFT's bus/device/function, and
// the link's PCI function passes the cross-check, with a note about the domain.
func TestNICInPCIDomain1(t *testing.T) {
	sys := t.TempDir()
	dev := pciFunction(t, sys, "pci0001:3a/0001:3a:00.0", "0001:3b:00.0", e1000Modalias, "0x020000")
	ap, loads, logs := fakeApplier(t, sys, 0x3b00)
	mods, err := ap.loadDriver()
	if err != nil || !slices.Equal(mods, []string{"e1000"}) || !slices.Equal(*loads, mods) {
		t.Fatalf("loadDriver = %q, %v (loads %q); want [e1000]", mods, err, *loads)
	}

	// The driver's link, as sysfs shows it.
	writeFile(t, filepath.Join(dev, "net/eth0/address"), "02:1b:00:00:00:10\n")
	must(t, os.Symlink("../..", filepath.Join(dev, "net/eth0/device")))
	must(t, os.MkdirAll(filepath.Join(sys, "class/net"), 0o755))
	must(t, os.Symlink("../../devices/pci0001:3a/0001:3a:00.0/0001:3b:00.0/net/eth0", filepath.Join(sys, "class/net/eth0")))
	if got, ok := pciDeviceOf(sys, "eth0", ap.p.MAC); !ok || got != "0001:3b:00.0" {
		t.Errorf("pciDeviceOf = %q, %v; want 0001:3b:00.0", got, ok)
	}
	*logs = nil
	ap.crossCheckPCI("eth0")
	want := "netcfg: eth0 (MAC 02:1b:00:00:00:10) is PCI 0001:3b:00.0: the iBFT's 3b:00.0, which records no domain"
	if !slices.Equal(*logs, []string{want}) {
		t.Errorf("cross-check logged %q, want %q", *logs, want)
	}
	ap.p.PCI = 0x3c00
	*logs = nil
	ap.crossCheckPCI("eth0")
	if len(*logs) != 1 || !strings.Contains((*logs)[0], "warning: eth0 (MAC 02:1b:00:00:00:10) is PCI 0001:3b:00.0, the iBFT says 3c:00.0") {
		t.Errorf("mismatch logged %q", *logs)
	}
}

// The same bus/device/function in two domains: both get their drivers, each module is
// loaded once, and the log says why.
func TestLoadDriverSeveralDomains(t *testing.T) {
	sys := t.TempDir()
	pciFunction(t, sys, "pci0000:00", "0000:3b:00.0", e1000Modalias, "0x020000")
	pciFunction(t, sys, "pci0001:00", "0001:3b:00.0", e1000Modalias, "0x020000")
	pciFunction(t, sys, "pci0002:00", "0002:3b:00.0", virtioPCIModalias, "")
	ap, loads, logs := fakeApplier(t, sys, 0x3b00)
	mods, err := ap.loadDriver()
	if err != nil || !slices.Equal(mods, []string{"e1000", "virtio_pci"}) || !slices.Equal(*loads, mods) {
		t.Errorf("loadDriver = %q, %v (loads %q); want [e1000 virtio_pci], each loaded once", mods, err, *loads)
	}
	if !slices.Contains(*logs, "netcfg: PCI 3b:00.0 is in several domains (0000:3b:00.0, 0001:3b:00.0, 0002:3b:00.0); loading the drivers of each") {
		t.Errorf("logs %q", *logs)
	}

	// Nothing at the address: the error names it and where it looked.
	ap.p.PCI = 0x3c00
	if _, err := ap.loadDriver(); err == nil || !strings.Contains(err.Error(), "no network device at PCI 3c:00.0, in any domain") {
		t.Errorf("missing device: %v", err)
	}
}

// TestSplitPCIName checks the hand-written parser against the pattern it replaced,
// on names sysfs writes and on near misses.
func TestSplitPCIName(t *testing.T) {
	pattern := regexp.MustCompile(`^([0-9a-f]{4,8}):([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])$`)
	names := []string{
		"0000:00:02.0", "0001:3b:00.0", "10000:01:00.1", "ffffffff:ff:1f.7", "0000:00:1f.7",
		"000:00:02.0", "000000000:00:02.0", "0000:00:02.8", "0000:00:02", "0000:00:02.00",
		"0000:0:02.0", "0000:00:2.0", "0000:00-02.0", "0000:00:02:0", "0000:00:02.0 ",
		"0000:AB:02.0", "000G:00:02.0", "0000.00:02.0", ":00:02.0", "", "virtio0", "pci0000:00",
		"0000:00:02.0x", "0000::00:02.0", "00000000:00:02.0",
	}
	for _, n := range names {
		m := pattern.FindStringSubmatch(n)
		domain, bdf, ok := splitPCIName(n)
		if ok != (m != nil) {
			t.Errorf("%q: splitPCIName ok=%v, pattern matches=%v", n, ok, m != nil)
			continue
		}
		if ok && (domain != m[1] || bdf != m[2]) {
			t.Errorf("%q: got %q %q, want %q %q", n, domain, bdf, m[1], m[2])
		}
	}
}
