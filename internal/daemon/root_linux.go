package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where PID 1 has the daemon build its root: in the initramfs, outside
// /dev, /proc, /sys and /run (which switch_root moves into the real root). A mount
// point there survives switch_root's deletion of the initramfs (which stays on its
// own filesystem), and is invisible from the real root: systemd never sees it, so
// never unmounts it.
const DefaultRoot = "/.isboot-root"

// rootExe is the daemon's executable inside its root: a link to /proc/self/exe,
// which execve resolves in the process that execs (the running executable, even
// after switch_root deleted the file), through a path ending in Name so that the
// new process is named isboot without exec'ing itself again.
const rootExe = "/" + Name

// enterRoot builds the daemon's root at dir and chroots the process into it: a small
// tmpfs holding proc (a mount of its own), sys and dev (bind mounts), the status
// directory (a bind mount, so the real root's /run shows the file) and rootExe.
// Everything the daemon opens by path is then in RAM, never on the root filesystem
// it serves, before and after switch_root alike; its threads and the serving
// processes it starts share the root. On failure nothing is left mounted.
func enterRoot(dir, statusDir string) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("isboot", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Unmount(dir, unix.MNT_DETACH) // and everything below it
		}
	}()
	// Nothing mounted here propagates anywhere, even under a shared "/" (systemd).
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	type mount struct {
		src, target, fstype string
		flags               uintptr
	}
	mounts := []mount{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"/sys", "/sys", "", unix.MS_BIND},
		{"/dev", "/dev", "", unix.MS_BIND},
	}
	if statusDir != "" {
		if !filepath.IsAbs(statusDir) {
			return fmt.Errorf("status directory %q is not absolute", statusDir)
		}
		if err := os.MkdirAll(statusDir, 0o755); err != nil {
			return err
		}
		mounts = append(mounts, mount{statusDir, statusDir, "", unix.MS_BIND})
	}
	for _, m := range mounts {
		target := filepath.Join(dir, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, target, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.src, target, err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o1777); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.Symlink("/proc/self/exe", filepath.Join(dir, rootExe)); err != nil {
		return err
	}
	return joinRoot(dir)
}

// joinRoot chroots into a root enterRoot built (for a process started before it was).
func joinRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot %s: %w", dir, err)
	}
	return unix.Chdir("/")
}
