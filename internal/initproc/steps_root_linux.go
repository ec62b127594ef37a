package initproc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/isboot/isboot/internal/cmdline"
	"github.com/isboot/isboot/internal/rootfind"
	"golang.org/x/sys/unix"
)

// The steps from the LUN to the real init: find the root, mount it, switch to it.

func (b *boot) findRoot() error {
	dev := "/dev/" + b.device
	f, err := os.Open(dev) // the first open makes the kernel read the partition table
	if err != nil {
		return err
	}
	defer f.Close()
	// Probing reads a few sectors here and there; the device's read-ahead (1 MiB,
	// nbd.Attach) would turn each into a megabyte through the target.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	if b.cmd.Root.Kind == cmdline.RootPath {
		b.rootDev = b.cmd.Root.Value
		if err := waitDevice(f, b.rootDev); err != nil {
			return err
		}
		r, err := os.Open(b.rootDev)
		if err != nil {
			return err
		}
		b.rootFS = rootfind.ProbeFS(r)
		r.Close()
		b.log.Infof("root: %s (root=, %s)", b.rootDev, b.rootFS)
		return nil
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		return fmt.Errorf("%s: size: %w", dev, err)
	}
	disk, err := rootfind.Probe(f, size)
	if err != nil {
		return err
	}
	choice, err := disk.Find(b.cmd.Root)
	if err != nil {
		return err
	}
	b.rootDev, b.rootFS = dev, choice.FS
	if choice.Partition >= nbdMaxPart {
		return fmt.Errorf("root is partition %d of %s, but nbd is loaded with max_part=%d: give root= a partition below %d", choice.Partition, dev, nbdMaxPart, nbdMaxPart)
	}
	if choice.Partition > 0 {
		b.rootDev = fmt.Sprintf("%sp%d", dev, choice.Partition)
		if err := waitDevice(f, b.rootDev); err != nil {
			return err
		}
	}
	b.log.Infof("root: %s (%s)", b.rootDev, choice.Why)
	return nil
}

// waitDevice waits for a partition's node; if the kernel has not made it from the
// scan on open, it asks for a rescan of the whole device once.
func waitDevice(whole *os.File, p string) error {
	if err := waitPath(p, 3*time.Second); err == nil {
		return nil
	}
	_ = unix.IoctlSetInt(int(whole.Fd()), unix.BLKRRPART, 0)
	// Generous: the rescan reads through the target, which may be slow or busy.
	return waitPath(p, 30*time.Second)
}

func waitPath(p string, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		if _, err := os.Stat(p); err == nil {
			return nil
		} else if time.Now().After(end) {
			return fmt.Errorf("%s did not appear in %v", p, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *boot) mountRoot() error {
	fstype := b.cmd.RootFSType
	if fstype == "" {
		fstype = b.rootFS.MountType()
	}
	if fstype == "" {
		return fmt.Errorf("%s: no known filesystem (give rootfstype=)", b.rootDev)
	}
	if err := b.mods.Load(fstype, ""); err != nil {
		b.log.Debugf(1, "%v (built in?)", err)
	}
	m := rootMount(b.rootDev, fstype, b.cmd.RootFlags, b.cmd.ReadWrite)
	b.log.Infof("%s", m)
	return m.Do()
}

func (b *boot) switchRoot() error {
	init := b.cmd.Init
	if init == "" {
		init = "/sbin/init"
	}
	if err := checkInit(newRoot, init); err != nil {
		return err
	}
	if b.log.Verbosity() >= 2 {
		pids := []int{1, b.child.Cmd.Process.Pid}
		pids = append(pids, childPids(b.child.Cmd.Process.Pid)...)
		b.log.Debugf(2, "cpu: %s", cpuTimes(pids...))
	}
	b.log.Infof("switching to the real root, exec %s (%.2f s after /init)", init, time.Since(b.start).Seconds())
	// Nothing left to wait for: the daemon carries on alone. init gets what the
	// kernel passed to us: bare words ("single") and everything after "--" as
	// arguments, HOME, TERM and plain a=b words as its environment, never a secret.
	env, withheld := initEnv(os.Environ())
	if len(withheld) > 0 {
		b.log.Infof("init's environment leaves out %s (they may hold secrets)", strings.Join(withheld, ", "))
	}
	return switchRoot(newRoot, init, os.Args[1:], env)
}

// checkInit makes sure init exists in the new root before the initramfs (and with it
// the rescue shell) is deleted. Symlinks resolve inside the new root.
func checkInit(root, init string) error {
	p := init
	for range 16 {
		full := filepath.Join(root, p)
		st, err := os.Lstat(full)
		if err != nil {
			return fmt.Errorf("init %s: %w (give init=)", init, err)
		}
		if st.Mode()&os.ModeSymlink == 0 {
			if st.Mode()&0o111 == 0 || !st.Mode().IsRegular() {
				return fmt.Errorf("init %s: not an executable file", init)
			}
			return nil
		}
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("init %s: %w", init, err)
		}
		if filepath.IsAbs(target) {
			p = target
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return fmt.Errorf("init %s: too many symlinks", init)
}
