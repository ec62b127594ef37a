package netcfg

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/kmodule"
)

// TestKmoduleResolvesDebianVirtioNet checks that u-root's kmodule finds virtio_net and its
// dependencies in the Debian tree, without loading anything (DryRunCB).
func TestKmoduleResolvesDebianVirtioNet(t *testing.T) {
	root, kver := debianModules(t)
	var paths []string
	err := kmodule.ProbeOptions("virtio_net", "", kmodule.ProbeOpts{
		RootDir: root, KVer: kver, IgnoreProcMods: true,
		DryRunCB: func(p string) { paths = append(paths, p) },
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
