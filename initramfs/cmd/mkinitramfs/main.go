// Command mkinitramfs builds isboot's initramfs: isboot as /init, u-root's core
// commands for a rescue shell, and the kernel modules a boot from an iSCSI LUN needs
// (NIC drivers, nbd, root filesystems) with their modules.dep and modules.alias, and
// the firmware those modules declare that the build host has (-firmware-dir). The same
// inputs give the same bytes. It prints the image's size and warns when it is over the
// budget (docs/fleet.md).
//
//	mkinitramfs -isboot build/isboot -o build/isboot-initramfs.img
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/isboot/isboot/initramfs"
)

// defaultModules are loaded by name or modalias at boot; dependencies come along.
// docs/fleet.md lists the NICs and why each is here; keep the two in step.
var defaultModules = []string{
	// NICs (the iBFT NIC's driver is found by its PCI modalias): virtual machines ...
	"virtio_pci", "virtio_net", "e1000", "ena", "vmxnet3", "hv_netvsc",
	// ... and servers and workstations
	"mlx5_core", "ice", "i40e", "ixgbe", "igb", "e1000e", "bnxt_en", "tg3", "qede", "be2net", "r8169",
	// the LUN, and what ext4/jbd2 want from the crypto API
	"nbd", "crc32c_generic", "crc32c-intel",
	// root filesystems
	"ext4", "xfs", "btrfs", "vfat",
}

// defaultCompression is the image's: the kernel unpacks LZ4 in half the time gzip takes
// (0.30-0.41 s against 0.61-0.81 s for the default image under TCG), for an image a
// quarter larger (14.4 against 11.3 MiB). Ubuntu's initramfs-tools made the same
// choice for the same reason. -compress gzip is for a kernel without CONFIG_RD_LZ4 or
// a loader that fetches slowly (TFTP).
const defaultCompression = initramfs.LZ4

// sizeBudget bounds the compressed image: the boot loader (PXE, UEFI, iPXE over HTTP or
// TFTP) fetches it and holds it in memory next to the kernel, and the kernel unpacks it
// into RAM as well.
const sizeBudget = 16 << 20

type options struct {
	isboot      string
	out         string
	kernelDir   string // holds lib/modules/<kver>
	kver        string
	modules     []string
	firmwareDir string // "": no firmware
	rescue      string // "uroot", "busybox" or "none"
	bbCache     string
}

func main() {
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "isboot")
	}
	var o options
	var extra, compress string
	flag.StringVar(&o.isboot, "isboot", "build/isboot", "the static isboot binary, installed as /init")
	flag.StringVar(&o.out, "o", "build/isboot-initramfs.img", "output file")
	flag.StringVar(&o.kver, "kver", "", "kernel version (default: the contents of $ISBOOT_CACHE/kernel/current)")
	flag.StringVar(&o.kernelDir, "kernel-dir", "", "directory holding lib/modules/<kver> (default: $ISBOOT_CACHE/kernel/<kver>)")
	flag.StringVar(&extra, "modules", "", "comma-separated extra modules")
	flag.StringVar(&o.firmwareDir, "firmware-dir", "/lib/firmware", "where the firmware the modules declare is looked up (\"\": carry none)")
	flag.StringVar(&o.rescue, "rescue", "uroot", "rescue shell: uroot (u-root's gosh and core commands), busybox (the host's static busybox) or none")
	flag.StringVar(&compress, "compress", defaultCompression.String(), "lz4 (the LZ4 legacy frame: unpacked by the kernel in half gzip's time, a quarter larger), gzip (every kernel has it; for slow TFTP) or none")
	flag.Parse()
	c, err := initramfs.ParseCompression(compress)
	if err != nil {
		fatal(err)
	}
	if o.kver == "" {
		b, err := os.ReadFile(filepath.Join(cache, "kernel", "current"))
		if err != nil {
			fatal(fmt.Errorf("kernel version: %w (run make deps, or give -kver)", err))
		}
		o.kver = strings.TrimSpace(string(b))
	}
	if o.kernelDir == "" {
		o.kernelDir = filepath.Join(cache, "kernel", o.kver)
	}
	o.modules = append(append([]string{}, defaultModules...), splitList(extra)...)
	o.bbCache = filepath.Join(cache, "uroot-bb")

	a, fw, err := build(&o)
	if err != nil {
		fatal(err)
	}
	a.Compression = c
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		fatal(err)
	}
	if err := a.WriteFile(o.out); err != nil {
		fatal(err)
	}
	st, err := os.Stat(o.out)
	if err != nil {
		fatal(err)
	}
	fmt.Printf("%s: %d bytes (%.1f MiB of the %d MiB budget), %d modules for %s, rescue shell: %s\n",
		o.out, st.Size(), float64(st.Size())/(1<<20), sizeBudget>>20, len(a.Modules(o.kver)), o.kver, o.rescue)
	fmt.Print(firmwareSummary(fw, o.firmwareDir))
	if w := budgetWarning(st.Size()); w != "" {
		fmt.Fprintln(os.Stderr, w)
	}
}

// budgetWarning is the line to print when a compressed image of size bytes is over budget.
func budgetWarning(size int64) string {
	if size <= sizeBudget {
		return ""
	}
	return fmt.Sprintf("mkinitramfs: warning: the image is %.1f MiB, over the %d MiB budget by %d bytes (docs/fleet.md)",
		float64(size)/(1<<20), sizeBudget>>20, size-sizeBudget)
}

// firmwareSummary says which declared firmware went in and which the firmware directory
// lacks, by module: a NIC whose firmware is missing may not come up.
func firmwareSummary(fw []initramfs.Firmware, dir string) string {
	var b strings.Builder
	if dir == "" {
		fmt.Fprintf(&b, "firmware: none carried (-firmware-dir \"\"); the modules declare %d files\n", len(fw))
		return b.String()
	}
	var found []string
	var missing []initramfs.Firmware
	for _, f := range fw {
		if len(f.Files) > 0 {
			found = append(found, f.Files...)
		} else {
			missing = append(missing, f)
		}
	}
	fmt.Fprintf(&b, "firmware: %d of %d declared files found in %s", len(fw)-len(missing), len(fw), dir)
	if len(found) > 0 {
		fmt.Fprintf(&b, ": %s", strings.Join(found, " "))
	}
	b.WriteString("\n")
	if len(missing) > 0 {
		b.WriteString("firmware missing (install the firmware packages on the build host to carry it):\n")
		for i, f := range missing {
			if i == 0 || missing[i-1].Module != f.Module {
				fmt.Fprintf(&b, "  %s:", f.Module)
			}
			b.WriteString(" " + f.Name)
			if i == len(missing)-1 || missing[i+1].Module != f.Module {
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
	os.Exit(1)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// build assembles the archive. It also returns the firmware the modules declare, found
// or not.
func build(o *options) (*initramfs.Archive, []initramfs.Firmware, error) {
	a := initramfs.New()
	var fw []initramfs.Firmware
	add := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				if e, ok := r.(error); ok {
					err = e
					return
				}
				panic(r)
			}
		}()
		add(a.AddFile("init", o.isboot, 0o755))
		add(a.AddSymlink("bin/isboot", "/init"))
		// The kernel opens /dev/console as init's stdio before anything mounts devtmpfs.
		add(a.AddCharDev("dev/console", 0o600, 5, 1))
		add(a.AddCharDev("dev/null", 0o666, 1, 3))
		for _, d := range []string{"proc", "sys", "run", "newroot", "tmp", "etc", "sbin"} {
			add(a.AddDir(d, 0o755))
		}
		add(a.AddModules(o.kernelDir, o.kver, o.modules...))
		var ferr error
		fw, ferr = a.AddFirmware(o.firmwareDir, o.kver)
		add(ferr)
		add(addRescue(a, o))
	}()
	return a, fw, err
}

// addRescue puts the rescue shell in. u-root's commands are built once per u-root
// version and Go toolchain and cached.
func addRescue(a *initramfs.Archive, o *options) error {
	switch o.rescue {
	case "none":
		return nil
	case "busybox":
		bb, err := findBusybox()
		if err != nil {
			return err
		}
		if err := a.AddFile("bin/busybox", bb, 0o755); err != nil {
			return err
		}
		for _, c := range []string{"sh", "ls", "cat", "ip", "mount", "dmesg", "ps", "poweroff", "reboot"} {
			if err := a.AddSymlink("bin/"+c, "busybox"); err != nil {
				return err
			}
		}
		return nil
	case "uroot":
		bin, err := cachedBB(o.bbCache)
		if err != nil {
			return err
		}
		if err := a.AddFile("bin/bb", bin, 0o755); err != nil {
			return err
		}
		for _, c := range rescueCommands {
			if err := a.AddSymlink("bin/"+c, "bb"); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("-rescue %q: want uroot, busybox or none", o.rescue)
}

func findBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("-rescue busybox: no busybox on this host (apt-get install busybox-static)")
}

// cachedBB returns u-root's busybox binary, building it when the cache lacks one for
// this u-root version, Go version and command list.
func cachedBB(dir string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), runtime.GOARCH, strings.Join(rescueCommands, ","))
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/u-root/u-root" || d.Path == "github.com/u-root/gobusybox/src" {
				fmt.Fprintln(h, d.Path, d.Version, d.Sum)
			}
		}
	}
	bin := filepath.Join(dir, hex.EncodeToString(h.Sum(nil))[:16], "bb")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	tmp := bin + ".tmp"
	if err := buildBB(tmp); err != nil {
		return "", err
	}
	return bin, os.Rename(tmp, bin)
}
