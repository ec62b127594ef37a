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
// root, make it / and exec; the daemon deletes the initramfs afterwards (its memory
// is otherwise lost for good).
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
	if err := mount.MoveMount(root, "/"); err != nil {
		return fmt.Errorf("switch_root: move %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch_root: chroot: %w", err)
	}
	// The initramfs's files stay until the daemon deletes them, once this exec is
	// done (daemon.Config.EmptyInitramfs): nothing waits for that.
	// The boot benchmark times the boot up to this line.
	log.Printf("switch_root: executing init %q", args)
	argv := append([]string{init}, args...)
	if err := unix.Exec(init, argv, env); err != nil {
		return fmt.Errorf("switch_root: exec %s: %w", init, err)
	}
	return nil
}
