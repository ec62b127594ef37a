// Command mkinitramfs builds isboot's initramfs: isboot as /init, u-root's core
// commands for a rescue shell, and the kernel modules a boot from an iSCSI LUN needs
// (NIC drivers, nbd, root filesystems) with their modules.dep and modules.alias.
// The same inputs give the same bytes.
//
//	mkinitramfs -isboot build/isboot -o build/isboot-initramfs.cpio.gz
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
var defaultModules = []string{
	// NICs (the iBFT NIC's driver is found by its PCI modalias)
	"virtio_pci", "virtio_net", "e1000", "e1000e", "igb", "ixgbe", "i40e", "tg3", "bnxt_en", "r8169",
	// the LUN, and what ext4/jbd2 want from the crypto API
	"nbd", "crc32c_generic", "crc32c-intel",
	// root filesystems
	"ext4", "xfs", "btrfs", "vfat",
}

type options struct {
	isboot    string
	out       string
	kernelDir string // holds lib/modules/<kver>
	kver      string
	modules   []string
	rescue    string // "uroot", "busybox" or "none"
	bbCache   string
}

func main() {
	cache := os.Getenv("ISBOOT_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "isboot")
	}
	var o options
	var extra string
	flag.StringVar(&o.isboot, "isboot", "build/isboot", "the static isboot binary, installed as /init")
	flag.StringVar(&o.out, "o", "build/isboot-initramfs.cpio.gz", "output file")
	flag.StringVar(&o.kver, "kver", "", "kernel version (default: the contents of $ISBOOT_CACHE/kernel/current)")
	flag.StringVar(&o.kernelDir, "kernel-dir", "", "directory holding lib/modules/<kver> (default: $ISBOOT_CACHE/kernel/<kver>)")
	flag.StringVar(&extra, "modules", "", "comma-separated extra modules")
	flag.StringVar(&o.rescue, "rescue", "uroot", "rescue shell: uroot (u-root's gosh and core commands), busybox (the host's static busybox) or none")
	flag.Parse()
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

	a, err := build(&o)
	if err != nil {
		fatal(err)
	}
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
	fmt.Printf("%s: %d bytes (%.1f MiB), %d modules for %s, rescue shell: %s\n",
		o.out, st.Size(), float64(st.Size())/(1<<20), len(a.Modules(o.kver)), o.kver, o.rescue)
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

// build assembles the archive.
func build(o *options) (*initramfs.Archive, error) {
	a := initramfs.New()
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
		add(addRescue(a, o))
	}()
	return a, err
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
