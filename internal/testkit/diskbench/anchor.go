// Package diskbench holds the kernel-initiator anchor that isboot's in-VM disk
// benchmark (BenchmarkDiskInVM) is measured against, and the content-keyed caches
// both guests boot from:
//
//   - AnchorInitrd: busybox, open-iscsi's iscsistart and the Debian kernel's
//     iscsi_tcp, booting the way Debian's initramfs-tools does with an iBFT
//     (iscsistart -N, iscsistart -b), then switch_root to the LUN's root;
//   - DebTree: a Debian package unpacked (never installed) under the cache;
//   - RootImage: a rootimg disk, built once per content.
//
// Everything lives under vm.CacheDir() (~/.cache/isboot), named by a SHA-256 of what
// it was made from, so a changed input makes a new entry and never a stale hit.
package diskbench

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/isboot/isboot/initramfs"
	"github.com/isboot/isboot/internal/testkit/rootimg"
	"github.com/isboot/isboot/internal/testkit/vm"
)

// anchorInit is the anchor's /init: the steps of open-iscsi's initramfs-tools script
// (scripts/local-top/iscsi with ISCSI_AUTO) without udev, which a single known disk
// does not need. It logs to /dev/kmsg so the kernel log tells the story with
// timestamps, as isboot's does. root=/dev/... on the command line picks the root.
const anchorInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "anchor: $*" > /dev/kmsg; }
fail() { log "ERROR $*"; echo "ANCHOR-ERROR $*"; poweroff -f; }
log "/init started"
modprobe -a virtio_pci virtio_net crc32c_generic ext4 sd_mod iscsi_tcp iscsi_ibft || fail modprobe
iscsistart -N || fail "iscsistart -N"
iscsistart -b || fail "iscsistart -b"
root=/dev/sda1
for w in $(cat /proc/cmdline); do case $w in root=/dev/*) root=${w#root=};; esac; done
i=0
while [ ! -b $root ]; do
	i=$((i+1)); [ $i -gt 300 ] && fail "no $root after 30 s"
	sleep 0.1
done
mkdir -p /newroot
mount -o ro $root /newroot || fail "mount $root"
log "switch_root to $root"
for m in /dev /proc /sys; do mount --move $m /newroot$m || fail "move $m"; done
exec switch_root /newroot /sbin/init
`

// anchorModules are what anchorInit loads; iscsi_ibft publishes the table in sysfs for
// iscsistart. Dependencies (libiscsi, scsi_transport_iscsi, ...) come along.
var anchorModules = []string{"virtio_pci", "virtio_net", "crc32c_generic", "ext4", "sd_mod", "iscsi_tcp", "iscsi_ibft"}

var applets = []string{"sh", "mount", "mkdir", "modprobe", "sleep", "cat", "switch_root", "poweroff"}

// AnchorInitrd returns the anchor initramfs for kernel k, built once per content.
// Its /init expects the iBFT (-acpitable) to name the NIC and the target.
func AnchorInitrd(k vm.Kernel) (string, error) {
	oi, err := DebTree("open-iscsi")
	if err != nil {
		return "", err
	}
	usr, err := DebTree("libopeniscsiusr") // iscsistart links libopeniscsiusr.so
	if err != nil {
		return "", err
	}
	iscsistart := filepath.Join(oi, "sbin", "iscsistart")
	libs, err := sharedLibs(iscsistart, filepath.Join(usr, "usr", "lib", "x86_64-linux-gnu"))
	if err != nil {
		return "", err
	}
	a := initramfs.New()
	for _, err := range []error{
		// The kernel opens /dev/console as init's stdio before devtmpfs is mounted.
		a.AddCharDev("dev/console", 0o600, 5, 1),
		a.AddDir("proc", 0o555),
		a.AddDir("sys", 0o555),
		a.AddBytes("init", []byte(anchorInit), 0o755),
		a.AddFile("bin/busybox", "/bin/busybox", 0o755),
		a.AddFile("sbin/iscsistart", iscsistart, 0o755),
		// iscsistart keeps its node records under /etc/iscsi and refuses to start without it.
		a.AddDir("etc/iscsi", 0o755),
		a.AddDir("run", 0o755),
		a.AddModules(k.Root, k.Version, anchorModules...),
	} {
		if err != nil {
			return "", fmt.Errorf("diskbench: anchor initramfs: %w", err)
		}
	}
	for _, ap := range applets {
		if err := a.AddSymlink("bin/"+ap, "busybox"); err != nil {
			return "", err
		}
	}
	for dst, src := range libs {
		if err := a.AddFile(dst, src, 0o755); err != nil {
			return "", err
		}
	}
	// The key is the uncompressed archive: the archive is reproducible, and gzip at
	// best compression is the slow part.
	h := sha256.New()
	if err := a.WriteCPIO(h); err != nil {
		return "", err
	}
	out := filepath.Join(vm.CacheDir(), "anchor-initrd", hex.EncodeToString(h.Sum(nil))[:32]+".cpio.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	return out, a.WriteFile(out) // renames into place: a concurrent reader sees all or nothing
}

// lddLine is "libx.so.1 => /path/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLine = regexp.MustCompile(`^\s*(\S+)(?: => (\S+))? \(0x[0-9a-f]+\)$`)

// sharedLibs maps archive paths to host files for everything ldd says bin loads,
// extra being a directory searched first (an unpacked package's libraries). Libraries
// go to lib/x86_64-linux-gnu under the name the binary asks for, which the loader
// searches by default; the loader goes where the binary's interpreter path says.
func sharedLibs(bin, extra string) (map[string]string, error) {
	cmd := exec.Command("ldd", bin)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+extra)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("diskbench: ldd %s: %v", bin, err)
	}
	libs := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := lddLine.FindStringSubmatch(sc.Text())
		switch {
		case m == nil || strings.HasPrefix(m[1], "linux-vdso"):
		case m[2] == "" && path.IsAbs(m[1]):
			libs[strings.TrimPrefix(m[1], "/")] = m[1]
		case m[2] != "":
			libs["lib/x86_64-linux-gnu/"+m[1]] = m[2]
		}
	}
	if bytes.Contains(out, []byte("not found")) || len(libs) == 0 {
		return nil, fmt.Errorf("diskbench: ldd %s: unresolved libraries:\n%s", bin, out)
	}
	return libs, nil
}

// DebTree returns a directory holding Debian package pkg (apt's candidate version)
// unpacked with dpkg-deb -x, named by the .deb's SHA-256 from apt's index so that a
// cached tree needs no download. It needs apt's lists (make deps runs apt-get update).
func DebTree(pkg string) (string, error) {
	out, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("diskbench: apt-cache show %s: %v", pkg, err)
	}
	m := regexp.MustCompile(`(?m)^SHA256: ([0-9a-f]{64})$`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("diskbench: apt-cache show %s: no SHA256 (apt-get update?)", pkg)
	}
	sum := string(m[1])
	dir := filepath.Join(vm.CacheDir(), "deb", pkg+"-"+sum[:32])
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-"+pkg+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o755) // apt-get download drops to the _apt user when it can write here
	dl := exec.Command("apt-get", "download", "-qq", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("diskbench: apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("diskbench: apt-get download %s: got %v", pkg, debs)
	}
	if got, err := fileSHA256(debs[0]); err != nil || got != sum {
		return "", fmt.Errorf("diskbench: %s: sha256 %s, apt says %s (%v)", debs[0], got, sum, err)
	}
	tree := filepath.Join(tmp, "tree")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], tree).CombinedOutput(); err != nil {
		return "", fmt.Errorf("diskbench: dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	if err := os.Rename(tree, dir); err != nil && !os.IsExist(err) {
		if _, e := os.Stat(dir); e != nil { // else another process got there first
			return "", err
		}
	}
	return dir, nil
}

// RootImage returns a rootimg disk made with o, built once per content: the options,
// the init script, busybox and every extra file. Callers copy it before use.
func RootImage(o rootimg.Options) (string, error) {
	bb := o.Busybox
	if bb == "" {
		bb = "/bin/busybox"
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s\x00%s\x00%s\x00%s\x00%t\x00%s\x00", o.Size, o.Label, o.UUID, o.PartUUID, o.PartLabel, o.ESP, o.Init)
	dsts := []string{""}
	for dst := range o.Files {
		dsts = append(dsts, dst)
	}
	sort.Strings(dsts)
	for _, dst := range dsts {
		src := bb
		if dst != "" {
			src = o.Files[dst]
		}
		sum, err := fileSHA256(src)
		if err != nil {
			return "", fmt.Errorf("diskbench: root image: %w", err)
		}
		fmt.Fprintf(h, "%s\x00%s\x00", dst, sum)
	}
	out := filepath.Join(vm.CacheDir(), "rootimg", hex.EncodeToString(h.Sum(nil))[:32]+".img")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.tmp%d", out, os.Getpid())
	defer os.Remove(tmp)
	if err := rootimg.Make(tmp, o); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

func fileSHA256(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
