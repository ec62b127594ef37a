package debroot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Markers the hook prints on the console (/dev/ttyS0), for vm.WaitFor.
const (
	MarkerReady    = "ISBOOT-HOOK: ready"   // multi-user.target reached; followed by the system state
	MarkerFsck     = "ISBOOT-FSCK: "        // one line per line systemd-fsck-root logged this boot
	MarkerExit     = "ISBOOT-HOOK: exit="   // the test's script ended; its exit code follows
	MarkerNone     = "ISBOOT-HOOK: no hook" // no script was handed in
	HookFwCfg      = "opt/isboot/hook"      // fw_cfg name of the test's script (sh)
	HookDiskSerial = "isboot-hook"          // virtio disk (a tar) holding the hook's files
	HookDir        = "/run/isboot-hook"     // where the guest puts the hook and its files
	DataDir        = "/var/lib/isboot-test" // on the root filesystem, for test data
	hookScript     = "/usr/local/sbin/isboot-test-hook"
	hookUnit       = "isboot-test-hook.service"
	unitDir        = "/etc/systemd/system"
	hookFwCfgFS    = "/sys/firmware/qemu_fw_cfg/by_name"
)

// HookArgs are the QEMU arguments that hand the hook a script and files
// (name under HookDir -> host path). The script goes over fw_cfg; the files,
// which may be megabytes, go in a tar on a read-only virtio disk, because
// fw_cfg without DMA moves a byte per port read and takes minutes under TCG.
// The tar is written into dir.
func HookArgs(dir, script string, files map[string]string) ([]string, error) {
	args := []string{"-fw_cfg", "name=" + HookFwCfg + ",file=" + qemuEscape(script)}
	if len(files) == 0 {
		return args, nil
	}
	tarPath := filepath.Join(dir, "hook-files.tar")
	if err := writeTar(tarPath, files); err != nil {
		return nil, err
	}
	return append(args,
		"-drive", "if=none,id=hookfiles,format=raw,readonly=on,file="+qemuEscape(tarPath),
		"-device", "virtio-blk-pci,drive=hookfiles,serial="+HookDiskSerial), nil
}

func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// writeTar packs files (sorted by name) into a tar, which is a whole number
// of 512-byte blocks: a disk image as it is.
func writeTar(path string, files map[string]string) error {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("debroot: hook files: %w", err)
	}
	tw := tar.NewWriter(f)
	for _, n := range names {
		b, err := os.ReadFile(files[n])
		if err != nil {
			f.Close()
			return fmt.Errorf("debroot: hook files: %w", err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			f.Close()
			return fmt.Errorf("debroot: hook files: %w", err)
		}
		if _, err := tw.Write(b); err != nil {
			f.Close()
			return fmt.Errorf("debroot: hook files: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return fmt.Errorf("debroot: hook files: %w", err)
	}
	return f.Close()
}

type overlayFile struct {
	path string // in the root
	mode os.FileMode
	data string // for a symlink (mode&os.ModeSymlink): the target
}

// modules are copied (with their dependencies) from the host's kernel cache:
// fw_cfg for the hook, and what the initramfs loaded, so udev finds it again.
var modules = []string{"qemu_fw_cfg", "virtio_pci", "virtio_blk", "virtio_net", "e1000", "nbd", "ext4", "crc32c_generic"}

// pruned directories only make the image (and each test's copy) bigger.
var pruned = []string{"/var/cache/apt", "/var/lib/apt/lists", "/usr/share/doc", "/usr/share/locale", "/usr/share/man", "/usr/share/info"}

// masked units would only cost boot time under TCG or print on the console.
var masked = []string{
	"getty@tty1.service", "serial-getty@ttyS0.service", "apt-daily.timer",
	"apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
	"fstrim.timer", "dpkg-db-backup.timer", "systemd-timesyncd.service", "getty-static.service",
}

func overlayFiles() []overlayFile {
	fstab := fmt.Sprintf("# The root is on the iSCSI LUN isboot serves over NBD.\nUUID=%s / ext4 defaults,errors=remount-ro 0 1\n", FSUUID)
	files := []overlayFile{
		{"/etc/hostname", 0o644, "isbguest\n"},
		{"/etc/hosts", 0o644, "127.0.0.1 localhost\n127.0.1.1 isbguest\n"},
		{"/etc/fstab", 0o644, fstab},
		// The NIC isboot configured must keep its name: an up link cannot be
		// renamed, and udev would try.
		{"/etc/systemd/network/99-default.link", os.ModeSymlink, "/dev/null"},
		{"/etc/systemd/journald.conf.d/isboot-test.conf", 0o644, "[Journal]\nStorage=volatile\nForwardToConsole=no\n"},
		{hookScript, 0o755, hookSh},
		{unitDir + "/" + hookUnit, 0o644, hookUnitText},
		{unitDir + "/multi-user.target.wants/" + hookUnit, os.ModeSymlink, unitDir + "/" + hookUnit},
		{DataDir, os.ModeDir | 0o755, ""},
	}
	for _, u := range masked {
		files = append(files, overlayFile{unitDir + "/" + u, os.ModeSymlink, "/dev/null"})
	}
	return files
}

const hookUnitText = `[Unit]
Description=isboot VM test hook
After=multi-user.target

[Service]
Type=simple
ExecStart=` + hookScript + `
StandardInput=null

[Install]
WantedBy=multi-user.target
`

// hookSh tells the host the system is up, shows this boot's root fsck, and
// runs the script the test handed in over fw_cfg.
const hookSh = `#!/bin/sh
exec >/dev/ttyS0 2>&1
echo "` + MarkerReady + ` $(systemctl is-system-running 2>/dev/null) $(uname -r)"
journalctl -b -o cat --no-pager -u systemd-fsck-root.service 2>/dev/null | sed 's/^/` + MarkerFsck + `/'
modprobe qemu_fw_cfg
fw=` + hookFwCfgFS + `
mkdir -p ` + HookDir + `
[ -e $fw/` + HookFwCfg + `/raw ] && cat $fw/` + HookFwCfg + `/raw > ` + HookDir + `/hook
# udev loads virtio_pci and virtio_blk at coldplug; the disk may still be coming.
for i in $(seq 50); do
	ls /sys/block/vd* >/dev/null 2>&1 && break
	grep -qs 0x1af4 /sys/bus/pci/devices/*/vendor || break
	sleep 0.2
done
for s in /sys/block/vd*/serial; do
	[ "$(cat $s 2>/dev/null)" = ` + HookDiskSerial + ` ] && tar -xf /dev/$(basename $(dirname $s)) -C ` + HookDir + `
done
if [ -f ` + HookDir + `/hook ]; then
	cd ` + HookDir + `
	sh ./hook
	echo "` + MarkerExit + `$?"
else
	echo "` + MarkerNone + ` ($(ls $fw/opt 2>&1 | tr '\n' ' '))"
fi
`

// configure writes the test configuration and the kernel modules into the
// tree (idempotent: every file is rewritten).
func configure(ctx context.Context, opts Options, tree string) error {
	for _, d := range pruned {
		p := filepath.Join(tree, d)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("debroot: prune: %w", err)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("debroot: prune: %w", err)
		}
	}
	for _, f := range overlayFiles() {
		p := filepath.Join(tree, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("debroot: %w", err)
		}
		switch {
		case f.mode&os.ModeDir != 0:
			if err := os.MkdirAll(p, f.mode.Perm()); err != nil {
				return fmt.Errorf("debroot: %w", err)
			}
		case f.mode&os.ModeSymlink != 0:
			os.Remove(p)
			if err := os.Symlink(f.data, p); err != nil {
				return fmt.Errorf("debroot: %w", err)
			}
		default:
			os.Remove(p)
			if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
				return fmt.Errorf("debroot: %w", err)
			}
		}
	}
	return installModules(ctx, opts, tree)
}

// installModules copies the listed modules and their dependencies from the
// kernel cache into the tree and runs depmod there.
func installModules(ctx context.Context, opts Options, tree string) error {
	src := filepath.Join(opts.KernelRoot, "lib", "modules", opts.KernelVer)
	dst := filepath.Join(tree, "usr", "lib", "modules", opts.KernelVer)
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	var kos []string
	for _, m := range modules {
		out, err := exec.CommandContext(ctx, "modprobe", "--show-depends", "-d", opts.KernelRoot,
			"-S", opts.KernelVer, m).Output()
		if err != nil {
			return fmt.Errorf("debroot: modprobe --show-depends %s: %v", m, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "insmod" {
				kos = append(kos, f[1])
			}
		}
	}
	for _, ko := range kos {
		rel, err := filepath.Rel(src, ko)
		if err != nil || strings.HasPrefix(rel, "..") {
			return fmt.Errorf("debroot: module %s outside %s", ko, src)
		}
		if err := copyPlain(ko, filepath.Join(dst, rel)); err != nil {
			return err
		}
	}
	for _, meta := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if err := copyPlain(filepath.Join(src, meta), filepath.Join(dst, meta)); err != nil {
			return err
		}
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", tree, opts.KernelVer).CombinedOutput(); err != nil {
		return fmt.Errorf("debroot: depmod: %v: %s", err, out)
	}
	return nil
}

func copyPlain(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return fmt.Errorf("debroot: %w", err)
	}
	return nil
}
