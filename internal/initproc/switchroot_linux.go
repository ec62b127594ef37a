package initproc

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/u-root/u-root/pkg/mount"
	"golang.org/x/sys/unix"
)

// switchRoot is u-root's mount.SwitchRoot with one difference: init gets the
// arguments and the environment the kernel gave us (bare words such as "single" and
// everything after "--"; HOME, TERM and the plain a=b words, see initEnv), as
// initramfs-tools' run-init and dracut pass them on. u-root execs init with argv
// [init] alone and no environment, and its steps are not exported, so they are
// spelled out here with its exported pieces: move /dev /proc /sys /run into the new
// root, make it / and delete the initramfs (its memory is otherwise lost for good),
// then exec.
func switchRoot(root, init string, args, env []string) error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		if same, err := mount.SameFilesystem("/", m); err != nil || same {
			continue // missing, or not a mount of its own
		}
		target := filepath.Join(root, m)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("switch_root: %w", err)
		}
		if err := mount.MoveMount(m, target); err != nil {
			return fmt.Errorf("switch_root: move %s to %s: %w", m, target, err)
		}
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("switch_root: chdir %s: %w", root, err)
	}
	old, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("switch_root: open the old root: %w", err)
	}
	if err := mount.MoveMount(root, "/"); err != nil {
		unix.Close(old)
		return fmt.Errorf("switch_root: move %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		unix.Close(old)
		return fmt.Errorf("switch_root: chroot: %w", err)
	}
	deleteTree(old) // best effort: what stays only costs memory
	unix.Close(old)
	// The boot benchmark times the boot up to this line.
	log.Printf("switch_root: executing init %q", args)
	argv := append([]string{init}, args...)
	if err := unix.Exec(init, argv, env); err != nil {
		return fmt.Errorf("switch_root: exec %s: %w", init, err)
	}
	return nil
}

// deleteTree empties the directory dir, staying on its filesystem: the real root,
// now mounted over it, and anything else mounted below is left alone.
func deleteTree(dir int) {
	var st unix.Stat_t
	if unix.Fstat(dir, &st) != nil {
		return
	}
	// Read through a duplicate: an *os.File closes its descriptor, and dir is the caller's.
	dup, err := unix.Dup(dir)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(dup), "old root")
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, name := range names {
		sub, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil { // a file or a symlink
			unix.Unlinkat(dir, name, 0)
			continue
		}
		var sst unix.Stat_t
		if unix.Fstat(sub, &sst) == nil && sst.Dev == st.Dev {
			deleteTree(sub)
			unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
		}
		unix.Close(sub)
	}
}
